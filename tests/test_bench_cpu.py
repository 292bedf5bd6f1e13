"""The CPU benchmarks run as their readers run them (`python bench/cpu.py`, `python bench/moe_dispatch.py`)
on a tiny checkpoint, and write JSON that names the commit and the machine they measured; their figures
from runs stood in for, on a clock of the test's; and bench/gpu_check.sh's parts, with what it calls stood
in for. (The GPU's are run end to end in the simulator: tests/cuda_sim/test_bench_*.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from conftest import BENCH, fake_clock


def run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_cpu_benchmark_against_transformers(tmp_path):
    pytest.importorskip("transformers")  # and torch: the [test] extra's
    out = run("cpu.py", "--preset", "tiny", "--prompt", "24", "--decode", "3", "--repeats", "1",
              "--checkpoint", str(tmp_path / "tiny"), "--out", str(tmp_path))
    (path,) = tmp_path.glob("cpu-tiny-*-prompt24.json")
    result = json.loads(path.read_text())
    assert result["commit"] not in ("", "unknown") and result["machine"]["cpu"] and result["machine"]["threads"] > 0
    for engine in ("gptoss_np", "transformers"):
        assert result["median"][engine]["prefill_tok_s"] > 0 and result["median"][engine]["decode_tok_s"] > 0
        assert f"\n{engine} " in out
    assert result["ratio"]["decode_tok_s"] > 0 and result["versions"]["transformers"]


def test_moe_dispatch_benchmark_on_the_cpu(tmp_path):
    run("moe_dispatch.py", "--tokens", "64", "--ratios", "1", "4", "--checkpoint", str(tmp_path / "checkpoint"),
        "--out", str(tmp_path))
    (path,) = tmp_path.glob("moe-dispatch-*-cpu.json")
    result = json.loads(path.read_text())
    assert result["device"] == "cpu" and result["commit"] not in ("", "unknown") and "threads" in result["machine"]
    tight, roomy = result["rows"]
    assert tight["dropped_pairs"] > 0 and tight["logits_rel_err"] > 1e-3  # 64 tokens, ratio 1: 8 an expert of 8
    assert roomy["dropped_pairs"] == 0 and roomy["logits_rel_err"] < 1e-5  # room for all: exact routing


def test_cpu_runs_time_prefill_and_the_decode_steps_apart(bench_script, monkeypatch):
    """ours_run: prefill tok/s of the prompt, decode tok/s of the steps after it, each token the argmax
    of the logits before, through one cache sized for both."""
    cpu = bench_script("cpu")
    now = fake_clock(monkeypatch, cpu)
    fed, sized = [], []

    def forward(ids, cache):
        fed.append(ids.tolist())
        now[0] += 1.0 if len(fed) == 1 else 0.25  # the 8-token prefill 1 s, each step 0.25 s
        logits = np.zeros((1, 16), np.float32)
        logits[0, 3 + len(fed)] = 1
        return logits
    model = types.SimpleNamespace(new_cache=lambda n: sized.append(n), forward=forward)
    assert cpu.ours_run(model, np.arange(8), 4) == (8.0, 4.0)
    assert sized == [8 + 4] and fed == [list(range(8)), [4], [5], [6], [7]]


def test_transformers_runs_time_prefill_and_the_decode_steps_apart(bench_script, monkeypatch):
    """hf_run as ours_run: through the DynamicCache it made, each step's token the argmax of the last logits."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cpu = bench_script("cpu")
    now = fake_clock(monkeypatch, cpu)
    calls = []

    class Model:
        config = transformers.GptOssConfig(num_hidden_layers=2, vocab_size=16, hidden_size=32, head_dim=8,
                                           num_attention_heads=2, num_key_value_heads=1)

        def __call__(self, ids, cache, use_cache):
            calls.append((ids.tolist(), cache, use_cache))
            now[0] += 1.0 if len(calls) == 1 else 0.25
            logits = torch.zeros(1, ids.shape[1], 16)
            logits[0, -1, 3 + len(calls)] = 1
            return types.SimpleNamespace(logits=logits)
    assert cpu.hf_run(Model(), np.arange(8), 4) == (8.0, 4.0)
    assert [ids for ids, _, _ in calls] == [[list(range(8))], [[4]], [[5]], [[6]], [[7]]]
    assert all(cache is calls[0][1] and cache is not None and use for _, cache, use in calls)  # through its cache


