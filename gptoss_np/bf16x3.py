"""Float32 matrix products on bf16 tensor cores, as exact as float32 for this model's weights.

bf16 keeps float32's 8 exponent bits and 7 of its 23 mantissa bits (8 significant bits). This model's
weights are exact in bf16: a dequantized MXFP4 weight is an FP4 value (at most 2 significant bits)
times a power of two, and the dense weights are stored as bf16. The activations x are not, so they go
in three parts, each the leading 8 significant bits of what the parts before left:

    x1 = x with its low 16 bits cleared      exact in bf16
    x2 = (x - x1) with its low 16 bits cleared
    x3 = x - x1 - x2                           8 bits at most: exact in bf16
    x @ W.T = x1 @ W.T + x2 @ W.T + x3 @ W.T

A bf16 times a bf16 is exact in float32, and cuBLAS sums the products in float32, so the three
products give float32's accuracy (tests/test_bf16x3.py emulates them) at bf16 tensor-core speed: an
H100's datasheet gives 989 dense TFLOP/s of bf16 against 495 of TF32 (tf32.py's two products) and 67
of float32. The weights reach cuBLAS as bf16, half the bytes of float32: dequantized experts are
written and read at half the traffic, and the dense weights need no widening at all.

The functions take NumPy or CuPy arrays of float32 and bf16 bits (uint16); interleaved_parts, NumPy's,
is the reference of the GPU's split: one kernel there (kernels/bf16x3_cuda.py). The product is
backend_cuda's (cuBLAS's gemmEx).
"""

from __future__ import annotations

import numpy as np

PARTS = 3


def truncate_to_bf16(x):
    """float32 x with its low 16 bits cleared, still as float32: exact in bf16."""
    return (x.astype(np.float32, copy=False).view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)


def split(x) -> tuple:
    """(x1, x2, x3), float32 values exact in bf16, with x1 + x2 + x3 == x exactly (for x whose lowest
    set bit is above 2**-133, bf16's smallest denormal)."""
    x1 = truncate_to_bf16(x)
    rest = x - x1  # exact: x's low 16 bits
    x2 = truncate_to_bf16(rest)
    return x1, x2, rest - x2


def interleaved_parts(x):
    """x [T, K] float32 -> [3T, K] bf16 bits: row 3t + i is part i of x[t], so that one product covers
    every part and any run of whole rows (an expert's group) stays one contiguous block."""
    parts = np.stack(split(x), axis=1).reshape(PARTS * x.shape[0], x.shape[1])
    return (parts.view(np.uint32) >> np.uint32(16)).astype(np.uint16)


def sum_parts(y):
    """The products [3T, N] of interleaved_parts' rows -> x @ w.T [T, N], smallest parts first."""
    return (y[2::3] + y[1::3]) + y[0::3]
