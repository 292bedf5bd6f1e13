"""RMSNorm and rotary position embedding on the GPU (NumPy references in norm_rope.py).

  rmsnorm      block per row: the mean square by a shared-memory tree, then x * rsqrt(ms + eps) * w
  rope_tables  cos, sin [T, Dh/2] at given positions, times the YaRN scale
  rope         the half-split (NeoX) rotation, one thread per pair (i, i + Dh/2); may run in place
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from .common_cuda import MAX_THREADS, block_sum, check, power_of_two, stream_of

THREADS = 256  # threads per block (rmsnorm: per row)


@cuda.jit(cache=True)
def _rmsnorm_kernel(x, w, eps, out):
    buf = cuda.shared.array(MAX_THREADS, np.float32)
    t, tid, nt = cuda.blockIdx.x, cuda.threadIdx.x, cuda.blockDim.x
    D = x.shape[1]
    ss = np.float32(0)
    for i in range(tid, D, nt):
        ss += x[t, i] * x[t, i]
    inv_rms = np.float32(1) / math.sqrt(block_sum(buf, ss, tid, nt) / np.float32(D) + eps)
    for i in range(tid, D, nt):
        out[t, i] = w[i] * (x[t, i] * inv_rms)


@cuda.jit(cache=True)
def _rope_tables_kernel(inv_freq, scale, positions, cos, sin):
    i = cuda.grid(1)
    half = inv_freq.shape[0]
    if i < positions.shape[0] * half:
        t, f = i // half, i % half
        angle = np.float32(positions[t]) * inv_freq[f]
        cos[t, f] = math.cos(angle) * scale
        sin[t, f] = math.sin(angle) * scale


@cuda.jit(cache=True)
def _rope_kernel(x, cos, sin, out):
    i = cuda.grid(1)
    T, heads, Dh = x.shape
    half = Dh // 2
    if i < T * heads * half:
        t, f = i // (heads * half), i % half
        h = (i // half) % heads
        first, second = x[t, h, f], x[t, h, f + half]
        out[t, h, f] = first * cos[t, f] - second * sin[t, f]
        out[t, h, f + half] = second * cos[t, f] + first * sin[t, f]


def rmsnorm(x, w, eps: float, out):
    """out [T, D] = x [T, D] * rsqrt(mean(x**2) + eps) * w [D], float32."""
    T, D = x.shape
    check(w.shape == (D,) and out.shape == (T, D) and x.dtype == w.dtype == out.dtype == np.float32,
          "rmsnorm", x=x, w=w, out=out)
    if T:
        _rmsnorm_kernel[T, power_of_two(min(THREADS, D)), stream_of(out)](x, w, np.float32(eps), out)
    return out


def rope_tables(inv_freq, scale: float, positions, cos, sin):
    """cos, sin [T, Dh/2] = cos / sin(float32(positions[t]) * inv_freq[f]) * scale."""
    T, half = positions.shape[0], inv_freq.shape[0]
    check(cos.shape == sin.shape == (T, half) and cos.dtype == sin.dtype == inv_freq.dtype == np.float32,
          "rope_tables", inv_freq=inv_freq, positions=positions, cos=cos, sin=sin)
    n = T * half
    if n:
        _rope_tables_kernel[-(-n // THREADS), THREADS, stream_of(cos)](inv_freq, np.float32(scale), positions, cos, sin)
    return cos, sin


def rope(x, cos, sin, out):
    """out [T, heads, Dh] = x rotated pairwise by the angles of cos, sin [T, Dh/2]; out may be x."""
    T, heads, Dh = x.shape
    check(Dh % 2 == 0 and cos.shape == sin.shape == (T, Dh // 2) and out.shape == x.shape
          and x.dtype == cos.dtype == out.dtype == np.float32, "rope", x=x, cos=cos, sin=sin, out=out)
    n = T * heads * Dh // 2
    if n:
        _rope_kernel[-(-n // THREADS), THREADS, stream_of(out)](x, cos, sin, out)
    return out
