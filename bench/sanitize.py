"""Every CUDA kernel of the engine at its real launch shapes, on a small model, for compute-sanitizer:
what Numba's CUDA simulator cannot show. tests/cuda_sim checks races and uninitialized shared memory
(tests/cuda_sim/sim.py), but in the order its Python threads happen to run, not a GPU's; it lets a
barrier pass once the threads that skip it have exited; and its arrays are NumPy's, not the device's.

    compute-sanitizer --tool memcheck --error-exitcode 9 python3 bench/sanitize.py   # out-of-bounds accesses
    compute-sanitizer --tool racecheck --error-exitcode 9 python3 bench/sanitize.py  # shared-memory races
    compute-sanitizer --tool synccheck --error-exitcode 9 python3 bench/sanitize.py  # barriers not all reach

bench/gpu_check.sh's `sanitize` part runs the three (the device machines on Firecracker have the tool,
those on gVisor refuse it: /work/.library/device/KINDS.md). The run: prefills of PROMPT tokens with the
experts by each path bench/gpu.py times (the tiled kernel; cuBLAS with fp16x2, bf16x3 and tf32x2
products), each against the CPU engine's logits, then generate() with decode steps from a CUDA graph
and op by op, greedy (as the CPU engine's) and sampled. CuPy's memory pool is off, so that each array
is an allocation of its own, whose bounds memcheck knows.
"""

from __future__ import annotations

import sys
import tempfile

import cupy as cp
import numpy as np

import gptoss_np
from gpu import prefill_path, prefill_paths
from gptoss_np import synthetic

PROMPT = 40  # tokens: above bf16_cuda.MAX_ROWS (cuBLAS for the dense projections), past the window
# real head_dim and heads per kv head (the attention tiles' shapes), a few experts, small matrices
CONFIG = dict(hidden_size=256, intermediate_size=256, head_dim=64, num_attention_heads=16, num_key_value_heads=2,
              num_local_experts=8, num_experts_per_tok=4, sliding_window=16, vocab_size=1000)
TOLERANCE = 1e-4  # relative error (2-norm) of the logits against the CPU engine, as tests/test_gpu.py's


def main() -> int:
    cp.cuda.set_allocator(None)  # cudaMalloc for each array: memcheck sees each one's bounds
    folder = synthetic.write_checkpoint(tempfile.mkdtemp(), synthetic.config_dict("tiny", **CONFIG))
    cpu, gpu = gptoss_np.load(folder), gptoss_np.load(folder, device="cuda")
    ids = np.random.default_rng(0).integers(0, gpu.config.vocab_size, PROMPT)
    ref = cpu.logits(ids)
    failed = 0
    ops = gpu.ops
    for name, (blas_from, products, fp16_experts) in prefill_paths(ops).items():
        with prefill_path(ops, blas_from or PROMPT + 1, products, fp16_experts):
            err = float(np.linalg.norm(gpu.logits(ids) - ref) / np.linalg.norm(ref))
        failed += err > TOLERANCE
        print(f"prefill {PROMPT} tokens, experts {name}: rel err {err:.2e}", flush=True)
    for graphs in (True, False):
        ops.graphs = graphs
        for sampling in ({}, dict(temperature=0.8, top_k=20, top_p=0.9, seed=1)):
            new, expected = list(gpu.generate(ids, 4, **sampling)), list(cpu.generate(ids, 4, **sampling))
            failed += not sampling and new != expected  # a draw may fall either side of a rounding
            fell_back = " (the capture failed: decode ran op by op)" if graphs and not ops.graphs else ""
            print(f"generate, graphs {graphs}{fell_back}, {sampling or 'greedy'}: {new}, the CPU engine {expected}",
                  flush=True)
    print("as the CPU engine" if not failed else f"{failed} prefills or greedy runs differ from the CPU engine")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
