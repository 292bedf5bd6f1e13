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
import subprocess
import time
import xml.etree.ElementTree as ET

import cupy as cp
import numpy as np

from gptoss_np import GptOss, synthetic
from gptoss_np.backend import select
from gptoss_np.checkpoint import FINAL_NORM, _layer_shapes, layer_tensor_name
from gptoss_np.config import GptOssConfig
from gptoss_np.kernels.bf16 import f32_to_bf16


class DeviceCheckpoint:
    """A Checkpoint look-alike whose tensors are random CuPy arrays made on the GPU, drawn as
    synthetic.py draws them (its `weight_stats` and `scale_exponent`), so activations stay unit-scale."""

    def __init__(self, config: GptOssConfig, seed: int = 0):
        self.config = config
        self.nbytes = 0
        self.rs = cp.random.RandomState(seed)

    def _tensor(self, name: str, shape):
        if name.endswith("_blocks"):
            return self.rs.randint(0, 256, shape, dtype=cp.int32).astype(cp.uint8)
        if name.endswith("_scales"):
            exponent = synthetic.scale_exponent(name, shape)
            return (exponent + self.rs.randint(-1, 2, shape, dtype=cp.int32)).astype(cp.uint8)
        mean, std = synthetic.weight_stats(name, shape, self.config)
        x = self.rs.standard_normal(shape, dtype=cp.float32) * cp.float32(std) + cp.float32(mean)
        return f32_to_bf16(x)

    def layer(self, i: int) -> dict:
        return {short: self._tensor(layer_tensor_name(i, short), shape)
                for short, shape in _layer_shapes(self.config).items()}

    def tensor(self, name: str):
        V, D = self.config.vocab_size, self.config.hidden_size
        return self._tensor(name, (D,) if name == FINAL_NORM else (V, D))


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
