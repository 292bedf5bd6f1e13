"""bfloat16 weights on the GPU: the GEMV of decode and the widening that feeds cuBLAS in prefill.

A bf16 matrix W [N, K] is kept as its uint16 bits (as on the CPU, see bf16.py); the GEMV reads it as
uint32 words [N, K/2], each word holding elements 2j (low half) and 2j+1 (high half).

  gemv        out[t, n] = W[n] . x[t] + bias[n] for up to MAX_ROWS token rows, W read once for all
  widen_rows  out[i] = float32(W[rows[i]]): embedding lookups, and f32 tiles of W for a cuBLAS matmul
The NumPy references are bf16.matmul_ref and bf16.bf16_to_f32.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from .common_cuda import bf16_hi, bf16_lo, check, row_sum, stream_of

MAX_ROWS = 8  # token rows one GEMV launch handles (its per-thread accumulators)
GEMV_LANES = 32  # threads per output row (a power of two)
GEMV_ROWS = 8  # output rows per block
WIDEN_THREADS = 256
_GEMV_MAX_THREADS = 256


@cuda.jit
def _gemv_kernel(x, words, bias, out):
    """Block (lanes, rows): `rows` outputs for every token row. Each lane reads 4 words (8 weights,
    16 bytes) at a time, consecutive lanes consecutive 16-byte pieces; odd word counts end in a tail."""
    partial = cuda.shared.array(_GEMV_MAX_THREADS, np.float32)
    acc = cuda.local.array(MAX_ROWS, np.float32)
    lane, r = cuda.threadIdx.x, cuda.threadIdx.y
    lanes = cuda.blockDim.x
    n = cuda.blockIdx.x * cuda.blockDim.y + r
    T = x.shape[0]
    N, KW = words.shape
    for t in range(MAX_ROWS):
        acc[t] = 0
    if n < N:
        for c in range(lane, KW // 4, lanes):
            w0, w1, w2, w3 = words[n, 4 * c], words[n, 4 * c + 1], words[n, 4 * c + 2], words[n, 4 * c + 3]
            k = 8 * c
            for t in range(MAX_ROWS):  # a fixed trip count keeps acc in registers
                if t < T:
                    acc[t] += (bf16_lo(w0) * x[t, k] + bf16_hi(w0) * x[t, k + 1]
                               + bf16_lo(w1) * x[t, k + 2] + bf16_hi(w1) * x[t, k + 3]
                               + bf16_lo(w2) * x[t, k + 4] + bf16_hi(w2) * x[t, k + 5]
                               + bf16_lo(w3) * x[t, k + 6] + bf16_hi(w3) * x[t, k + 7])
        for i in range(KW // 4 * 4 + lane, KW, lanes):
            w = words[n, i]
            for t in range(MAX_ROWS):
                if t < T:
                    acc[t] += bf16_lo(w) * x[t, 2 * i] + bf16_hi(w) * x[t, 2 * i + 1]
    for t in range(MAX_ROWS):
        if t < T:
            total = row_sum(partial, acc[t], lane, r, lanes)
            if lane == 0 and n < N:
                out[t, n] = total + bias[n]


@cuda.jit
def _widen_rows_kernel(w, rows, out):
    """Grid (column blocks, rows): out[i, k] = float32 of bf16 bits w[rows[i], k]."""
    i = cuda.blockIdx.y
    k = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if k < w.shape[1]:
        out[i, k] = bf16_lo(w[rows[i], k])


def gemv(x, w_bits, bias, out):
    """out [T, N] = x [T, K] f32 @ W.T + bias [N] f32, W [N, K] bf16 bits (uint16, K even), T <= MAX_ROWS."""
    T, K = x.shape
    N = w_bits.shape[0]
    check(T <= MAX_ROWS and K % 2 == 0 and x.dtype == np.float32 and w_bits.shape == (N, K)
          and w_bits.dtype == np.uint16 and bias.shape == (N,) and bias.dtype == np.float32
          and out.shape == (T, N) and out.dtype == np.float32 and x.flags.c_contiguous and w_bits.flags.c_contiguous,
          "bf16 gemv", x=x, w=w_bits, bias=bias, out=out)
    check(GEMV_LANES * GEMV_ROWS <= _GEMV_MAX_THREADS, "bf16 gemv block", lanes=GEMV_LANES, rows=GEMV_ROWS)
    grid = (N + GEMV_ROWS - 1) // GEMV_ROWS
    _gemv_kernel[grid, (GEMV_LANES, GEMV_ROWS), stream_of(out)](x, w_bits.view(np.uint32), bias, out)
    return out


def widen_rows(w_bits, rows, out):
    """out [R, K] f32 = W[rows] for W [V, K] bf16 bits and rows [R] int."""
    R = rows.shape[0]
    check(w_bits.dtype == np.uint16 and w_bits.ndim == 2 and out.shape == (R, w_bits.shape[1])
          and out.dtype == np.float32, "bf16 widen_rows", w=w_bits, rows=rows, out=out)
    if R:
        grid = ((w_bits.shape[1] + WIDEN_THREADS - 1) // WIDEN_THREADS, R)
        _widen_rows_kernel[grid, WIDEN_THREADS, stream_of(out)](w_bits, rows, out)
    return out
