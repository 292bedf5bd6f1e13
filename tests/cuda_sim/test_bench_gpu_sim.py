"""bench/gpu.py end to end in the simulator (NumPy standing in for CuPy, cuda_sim.sim) on a toy model,
so that the GPU session's one call does not find a broken benchmark; and its byte count against the
issue's."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cuda_sim import sim
from gptoss_np import synthetic
from gptoss_np.config import GptOssConfig
from gptoss_np.kernels import bf16_cuda, mxfp4_cuda

@pytest.fixture
def bench(monkeypatch, bench_script):
    sim.cupy_on_the_simulator(monkeypatch)
    module = bench_script("gpu")
    monkeypatch.setattr(module, "COPY_BYTES", 1 << 20)
    monkeypatch.setattr(module, "PROFILE_STEPS", 1)
    monkeypatch.setattr(module, "DECODE_RUNS", 1)
    monkeypatch.setattr(module, "PREFILL_RUNS", 1)
    monkeypatch.setattr(module, "KERNEL_LAUNCHES", 1)
    monkeypatch.setattr(module, "select", lambda device: importlib.import_module("gptoss_np.backend_cuda").CudaOps())
    # the GEMVs in fewer, larger blocks (the simulator runs blocks one by one; tests/cuda_sim's kernel
    # tests cover these launch shapes): bf16 4 rows a warp, MXFP4 8 rows a block
    monkeypatch.setattr(bf16_cuda, "WARP_ROWS_FROM_N", 1)
    monkeypatch.setattr(mxfp4_cuda, "GEMV_WARPS", 4)
    return module


def test_decode_bytes_of_20b_are_the_issues_floor(bench):
    need = bench.decode_bytes(GptOssConfig.from_dict(synthetic.config_dict("gpt-oss-20b")), context=1)
    assert need["experts"] / 1e9 == pytest.approx(1.27, abs=0.01)
    assert (need["attention"] + need["router"]) / 1e9 == pytest.approx(1.28, abs=0.01)
    assert need["lm_head"] / 1e9 == pytest.approx(1.16, abs=0.01)
    assert need["total"] / 1e9 == pytest.approx(3.71, abs=0.01)


def test_benchmark_runs_and_writes_its_json(bench, tmp_path, monkeypatch, capsys):
    def no_baseline(*args):
        raise RuntimeError("no transformers here")

    monkeypatch.setattr(bench, "transformers_decode", no_baseline)  # a part that fails: recorded, the run goes on
    # sized for the simulator, which takes seconds a call: one cheap case each
    variants = {"bf16_unroll1": ("bf16_cuda", "_gemv_kernel", {"UNROLL": 1}, "bf16_router"),
                "mxfp4_warps1": ("mxfp4_cuda", "_gemv_kernel", {"GEMV_WARPS": 1}, "mxfp4_down")}
    monkeypatch.setattr(bench, "KERNEL_VARIANTS", variants)
    toy = ["num_hidden_layers=1", "vocab_size=16", "hidden_size=32", "intermediate_size=32", "head_dim=8", "num_attention_heads=2",
           "num_key_value_heads=1", "num_local_experts=4", "num_experts_per_tok=2", "sliding_window=4"]
    out = tmp_path / "gpu.json"
    argv = ["--json", str(out), "--preset", "tiny", "--contexts", "9", "--prompts", "3,6", "--decode", "1", "--profile", "--variants",
            "--prefill-budget", "0", "--transformers", "--tests", str(junit_xml(tmp_path))]
    monkeypatch.setenv("GPTOSS_COMMIT", "f00d")
    readings = iter(range(1, 100))  # the driver's count of memory in use, growing with each reading
    monkeypatch.setattr(bench, "gpu_used_gb", lambda: float(next(readings)))
    profiled, profile_ops = [], bench.profile_ops
    monkeypatch.setattr(bench, "profile_ops", lambda *args: profiled.append(args) or profile_ops(*args))
    # every path of the 3-token prefill runs; of the 6-token one, predicted over budget, only the backend's
    report = bench.main(argv + [arg for kv in toy for arg in ("--set", kv)])
    saved = json.loads(out.read_text())
    assert saved["device"] == "Numba CUDA simulator" and saved["layers"] == 1 and "skipped" in saved["launch"]
    assert saved["commit"] == "f00d"
    assert set(saved["decode"]) == {"9"} and saved["prefill"]["3"]["tok_s"] > 0
    paths = ("tiled", "blas", "blas_bf16x3", "blas_tf32x2")
    assert all(saved["prefill"]["3"][path + "_tok_s"] > 0 for path in paths)
    six = saved["prefill"]["6"]
    assert six["experts_by"] == "tiled" and six["tok_s"] == six["tiled_tok_s"] > 0
    assert len(six["tok_s_runs"]) == bench.PREFILL_RUNS
    assert all("over --prefill-budget" in six[path]["skipped"] for path in paths if path != "tiled")
    assert saved["gpu_used_gb"] == {"weights_loaded": 1, "decoded": 2}
    assert (saved["prefill"]["3"]["gpu_used_gb"], six["gpu_used_gb"]) == (3, 4) and saved["peak_gpu_gb"] == 4
    assert all(r["tok_s"] > 0 and r["eager_tok_s"] > 0 and r["bytes_per_token"]["total"] > 0 and "pct_of_floor" in r
               and len(r["tok_s_runs"]) == bench.DECODE_RUNS for r in saved["decode"].values())
    assert saved["decode"]["9"]["graph_replayed"] is False  # the simulator cannot capture
    assert saved["decode"]["9"]["sampled_tok_s"] > 0 and saved["decode"]["9"]["sampled_top_p_tok_s"] > 0
    assert {"mxfp4_gate_up", "mxfp4_down", "bf16_qkv", "bf16_lm_head"} < set(saved["kernels"])
    # no graphs in the simulator: the kernels are timed op by op
    assert all(r["us"] > 0 and "gb_s" in r and r["timed"] == "op by op" for r in saved["kernels"].values())
    assert set(saved["kernel_variants"]) == set(variants)
    variants = saved["kernel_variants"]
    assert all("error" not in v for v in variants.values())
    assert set(variants["bf16_unroll1"]) == {"constants", "bf16_router"} and variants["bf16_unroll1"]["bf16_router"]["us"] > 0
    assert set(variants["mxfp4_warps1"]) == {"constants", "mxfp4_down"}
    from gptoss_np.kernels import bf16_cuda
    assert bf16_cuda.UNROLL == 2 and bf16_cuda._gemv_kernel.py_func.__name__ == "_gemv_kernel"  # put back
    profile = report["profile"]
    # profiled once, on the eager path (the sampled paths' caches have no room for more steps), and a prefill
    assert len(profiled) == 2 and "error" not in profile and profile["step"].startswith("eager")
    assert profile["calls"]["mxfp4_experts"] == 2  # gate_up and down
    assert profile["calls"]["linear"] == 3 + 1  # qkv, o, router; lm_head
    assert profile["calls"]["rope"] == 1  # q and k together
    assert set(profile["ops_ms"]) >= {"attention", "mxfp4_experts", "sample"}
    assert all(0 < profile["host_ms"][op] <= profile["ops_ms"][op] for op in profile["ops_ms"])
    prefill = saved["prefill_profile"]
    assert prefill["tokens"] == 6 and prefill["calls"]["linear"] == 3 + 1 and "sample" not in prefill["calls"]
    assert saved["transformers"] == {"error": "RuntimeError: no transformers here"}
    table = capsys.readouterr().out
    assert "transformers failed: RuntimeError: no transformers here" in table
    assert saved["gpu_tests"] == {"passed": 1, "failed": 1, "skipped": 1, "cut_off": 0,
                                  "rel_errors": {"test_close:rel_err_hf": 2.5e-06}, "pytest_exit": None}
    assert "gpu tests: 1 passed, 1 failed, 1 skipped" in table and "rel_err_hf" in table
    sim.assert_launched_as_checked(own_module="bench_gpu")  # the kernels it times are the ones the engine runs
    bench.print_table({**report, "gpu_tests": {"error": "ParseError: no element found"}})  # an unreadable XML
    assert "gpu tests: their JUnit XML could not be read: ParseError" in capsys.readouterr().out


def junit_xml(folder: Path) -> Path:
    """The JUnit XML that pytest writes (as gpu_check.sh has it do for the gpu tests) of a passed test
    that records a relative error, a skipped one and a failed one."""
    (folder / "test_three.py").write_text(
        "import pytest\n\n"
        "def test_close(record_property):\n    record_property('rel_err_hf', 2.5e-6)\n\n"
        "def test_skipped():\n    pytest.skip('no GPU')\n\n"
        "def test_failed():\n    assert False\n")
    xml = folder / "tests.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore",
                    str(folder / "test_three.py"), f"--junitxml={xml}"], cwd=folder, capture_output=True, check=False)
    return xml


def test_gpu_tests_cut_off_by_the_time_limit_are_reported(bench, tmp_path, capsys):
    """gpu_check.sh stops the gpu tests at its limit with SIGINT: pytest still writes the XML, holding the
    tests that finished and a nameless testcase for the one it stopped, which must not count as passed."""
    (tmp_path / "test_slow.py").write_text("import time\n\ndef test_quick():\n    pass\n\n"
                                           "def test_slow():\n    time.sleep(60)\n")
    xml = tmp_path / "tests.xml"
    done = subprocess.run(["timeout", "-s", "INT", "-k", "20", "6", sys.executable, "-m", "pytest", "-q", "-p",
                           "no:cacheprovider", "test_slow.py", f"--junitxml={xml}"], cwd=tmp_path, capture_output=True)
    assert done.returncode == 124
    results = bench.test_results(str(xml), done.returncode)
    assert (results["passed"], results["failed"], results["cut_off"], results["pytest_exit"]) == (1, 0, 1, 124)
    bench.print_gpu_tests(results)
    assert "gpu tests: 1 passed, 0 failed, 0 skipped, cut off by the time limit (1 test stopped)" in capsys.readouterr().out


def test_transformers_baseline_runs(bench):
    """The baseline of the issue's "decode at least 10x transformers", on the CPU here (the device
    call runs it on the GPU: only where the model is made differs)."""
    pytest.importorskip("transformers")  # and torch: the [test] extra's, as every comparison with transformers
    config = synthetic.config_dict("tiny", num_hidden_layers=2)
    result = bench.transformers_decode(config, np.arange(5), 2, device="cpu")
    assert result["decode_tok_s"] > 0 and result["version"]


def test_filled_cache_holds_what_a_prefill_would(bench):
    from gptoss_np import GptOss
    config = GptOssConfig.from_dict(synthetic.config_dict("tiny", num_hidden_layers=2, sliding_window=4))
    model = GptOss(bench.DeviceCheckpoint(config), bench.select("cuda"), progress=False)
    cache = bench.filled_cache(model, context=10, room=3)
    assert cache.length == 10
    full, sliding = (model.ops.to_numpy(cache.positions[config.layer_types.index(kind)])
                     for kind in ("full_attention", "sliding_attention"))
    np.testing.assert_array_equal(full[:10], np.arange(10))
    assert (full[10:] == -1).all()
    np.testing.assert_array_equal(np.sort(sliding), [6, 7, 8, 9])
    np.testing.assert_array_equal(sliding % 4, np.arange(4))  # position p in slot p % W


def test_targets_of_the_issues(bench):
    report = json.loads(json.dumps({  # as read back from the JSON: string keys
        "preset": "gpt-oss-20b", "weights_gb": 13.8,
        "decode": {128: {"tok_s": 450.0}, 1024: {"tok_s": 390.0}, 32768: {"tok_s": 100.0}},
        "prefill": {128: {"tok_s": 5000.0}, 2048: {"tok_s": 21000.0}},
        "transformers": {"error": "RuntimeError: out of memory"}}))
    t = bench.targets(report)
    assert t["decode_tok_s_up_to_1k"] == {"target": 400, "kind": "min", "measured": 390.0, "met": False}
    assert t["prefill_tok_s_at_2k"]["met"] is True and t["weights_gb"]["met"] is True
    assert t["decode_vs_transformers"]["measured"] is None and t["decode_vs_transformers"]["met"] is None
    assert set(bench.targets({**report, "preset": "gpt-oss-120b"})) == {"decode_tok_s_up_to_1k"}
    assert bench.targets({**report, "preset": "tiny"}) == {}


def test_kernel_variants_keep_the_bf16_words_array_large_enough(bench):
    """A variant's UNROLL must come with the words array it needs (_WORDS = WARP_ROWS * UNROLL, set at
    import): a smaller one would be written past on the GPU, where nothing checks the index."""
    from gptoss_np.kernels import bf16_cuda
    for name, (module, _, constants, _) in bench.KERNEL_VARIANTS.items():
        if module == "bf16_cuda":
            unroll = constants.get("UNROLL", bf16_cuda.UNROLL)
            assert constants.get("_WORDS", bf16_cuda._WORDS) >= bf16_cuda.WARP_ROWS * unroll, name


def test_kernel_cases_take_the_next_layers_weights_each_call(bench, monkeypatch):
    """Calls replayed back to back read other layers' weights (and other experts), as a decode step
    does, so that a case's GB/s is of weights streamed from memory, not left in the L2 cache by the
    call before."""
    from gptoss_np import GptOss
    config = GptOssConfig.from_dict(synthetic.config_dict("tiny", num_hidden_layers=2, num_local_experts=4,
                                                          num_experts_per_tok=2))
    model = GptOss(bench.DeviceCheckpoint(config), bench.select("cuda"), progress=False)
    read = []  # (the weights, the experts) of each call, which need not run for that

    def recorded_linear(x, w, *args, **kwargs):
        read.append((id(w), None))

    def recorded_experts(x, rows_per_x, blocks, scales, bias, plan, **kwargs):
        read.append((id(blocks), model.ops.to_numpy(plan.experts).tolist()))

    monkeypatch.setattr(model.ops, "linear", recorded_linear)
    monkeypatch.setattr(model.ops, "mxfp4_experts", recorded_experts)
    cases = bench.kernel_cases(model, context=4)
    for name, weights in (("bf16_qkv", "attn.qkv"), ("mxfp4_gate_up", "moe.gate_up_blocks"),
                          ("mxfp4_down", "moe.down_blocks")):
        read.clear()
        call, _ = cases[name]
        call(), call(), call()
        group, attribute = weights.split(".")
        layers = [id(getattr(getattr(layer, group), attribute)) for layer in model.layers]
        assert [w for w, _ in read] == [layers[0], layers[1], layers[0]], name
        if name.startswith("mxfp4"):
            assert read[0][1] != read[1][1], name  # and other experts


def test_commit_without_git(bench_script, monkeypatch):
    """The device machine's copy of the tree has no .git, and its image may have no git at all."""
    provenance = bench_script("provenance")
    monkeypatch.setenv("GPTOSS_COMMIT", "abc1234")
    assert provenance.commit() == "abc1234"
    monkeypatch.delenv("GPTOSS_COMMIT")

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(provenance.subprocess, "run", no_git)
    assert provenance.commit() == "unknown"


def test_cpu_name(bench_script, tmp_path):
    """A VM's model name may not tell Zen 4 from Zen 5: the family and model numbers do. Only the first
    processor's block is read; a CPU without those fields (AArch64) keeps what it has."""
    provenance = bench_script("provenance")
    cpuinfo = tmp_path / "cpuinfo"
    amd = "processor\t: {}\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: {}\nmodel name\t: AMD EPYC\n"
    cpuinfo.write_text(amd.format(0, 17) + "\n" + amd.format(1, 99))
    assert provenance.cpu_name(cpuinfo) == "AMD EPYC (family 25, model 17)"
    cpuinfo.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\n")
    plain = provenance.platform.processor() or provenance.platform.machine()
    assert provenance.cpu_name(cpuinfo) == plain
    assert provenance.cpu_name(tmp_path / "missing") == plain
