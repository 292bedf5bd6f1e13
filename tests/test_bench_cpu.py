"""The CPU benchmarks run as their readers run them (`python bench/cpu.py`, `python bench/moe_dispatch.py`)
on a tiny checkpoint, and write JSON that names the commit and the machine they measured. (The GPU's are
run end to end in the simulator: tests/cuda_sim/test_bench_*.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import BENCH


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
