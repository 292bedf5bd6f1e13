"""RMSNorm and rotary position embedding (NumPy reference; also the CPU path)."""

from __future__ import annotations

import numpy as np


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
