"""bfloat16 weights: conversions, the NumPy reference matmul, and the Numba CPU kernel.

NumPy has no bfloat16: a bf16 matrix is kept as its raw uint16 bits, the top half of a float32.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

# Up to this many token rows the GEMV kernel runs; above it, tiles go to BLAS.
GEMV_MAX_ROWS = 8
_TILE_ROWS = 1024


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) -> float32, exactly. Works on NumPy and CuPy arrays alike."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def as_f32(a: np.ndarray) -> np.ndarray:
    """A NumPy weight as float32: bf16 bits (uint16) widened exactly, any other float converted."""
    return bf16_to_f32(a) if a.dtype == np.uint16 else np.asarray(a, dtype=np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), rounding to nearest even (as torch does). NumPy or CuPy."""
    u = x.astype(np.float32, copy=False).view(np.uint32)
    rounded = u + (np.uint32(0x7FFF) + ((u >> 16) & 1))
    return (rounded >> 16).astype(np.uint16)


def matmul_ref(x: np.ndarray, w_bits: np.ndarray) -> np.ndarray:
    """x [T, K] f32 @ W.T for a bf16 matrix W [N, K] -> [T, N]."""
    return x @ bf16_to_f32(w_bits).T


@njit(inline="always")
def _bf16(bits):
    """One bf16 value (uint16 bits) as float32."""
    return np.uint32(np.uint32(bits) << 16).view(np.float32)


@njit(parallel=True, fastmath=True, cache=True)
def _gemv_kernel(x, w_bits, out):
    """out[t, n] = W[n] . x[t], rows of W in parallel."""
    T, K = x.shape
    N = w_bits.shape[0]
    chunk = 8
    for c in prange((N + chunk - 1) // chunk):
        for n in range(c * chunk, min(c * chunk + chunk, N)):
            for t in range(T):
                acc = np.float32(0)
                for k in range(K):
                    acc += _bf16(w_bits[n, k]) * x[t, k]
                out[t, n] = acc


@njit(parallel=True, cache=True)
def _widen_kernel(w_bits, out):
    """out [N, K] float32 = W, rows in parallel."""
    N, K = w_bits.shape
    for n in prange(N):
        for k in range(K):
            out[n, k] = _bf16(w_bits[n, k])


def matmul(x: np.ndarray, w_bits: np.ndarray) -> np.ndarray:
    """x [T, K] f32 @ W.T for a bf16 matrix W [N, K] (uint16 bits) -> [T, N] f32.

    Few rows: the GEMV kernel reads W's 2-byte values directly. Many rows: tiles of W are
    widened to float32 (never the whole matrix) and multiplied by BLAS.
    """
    T, K = x.shape
    N = w_bits.shape[0]
    if w_bits.shape != (N, K):
        raise ValueError(f"bf16 matmul: x {x.shape} and W {w_bits.shape} do not fit")
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty((T, N), dtype=np.float32)
    if T <= GEMV_MAX_ROWS:
        _gemv_kernel(x, w_bits, out)
        return out
    tile = np.empty((min(_TILE_ROWS, N), K), dtype=np.float32)
    for r in range(0, N, _TILE_ROWS):
        rows = min(_TILE_ROWS, N - r)
        _widen_kernel(w_bits[r:r + rows], tile[:rows])
        out[:, r:r + rows] = x @ tile[:rows].T
    return out
