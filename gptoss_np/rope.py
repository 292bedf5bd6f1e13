"""Rotary position embedding frequencies: plain RoPE or YaRN, with Hugging Face's semantics.

YaRN keeps the fast-rotating dimensions as they are (extrapolation), divides the frequency of the
slow ones by `factor` (interpolation) and blends linearly in between; the blend runs over the
dimension indices whose number of rotations within `original_max_position_embeddings` lies
between beta_slow and beta_fast. cos and sin are then scaled by 0.1 * ln(factor) + 1 (1 for a
factor up to 1), or by rope_scaling's attention_factor where it gives one (or, where it gives mscale
and mscale_all_dim, by the ratio of 0.1 * m * ln(factor) + 1 for the two).
"""

from __future__ import annotations

import math

import numpy as np

from .config import GptOssConfig


def inv_freq_and_scale(c: GptOssConfig) -> tuple[np.ndarray, float]:
    """Inverse frequencies [Dh/2] (float32, computed in float64) and the cos/sin scale.

    transformers computes theta ** (2i / Dh) in float32: for gpt-oss-20b, 7 of its 32 frequencies come
    out 1 ulp from these, correctly rounded, ones, which moves angles by up to 5e-4 rad at position
    131k (1.5e-5 at 4k): float32's noise on the oracle's side, felt only in long contexts."""
    r, dim = c.rope_parameters, c.head_dim
    pos_freqs = r.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    if r.rope_type == "default":
        return (1.0 / pos_freqs).astype(np.float32), 1.0
    low, high = _correction_range(r.beta_fast, r.beta_slow, dim, r.rope_theta,
                                  r.original_max_position_embeddings, r.truncate)
    if low == high:
        high += 0.001  # as transformers: avoid a zero-width ramp
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    inv_freq = (1.0 / (r.factor * pos_freqs)) * ramp + (1.0 / pos_freqs) * (1.0 - ramp)
    if r.attention_factor is not None:
        scale = r.attention_factor
    elif r.mscale is not None:
        scale = _mscale(r.factor, r.mscale) / _mscale(r.factor, r.mscale_all_dim)
    else:
        scale = _mscale(r.factor)
    return inv_freq.astype(np.float32), float(scale)


def _correction_range(beta_fast, beta_slow, dim, base, original_max, truncate) -> tuple[float, float]:
    """Dimension indices where the number of rotations crosses beta_fast and beta_slow."""
    def dim_of(rotations):
        return dim * math.log(original_max / (rotations * 2 * math.pi)) / (2 * math.log(base))
    low, high = dim_of(beta_fast), dim_of(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, dim - 1)


def _mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0
