"""Float32 matrix products on TF32 tensor cores, as exact as float32 for this model's weights.

TF32 keeps float32's 8 exponent bits and 10 of its 23 mantissa bits. In cuBLAS's TF32 mode both
operands of a product are rounded to it and the sums stay float32. This model's weights lose nothing
there: a dequantized MXFP4 weight is an FP4 value (at most 2 significant bits) times a power of two,
a bf16 weight has 8 significant bits. Only the activations x would be rounded, by up to 2**-11 of
their size (a product over K = 2880 then errs by ~2e-4, tests/test_tf32.py). Split x into its TF32
rounding and the rest:

    x_hi = tf32(x)     exact in TF32
    x_lo = x - x_hi    exact in float32, |x_lo| <= 2**-11 |x|
    x @ W.T = x_hi @ W.T + x_lo @ W.T

The first product is exact before the float32 sums; the second rounds x_lo by up to 2**-11 of itself,
2**-22 of x. Two TF32 products then give float32's accuracy at tensor-core speed (an H100's datasheet:
495 dense TFLOP/s of TF32 against 67 of float32), for weights that are exact in TF32 only.

The functions take NumPy or CuPy arrays; backend_cuda.py turns cuBLAS's TF32 mode on around the products.
"""

from __future__ import annotations

import numpy as np

_DROPPED = 13  # float32 mantissa bits that TF32 does not keep


def round_to_tf32(x):
    """float32 x rounded to the nearest TF32 value (ties to even), still as float32."""
    bits = x.astype(np.float32, copy=False).view(np.uint32)
    half = np.uint32((1 << (_DROPPED - 1)) - 1) + ((bits >> np.uint32(_DROPPED)) & np.uint32(1))
    return ((bits + half) & np.uint32(~((1 << _DROPPED) - 1) & 0xFFFFFFFF)).view(np.float32)


def split(x):
    """(x_hi, x_lo): x_hi = x rounded to TF32, x_lo = x - x_hi (exact), so x_hi + x_lo == x."""
    hi = round_to_tf32(x)
    return hi, x - hi


def interleaved_halves(x, xp=np):
    """x [T, K] -> [2T, K]: row 2t is x_hi[t], row 2t + 1 is x_lo[t], so that one product covers both
    halves and any run of whole rows (an expert's group) stays one contiguous block."""
    return xp.stack(split(x), axis=1).reshape(2 * x.shape[0], x.shape[1])


def sum_halves(y):
    """The products [2T, N] of interleaved_halves' rows -> x @ w.T [T, N]."""
    return y[0::2] + y[1::2]
