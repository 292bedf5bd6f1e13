"""RMSNorm and rotary position embedding: the NumPy references and the Numba CPU kernels.

The kernels are plain loops: at decode (one token) NumPy's per-call overhead is most of the cost.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


def rmsnorm_ref(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x [T, D] * rsqrt(mean(x**2) + eps) * weight, in float32."""
    x = x.astype(np.float32, copy=False)
    inv_rms = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(eps))
    return weight * (x * inv_rms)


def rope_tables(inv_freq: np.ndarray, scale: float, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [T, Dh/2] float32 at these positions (angles rounded to float32 as torch does)."""
    angles = positions.astype(np.float32)[:, None] * inv_freq[None, :]
    return np.cos(angles) * np.float32(scale), np.sin(angles) * np.float32(scale)


def rope_ref(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate x [T, heads, Dh] in the half-split (NeoX) layout: pair (i, i + Dh/2) turns by angle i."""
    first, second = np.split(x, 2, axis=-1)
    cos, sin = cos[:, None, :], sin[:, None, :]
    return np.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)


@njit(cache=True)
def rmsnorm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """rmsnorm_ref as a loop: x [T, D] float32 -> [T, D] float32 (sum of squares in float64)."""
    T, D = x.shape
    out = np.empty((T, D), np.float32)
    for t in range(T):
        ss = 0.0
        for d in range(D):
            ss += np.float64(x[t, d]) * x[t, d]
        inv_rms = np.float32(1.0 / math.sqrt(np.float32(ss / D) + np.float32(eps)))
        for d in range(D):
            out[t, d] = weight[d] * (x[t, d] * inv_rms)
    return out


@njit(cache=True)
def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """rope_ref as a loop: x [T, heads, Dh] float32, cos / sin [T, Dh/2] -> [T, heads, Dh]."""
    T, heads, Dh = x.shape
    half = Dh // 2
    out = np.empty((T, heads, Dh), np.float32)
    for t in range(T):
        for h in range(heads):
            for i in range(half):
                a = x[t, h, i]
                b = x[t, h, i + half]
                out[t, h, i] = a * cos[t, i] - b * sin[t, i]
                out[t, h, i + half] = b * cos[t, i] + a * sin[t, i]
    return out