def test_cpu_benchmark_json_of_its_runs(bench_script, monkeypatch, tmp_path):
    """main on engines stood in for: a warm-up, then each repeat's run of both on the whole prompt; the
    medians of the runs, our ratio to transformers, and the run's settings in the JSON."""
    transformers = pytest.importorskip("transformers")
    cpu = bench_script("cpu")
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "config.json").write_text("{}")
    ours = types.SimpleNamespace(config=types.SimpleNamespace(vocab_size=50))
    theirs = types.SimpleNamespace(eval=lambda: theirs)
    monkeypatch.setattr(cpu.gptoss_np, "load", lambda checkpoint: ours)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *args, **kwargs: theirs)
    runs = []
    rates = {"ours": iter([(0, 0), (100.0, 10.0), (300.0, 30.0), (200.0, 20.0)]),
             "theirs": iter([(0, 0), (10.0, 2.0), (30.0, 6.0), (20.0, 4.0)])}

    def run(engine):
        def timed(model, ids, n_decode):
            runs.append((engine, len(ids), n_decode))
            return next(rates[engine])
        return timed
    monkeypatch.setattr(cpu, "ours_run", run("ours"))
    monkeypatch.setattr(cpu, "hf_run", run("theirs"))
    monkeypatch.setattr(sys, "argv", ["cpu.py", "--preset", "tiny", "--prompt", "24", "--decode", "5", "--repeats", "3",
                                      "--checkpoint", str(tmp_path / "checkpoint"), "--out", str(tmp_path)])
    cpu.main()
    assert runs == [("ours", 16, 2), ("theirs", 16, 2)] + [("ours", 24, 5), ("theirs", 24, 5)] * 3
    (path,) = tmp_path.glob("cpu-tiny-*-prompt24.json")
    result = json.loads(path.read_text())
    assert result["config"] == {"preset": "tiny", "prompt_tokens": 24, "decode_tokens": 5, "repeats": 3}
    assert result["median"] == {"gptoss_np": {"prefill_tok_s": 200.0, "decode_tok_s": 20.0},
                                "transformers": {"prefill_tok_s": 20.0, "decode_tok_s": 4.0}}
    assert result["ratio"] == {"prefill_tok_s": 10.0, "decode_tok_s": 5.0}
    assert result["machine"]["threads"] == os.cpu_count()


def test_moe_dispatch_counts_of_all_layers(bench_script, monkeypatch):
    """run(): the (token, expert) pairs dropped over the N * k * L exact ones, the tokens left with no
    expert over N * L, and the seconds of the logits alone (not of the trace that counts them)."""
    bench = bench_script("moe_dispatch")
    now = fake_clock(monkeypatch, bench)
    L, k, N = 3, 2, 4

    def trace(ids, attention):
        now[0] += 100.0
        return [types.SimpleNamespace(dropped=6, unrouted=1)] * L

    def logits(ids):
        now[0] += 1.0
        return np.ones((N, 8))
    model = types.SimpleNamespace(config=types.SimpleNamespace(num_experts_per_tok=k, num_hidden_layers=L),
                                  trace=trace, logits=logits)
    _, seconds, dropped, unrouted = bench.run(model, np.arange(N))
    assert (seconds, dropped, unrouted) == (1.0, 3 * 6 / (N * k * L), 3 / (N * L))


def test_moe_dispatch_rows(bench_script, monkeypatch, tmp_path):
    """The device "auto" took, and a row for each length and ratio: the logits' relative error (2-norm)
    against exact routing's, each run's seconds as measured, and the budget by the seed's rule
    (ratio * N * k / E rounded up to a multiple of 8)."""
    bench = bench_script("moe_dispatch")
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "config.json").write_text("{}")
    from gptoss_np.dispatch import DispatchRule
    config = types.SimpleNamespace(vocab_size=50, num_experts_per_tok=4, num_local_experts=32)

    def load(checkpoint, device, moe_dispatch="exact", tokens_per_expert_ratio=None):
        return types.SimpleNamespace(config=config, ops=types.SimpleNamespace(name="cpu"),
                                     ratio=tokens_per_expert_ratio,
                                     dispatch_rule=DispatchRule(moe_dispatch, tokens_per_expert_ratio or 1.0))
    monkeypatch.setattr(bench.gptoss_np, "load", load)

    def run(model, ids):
        if model.ratio is None:  # exact routing: logits of norm 5
            return np.array([[3.0, 4.0]]), 2.0, 0.0, 0.0
        return np.array([[3.0, 4.0 + model.ratio]]), 1.0 / model.ratio, 0.5 / model.ratio, 0.0
    monkeypatch.setattr(bench, "run", run)
    monkeypatch.setattr(sys, "argv", ["moe_dispatch.py", "--device", "auto", "--tokens", "64", "256",
                                      "--ratios", "0.5", "2", "--checkpoint", str(tmp_path / "checkpoint"),
                                      "--out", str(tmp_path)])
    bench.main()
    (path,) = tmp_path.glob("moe-dispatch-*-cpu.json")
    result = json.loads(path.read_text())
    assert result["device"] == "cpu"  # what "auto" took
    rows = result["rows"]
    assert [(row["tokens"], row["ratio"], row["tokens_per_expert"]) for row in rows] == [
        (64, 0.5, 8), (64, 2.0, 16), (256, 0.5, 16), (256, 2.0, 64)]
    for row in rows:
        ratio = row["ratio"]
        assert row["logits_rel_err"] == ratio / 5
        assert (row["seconds"], row["exact_seconds"], row["dropped_pairs"]) == (1.0 / ratio, 2.0, 0.5 / ratio)


