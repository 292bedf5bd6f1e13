"""The prefill's MXFP4 expert products on fp16 tensor cores at float32's accuracy: two products where
bf16x3.py takes three.

fp16 keeps 11 significant bits (bf16: 8) but a narrow range: normal from 2**-14 to 65504, subnormal
down to 2**-24. So both operands are scaled by powers of two first (exact), and scaled back after:

  x   each row by 2**-r, r chosen so that the row's largest magnitude lies in [2**14, 2**15); then
        x1 = fp16(x 2**-r)          (rounded to nearest)
        x2 = fp16(x 2**-r - x1)     (the difference is exact in float32)
      x1 + x2 misses x 2**-r by at most 2**-22 of it, or by 2**-25 where x2 is subnormal (2**-39 of
      the row's largest value): float32 rounds x itself to 2**-24.
  W   an expert's MXFP4 weights, FP4 x 2**(s - 127) for block scale byte s, times 2**(140 - smax)
      (smax: the expert's largest scale byte): FP4 x 2**(s - smax + 13), at most 6 x 2**13 = 49152,
      and exact in fp16 for s >= smax - 36; blocks more than 36 binades below the largest round in
      fp16's subnormals, by at most 2**-25, 2**-40 of the expert's largest weight.
  x @ W.T = (x1 @ W'.T + x2 @ W'.T) 2**r 2**(smax - 140)

An fp16 times an fp16 is exact in float32 and cuBLAS sums in float32, so the two products give
float32's accuracy (tests/test_fp16x2.py emulates them) at the tensor-core rate of bf16 (an H100's 989
dense TFLOP/s for both), with 2/3 of bf16x3's products. The dense bf16 weights stay on bf16x3: bf16's
exponent range does not fit fp16's.

The functions take NumPy arrays; on the GPU the split and the sum are kernels/fp16x2_cuda.py (tested
against these) and the weights' scaling is mxfp4_cuda.dequantize's.
"""

from __future__ import annotations

import numpy as np

PARTS = 2
LARGEST_AT = 140  # weights are scaled by 2**(LARGEST_AT - smax): the largest block scale becomes 2**13
ROW_EXPONENT_LIMIT = 100  # |r| at most this, so that 2**-r is a float32 for rows of tiny magnitude


def pow2(n) -> np.ndarray:
    """2**n as float32 (exact for -149 <= n <= 127)."""
    return np.ldexp(1.0, np.asarray(n, dtype=np.int64)).astype(np.float32)


def row_exponents(x) -> np.ndarray:
    """r [T] int32: the power of two that brings each row's largest magnitude of x [T, K] into
    [2**14, 2**15) (0 for a row of zeros), within +-ROW_EXPONENT_LIMIT. A row whose largest magnitude is
    2**116 or more would overflow fp16 at r = ROW_EXPONENT_LIMIT; the experts' inputs never come near: they
    leave RMSNorm (|x| <= sqrt(K) times the norm's weight) or the clamped SwiGLU (|x| <= limit (limit + 1))."""
    largest = np.abs(x).max(axis=1)
    _, exponent = np.frexp(largest)  # largest = m 2**exponent, 0.5 <= m < 1: in [2**(exponent-1), 2**exponent)
    r = np.where(largest > 0, exponent.astype(np.int64) - 1 - 14, 0)
    return np.clip(r, -ROW_EXPONENT_LIMIT, ROW_EXPONENT_LIMIT).astype(np.int32)


def split(x) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x [T, K] float32 -> (x1, x2, r): x1, x2 [T, K] float16 with x1 + x2 ~ x 2**-r per row (r [T])."""
    x = x.astype(np.float32, copy=False)
    r = row_exponents(x)
    scaled = x * pow2(-r)[:, None]
    x1 = scaled.astype(np.float16)
    x2 = (scaled - x1.astype(np.float32)).astype(np.float16)
    return x1, x2, r


def interleaved_parts(x) -> tuple[np.ndarray, np.ndarray]:
    """x [T, K] float32 -> (parts [2T, K] float16, r [T]): row 2t + i is part i of x[t], so that one
    product covers both parts and any run of whole rows (an expert's group) stays one block."""
    x1, x2, r = split(x)
    return np.stack([x1, x2], axis=1).reshape(PARTS * x.shape[0], x.shape[1]), r


def scaled_weights(w, smax: int) -> np.ndarray:
    """Dequantized MXFP4 weights w (float32) of an expert whose largest scale byte is smax, times
    2**(LARGEST_AT - smax), rounded to float16."""
    return (w.astype(np.float64) * 2.0 ** (LARGEST_AT - smax)).astype(np.float16)


def sum_parts(y, r, smax) -> np.ndarray:
    """The products [2T, N] of interleaved_parts' rows with scaled_weights -> x @ w.T [T, N] float32;
    smax: the expert's largest scale byte, or each row's expert's [T]."""
    return ((y[1::2] + y[0::2]) * pow2(r)[:, None]) * pow2(np.asarray(smax) - LARGEST_AT)[..., None]
