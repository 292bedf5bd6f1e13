"""GPU benchmark of the CUDA engine on gpt-oss-20b-shaped random weights built on the GPU (no disk).

    python3 bench/gpu.py --json out.json [--tests gpu_tests.xml] [--layers 24] [--prompt 512] [--decode 32]

Measures the weights' GPU memory, prefill tok/s (one forward over --prompt tokens), decode tok/s
(greedy steps with on-device argmax, one token id to the host per step) and peak GPU memory (CuPy's
pool). With --tests, the pass/fail counts and relative errors from a pytest junit XML of
tests/test_gpu.py go into the same JSON. Prints a table last.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import subprocess
import time
import xml.etree.ElementTree as ET

import cupy as cp
import numpy as np

from gptoss_np import GptOss, synthetic
from gptoss_np.backend import select
from gptoss_np.checkpoint import EMBED, FINAL_NORM, _layer_shapes
from gptoss_np.config import GptOssConfig

_FP4_RMS = math.sqrt(68.5 / 8)  # RMS of the 16 FP4 values


class DeviceCheckpoint:
    """A Checkpoint look-alike whose tensors are random CuPy arrays made on the GPU, scaled by role
    as synthetic.py scales them (unit-scale activations through every layer)."""

    def __init__(self, config: GptOssConfig, seed: int = 0):
        self.config = config
        self.nbytes = 0
        self.rs = cp.random.RandomState(seed)

    def _bf16(self, shape, std: float, mean: float = 0.0):
        x = self.rs.standard_normal(shape, dtype=cp.float32) * cp.float32(std) + cp.float32(mean)
        u = x.view(cp.uint32)
        return ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype(cp.uint16)

    def _tensor(self, short: str, shape):
        c = self.config
        D = c.hidden_size
        if short.endswith("_blocks"):
            return self.rs.randint(0, 256, shape, dtype=cp.int32).astype(cp.uint8)
        if short.endswith("_scales"):
            std = (2.5 if "gate_up" in short else 1.0) / math.sqrt(shape[-1] * 32)
            exponent = 127 + round(math.log2(std / _FP4_RMS))
            return (exponent + self.rs.randint(-1, 2, shape, dtype=cp.int32)).astype(cp.uint8)
        if short.endswith("norm"):
            return self._bf16(shape, 0.1, mean=1.0)
        if short in ("q", "k"):
            return self._bf16(shape, 1.5 * c.head_dim ** 0.25 / math.sqrt(D))
        if short == "router":
            return self._bf16(shape, 2.0 / math.sqrt(D))
        if short == "sinks":
            return self._bf16(shape, 1.0)
        return self._bf16(shape, 0.1 if short.endswith("bias") else 1.0 / math.sqrt(shape[-1]))

    def layer(self, i: int) -> dict:
        return {short: self._tensor(short, shape) for short, shape in _layer_shapes(self.config).items()}

    def tensor(self, name: str):
        V, D = self.config.vocab_size, self.config.hidden_size
        if name == FINAL_NORM:
            return self._bf16((D,), 0.1, mean=1.0)
        return self._bf16((V, D), 1.0 if name == EMBED else 2.0 / math.sqrt(D))


def timed(fn):
    cp.cuda.Device().synchronize()
    start = time.perf_counter()
    result = fn()
    cp.cuda.Device().synchronize()
    return result, time.perf_counter() - start


def test_results(path: str) -> dict:
    """passed / failed / skipped counts and the recorded rel_err properties of a junit XML."""
    root = ET.parse(path).getroot()
    counts = dict(passed=0, failed=0, skipped=0)
    errors = {}
    for case in root.iter("testcase"):
        outcome = "failed" if case.find("failure") is not None or case.find("error") is not None else (
            "skipped" if case.find("skipped") is not None else "passed")
        counts[outcome] += 1
        for prop in case.iter("property"):
            errors[f"{case.get('name')}:{prop.get('name')}"] = float(prop.get("value"))
    return {**counts, "rel_errors": errors}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True)
    parser.add_argument("--tests", help="junit XML of tests/test_gpu.py to fold into the JSON")
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--decode", type=int, default=32)
    parser.add_argument("--context", type=int, default=4096, help="KV cache capacity (tokens)")
    args = parser.parse_args(argv)

    pool = cp.get_default_memory_pool()
    ops = select("cuda")
    config = GptOssConfig.from_dict(synthetic.config_dict("gpt-oss-20b", num_hidden_layers=args.layers))
    model, load_s = timed(lambda: GptOss(DeviceCheckpoint(config), ops, progress=False))
    pool.free_all_blocks()
    weights = pool.used_bytes()
    cache = model.new_cache(args.context)
    kv = pool.used_bytes() - weights
    ids = np.random.default_rng(0).integers(0, config.vocab_size, args.prompt)

    model.forward(ids[:8], model.new_cache(64))  # compile every kernel (prefill and decode paths)
    model.forward(ids[:1], model.new_cache(64))
    logits, prefill_s = timed(lambda: model.forward(ids, cache))
    token = ops.sample(logits[0])
    model.forward(np.array([token]), cache)  # a first decode step at this cache size

    def decode():
        t = token
        for _ in range(args.decode):
            t = ops.sample(model.forward(np.array([t]), cache)[0])
    _, decode_s = timed(decode)

    report = {
        "device": ops.device_name, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip() or "unknown",
        "layers": args.layers, "prompt_tokens": args.prompt, "decode_tokens": args.decode, "kv_context": args.context,
        "load_s": round(load_s, 2), "weights_gb": round(weights / 1e9, 3), "kv_cache_gb": round(kv / 1e9, 3),
        "peak_gpu_gb": round(pool.total_bytes() / 1e9, 3),
        "prefill_tok_s": round(args.prompt / prefill_s, 1), "decode_tok_s": round(args.decode / decode_s, 2),
    }
    if args.tests:
        report["gpu_tests"] = test_results(args.tests)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)
    print(f"{'field':<16} value")
    for key, value in report.items():
        if key != "gpu_tests":
            print(f"{key:<16} {value}")
    if args.tests:
        t = report["gpu_tests"]
        print(f"{'gpu tests':<16} {t['passed']} passed, {t['failed']} failed, {t['skipped']} skipped")
        for name, err in t["rel_errors"].items():
            print(f"  {name:<60} {err:.2e}")


if __name__ == "__main__":
    main()