STUB_PYTHON = r"""#!/bin/bash
# python3 as gpu_check.sh calls it, stood in for: each call a line of the log
echo "python3 $* GPTOSS_COMMIT=${GPTOSS_COMMIT:-}" >> "$STUB_LOG"
case "$1 $2" in
    "-m pytest")
        for arg; do [[ "$arg" == --junitxml=* ]] && echo '<testsuites/>' > "${arg#--junitxml=}"; done
        exit "$STUB_PYTEST_EXIT";;
    "- ") cat > /dev/null; echo "smoke launch: a Numba kernel ran on a CuPy array";;
    "-c "*) echo "notebook modules missing: nbclient";;
esac
exit 0
"""
STUB_TIMEOUT = r"""#!/bin/bash
echo "timeout $*" >> "$STUB_LOG"
while [[ "$1" == -* ]]; do shift 2; done
shift
exec "$@"
"""


@pytest.mark.parametrize("pytest_exit", [1, 124])
def test_gpu_check_script_runs_its_parts(tmp_path, pytest_exit):
    """bench/gpu_check.sh with python3, nvidia-smi and timeout stood in for: by default the gpu tests, then the
    benchmark with their JUnit XML and pytest's exit code (124: cut off by the time limit) and every optional
    section of its JSON (the issue's fields: transformers' decode, the per-op profile), in the time the script
    has left less 15 s, then the MoE table; the commit from .whl/commit, which device_wheels.sh notes."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name, text in (("python3", STUB_PYTHON), ("timeout", STUB_TIMEOUT),
                       ("nvidia-smi", "#!/bin/bash\necho Stub GPU\n")):
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    tree, out, log = tmp_path / "tree", tmp_path / "out", tmp_path / "log"
    (tree / ".whl").mkdir(parents=True)
    (tree / ".whl" / "commit").write_text("c0ffee\n")
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "OUT": str(out), "STUB_LOG": str(log),
           "STUB_PYTEST_EXIT": str(pytest_exit), "GPTOSS_LIMIT": "400",
           "SECONDS": "100"}  # bash's clock of the script's seconds starts at 100: as if the install took them
    env.pop("GPTOSS_COMMIT", None)
    done = subprocess.run(["bash", str(BENCH / "gpu_check.sh")], cwd=tree, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    pytest_call, = [c for c in calls if c.startswith("python3 -m pytest")]
    assert "-m gpu tests/test_gpu.py" in pytest_call and f"--junitxml={out}/gpu_tests.xml" in pytest_call
    bench, = [c for c in calls if c.startswith("python3 bench/gpu.py")]
    assert bench.split()[2:] == ["--json", f"{out}/gpu_check.json", "--tests", f"{out}/gpu_tests.xml", "--tests-exit",
                                 str(pytest_exit), "--profile", "--variants", "--transformers", "GPTOSS_COMMIT=c0ffee"]
    limit, = [c for c in calls if c.startswith("timeout") and "bench/gpu.py" in c]
    assert limit.split()[5] in ("285", "284")  # 400 s less the 100 (or 101) spent less 15
    assert any(c.startswith("python3 bench/moe_dispatch.py --device cuda") for c in calls)
    assert ("cut off at 240 s" in done.stdout) == (pytest_exit == 124)
    assert "notebooks skipped" in done.stdout
