"""The Numba CPU kernels' machine code: float32 arithmetic, as their speed assumes.

A double-precision value in a kernel halves its vector lanes and usually means an accidental promotion
(math.floor returns int64, so arithmetic on its result widens; a Python float argument is a double).
The kernels are compiled in a fresh process, with the argument types the engine gives them while a
model prefills and decodes, and their LLVM IR is searched for double arithmetic.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# every module of kernels/ but the CUDA ones (test_kernels_cuda.py): those without Numba CPU kernels add nothing
MODULES = sorted(path.stem for path in (ROOT / "kernels").glob("*.py")
                 if not path.stem.endswith("_cuda") and path.stem != "__init__")
FLOAT64_ALLOWED = {"norm_rope.rmsnorm"}  # its sum of squares is float64 on purpose (as transformers' mean)
# an instruction that makes or computes a double, or an LLVM intrinsic on doubles
DOUBLE = re.compile(r"= (?:fadd|fsub|fmul|fdiv|frem|fneg|fpext|sitofp|uitofp)\b[^\n]*\bdouble\b|@llvm\.[a-z.]+\.f64\(")


def double_ops(folder: str) -> dict:
    """kernel -> the double-precision instructions of its compiled signatures ([] when none; None when
    the engine never called it), after `folder`'s model ran a long and a short prefill and decoded."""
    import importlib

    import numba
    import numpy as np
    from numba.core.registry import CPUDispatcher

    import gptoss_np

    model = gptoss_np.load(folder, device="cpu")
    model.logits(np.arange(300) % model.config.vocab_size)  # prefill: groups of experts large enough for BLAS
    list(model.generate(np.arange(24), 3))  # a short prefill (the tile kernel, the GEMV), then decode steps
    from gptoss_np.kernels import mxfp4  # loading dense experts quantizes them (transposed float32 matrices)
    mxfp4.quantize_rows(np.ones((64, 96), np.float32).T)
    found = {}
    for name in MODULES:
        module = importlib.import_module(f"gptoss_np.kernels.{name}")
        for attr, kernel in vars(module).items():
            if not (isinstance(kernel, CPUDispatcher) and kernel.__module__ == module.__name__):
                continue
            if kernel.targetoptions.get("inline") == "always":  # no code of its own: checked where inlined
                continue
            options = {k: v for k, v in kernel.targetoptions.items() if k != "cache"}
            fresh = numba.njit(**options)(kernel.py_func)  # cached code cannot be inspected: compile again
            lines = [] if kernel.signatures else None
            for signature in kernel.signatures:
                fresh.compile(signature)
                for function in re.split(r"\n(?=define )", fresh.inspect_llvm(signature)):
                    head = function.split("\n", 1)[0]
                    if head.startswith("define") and "cpython" not in head and "cfunc" not in head:
                        lines += [line.strip() for line in function.split("\n") if DOUBLE.search(line)]
            found[f"{name}.{attr}"] = lines
    return found


def test_cpu_kernels_compute_in_float32(checkpoint_dir):
    """Every CPU kernel the engine calls is free of double arithmetic (but FLOAT64_ALLOWED), and the
    model run exercises every kernel (a new kernel must be reached here to be checked)."""
    folder = str(checkpoint_dir("tiny"))
    code = (f"import sys, json; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_kernels_cpu as t; "
            f"print(json.dumps(t.double_ops({folder!r})))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-5000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert found, "no CPU kernel found"
    never_called = sorted(k for k, lines in found.items() if lines is None)
    assert not never_called, f"the model run never called {never_called}: reach them in double_ops"
    doubles = {k: lines[:5] for k, lines in found.items() if lines and k not in FLOAT64_ALLOWED}
    assert not doubles, doubles
    assert found["norm_rope.rmsnorm"], "rmsnorm's float64 sum was not found: the search misses doubles"
