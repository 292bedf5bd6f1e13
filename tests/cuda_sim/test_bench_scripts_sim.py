"""The other scripts of bench/gpu_check.sh's device call, end to end in the simulator on toy models, so
that the one GPU call does not find them broken: bench/moe_dispatch.py --device cuda (issue 5's table)
and bench/sanitize.py (run under compute-sanitizer)."""

from __future__ import annotations

import importlib
import json
import sys
import types

import numpy as np
import pytest

from cuda_sim import sim
from gptoss_np import backend
from gptoss_np.kernels import bf16_cuda

@pytest.fixture
def on_simulated_gpu(monkeypatch):
    """device="cuda" takes CudaOps on the simulator (NumPy standing in for CuPy)."""
    sim.cupy_on_the_simulator(monkeypatch)
    monkeypatch.setattr(backend, "cuda_unusable_reason", lambda: None)


# as small as the simulator wants, every feature kept
TOY = dict(hidden_size=32, intermediate_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
           head_dim=8, num_local_experts=4, num_experts_per_tok=2, vocab_size=32, sliding_window=4)


def test_moe_dispatch_table_on_the_gpu(on_simulated_gpu, monkeypatch, tmp_path, bench_script):
    bench = bench_script("moe_dispatch")
    monkeypatch.setattr(bench, "CONFIG", {**bench.CONFIG, **TOY})
    # 24 tokens, 2 experts each of 4: 12 an expert on average; at ratio 0.25 each takes at most 8 (the
    # budget is rounded up to a multiple of 8), at ratio 4 all it is given
    monkeypatch.setattr(sys, "argv", ["moe_dispatch.py", "--device", "cuda", "--tokens", "24", "--ratios", "0.25", "4",
                                      "--checkpoint", str(tmp_path / "checkpoint"), "--out", str(tmp_path)])
    bench.main()
    (path,) = tmp_path.glob("moe-dispatch-*-cuda.json")
    result = json.loads(path.read_text())
    assert result["device"] == "cuda" and result["machine"] == "Numba CUDA simulator" and result["commit"]
    tight, roomy = result["rows"]
    assert tight["dropped_pairs"] > 0 and tight["logits_rel_err"] > 1e-3
    assert roomy["dropped_pairs"] == 0 and roomy["logits_rel_err"] < 1e-5  # room for all: exact routing
    assert all(row["seconds"] > 0 and row["exact_seconds"] > 0 for row in result["rows"])
    sim.assert_launched_as_checked()


def test_sanitize_run_agrees_with_the_cpu_engine(on_simulated_gpu, monkeypatch, capsys, bench_script):
    monkeypatch.setitem(sys.modules, "gpu", bench_script("gpu"))  # sanitize.py imports the benchmark's paths
    sanitize = bench_script("sanitize")
    monkeypatch.setattr(sanitize, "CONFIG", TOY)
    monkeypatch.setattr(sanitize, "PROMPT", 7)  # past the window; above MAX_ROWS: cuBLAS for the projections
    monkeypatch.setattr(bf16_cuda, "MAX_ROWS", 4)
    graphs = sim.stand_in_graphs(monkeypatch, importlib.import_module("gptoss_np.cuda_graph"))
    assert sanitize.main() == 0
    out = capsys.readouterr().out
    assert out.count("prefill 7 tokens, experts") == 4 and out.count("generate, graphs") == 4
    # its two runs with graphs recorded a step each and replayed it (the script would say if one fell back)
    assert "capture failed" not in out and len(graphs) == 2 and all(graph.launches for graph in graphs)
    assert out.splitlines()[-1] == "as the CPU engine"
    sim.assert_launched_as_checked(own_module="bench_gpu")


@pytest.mark.parametrize("wrong", ["tiled", "blas_tf32x2", "greedy", "sampled", None])
def test_sanitize_run_says_what_differs(on_simulated_gpu, monkeypatch, capsys, bench_script, wrong):
    """sanitize.py's verdict, the engines stood in for: each prefill path bench/gpu.py times runs with its
    own settings and is compared with the CPU engine's logits (a relative error over TOLERANCE fails it);
    generate() runs with graphs and op by op, and a greedy run must give the CPU engine's tokens (a
    sampled one may not)."""
    monkeypatch.setitem(sys.modules, "gpu", bench_script("gpu"))  # sanitize.py imports the benchmark's paths
    sanitize = bench_script("sanitize")
    monkeypatch.setattr(sanitize.synthetic, "write_checkpoint", lambda folder, config: folder)
    allocators = []  # CuPy's pool off: an allocation of its own for each array, whose bounds memcheck knows
    monkeypatch.setattr(sanitize.cp.cuda, "set_allocator", lambda allocator=None: allocators.append(allocator))
    backend_cuda = importlib.import_module("gptoss_np.backend_cuda")
    ref = np.ones((1, 8))
    ran, generated = [], []
    paths = {(None, "bf16x3", True): "tiled", (1, "bf16x3", True): "blas", (1, "bf16x3", False): "blas_bf16x3",
             (1, "tf32x2", False): "blas_tf32x2"}

    class Ops:
        name, products, fp16_experts, graphs = "cuda", "bf16x3", True, True

    def gpu_logits(ids):
        blas_from = backend_cuda.EXPERT_BLAS_MIN_TOKENS
        path = paths[(None if blas_from > len(ids) else blas_from, ops.products, ops.fp16_experts)]
        ran.append(path)
        return ref * (1 + 2 * sanitize.TOLERANCE) if path == wrong else ref * (1 + sanitize.TOLERANCE / 2)

    def gpu_generate(ids, n, **sampling):
        generated.append((ops.graphs, bool(sampling)))
        return [1, 2, 3, 9] if wrong == ("sampled" if sampling else "greedy") else [1, 2, 3, 4]
    ops = Ops()
    gpu = types.SimpleNamespace(ops=ops, config=types.SimpleNamespace(vocab_size=50), logits=gpu_logits,
                                generate=gpu_generate)
    cpu = types.SimpleNamespace(logits=lambda ids: ref, generate=lambda ids, n, **sampling: [1, 2, 3, 4])
    monkeypatch.setattr(sanitize.gptoss_np, "load", lambda folder, device="cpu": gpu if device == "cuda" else cpu)
    assert sanitize.main() == (1 if wrong in ("tiled", "blas_tf32x2", "greedy") else 0)
    assert allocators == [None]
    assert ran == ["tiled", "blas", "blas_bf16x3", "blas_tf32x2"]
    assert generated == [(True, False), (True, True), (False, False), (False, True)]
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == ("as the CPU engine" if wrong in ("sampled", None) else
                    "1 prefills or greedy runs differ from the CPU engine" if wrong != "greedy" else
                    "2 prefills or greedy runs differ from the CPU engine")  # both greedy runs
