"""bfloat16 weights on the GPU: the GEMV of decode and the widening that feeds cuBLAS in prefill.

A bf16 matrix W [N, K] is kept as its uint16 bits (as on the CPU, see bf16.py); the GEMV reads it as
uint64 words [N, K/4], each word holding elements 4i .. 4i + 3 (lowest bits first).

  gemv        out[t, n] = W[n] . x[t] + bias[n] (+ residual[t, n]) for up to MAX_ROWS token rows, W
              read once for all in coalesced 8-byte words, x staged in shared memory (a lane's 4
              values one 16-byte load); optionally of rmsnorm(x) instead of x, normalized as it is
              staged (decode's norms take no launch of their own)
  widen_rows  out[i] = float32(W[rows[i]]): embedding lookups, and f32 tiles of W for a cuBLAS matmul
The NumPy references are bf16.matmul_ref and bf16.bf16_to_f32.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from .common_cuda import SHARED_ALIGN, bf16_hi, bf16_lo, block_sum, check, residual_args, row_sum, stream_of

MAX_ROWS = 4  # token rows one GEMV launch handles (its per-thread accumulators)
GEMV_LANES = 32  # threads per warp of the GEMV (a power of two)
GEMV_WARPS = 8  # warps per block
WARP_ROWS = 4  # output rows a warp computes for large N (the staged x then serves 32 rows a block)
WARP_ROWS_FROM_N = 16384  # N from which warps take WARP_ROWS rows (lm_head); below, one row (more blocks)
SPLIT_BELOW_N = 1024  # N under which a row's K is split over the block's warps (the router: N = E = 32)
UNROLL = 2  # words of a row a lane loads before using them (bytes in flight: UNROLL x 8 a lane and row)
K_CHUNK = 2048  # x columns staged in shared memory at a time (a multiple of 4)
WIDEN_THREADS = 256
_GEMV_MAX_THREADS = 256
_ACC = WARP_ROWS * MAX_ROWS
_WORDS = WARP_ROWS * UNROLL


@cuda.jit(cache=True)
def _gemv_kernel(x, words, bias, residual, add_residual, norm, eps, normalize, normed, warp_rows, out):
    """Block (lanes, rows of lanes); each row of `lanes` threads (a warp, or several for matrices of
    few rows, where a warp alone would walk its whole row one load's latency after another) computes
    `warp_rows` neighbouring output rows for every token row.

    x is staged in shared memory K_CHUNK columns at a time, 16-byte aligned. Lane L reads words
    i = L, L + lanes, ... of each row (4 weights, 8 bytes each): a warp reads 256 contiguous bytes of a
    row a load, UNROLL loads of each row issued before any is used, and reads x[4i .. 4i + 3] as one
    16-byte load (the 8 lanes of a load's phase read 128 contiguous bytes: no bank conflicts).
    Indices are unsigned (no negative-index wraparound in the loop).
    With add_residual, residual [T, N] is added to the outputs (a transformer block's skip
    connection, one launch fewer than adding after).
    With normalize, the product is of rmsnorm(x) = norm * x / rms(x) (norm [K]; rms(x) = sqrt(mean(x**2)
    + eps) of each token row): x is staged times norm while each thread sums the squares of the values it
    stages, and the row sums are scaled by 1 / rms(x) at the end (the block's threads hold all of x
    between them). Block 0 also writes the normalized rows to normed [T, K], for the other readers of
    rmsnorm(x): the MoE router's GEMV fills them for the experts."""
    xs = cuda.shared.array((MAX_ROWS, K_CHUNK), np.float32, alignment=SHARED_ALIGN)
    partial = cuda.shared.array(_GEMV_MAX_THREADS, np.float32)
    acc = cuda.local.array(_ACC, np.float32)  # [row of the warp, token row]
    wv = cuda.local.array(_WORDS, np.uint64)  # [row of the warp, unrolled word]
    scale = cuda.local.array(MAX_ROWS, np.float32)  # [token row]: x's staged squares summed, then 1 / rms(x)
    v4 = cuda.local.array(4, np.float32)  # 4 values of x being staged
    lane, warp = cuda.threadIdx.x, cuda.threadIdx.y
    lanes, warps = cuda.blockDim.x, cuda.blockDim.y
    tid, threads = warp * lanes + lane, lanes * warps
    T = x.shape[0]
    N, KW = words.shape
    first = (cuda.blockIdx.x * warps + warp) * warp_rows
    last = min(first + warp_rows, N) - 1  # rows past N read this row (their sums are not written)
    for i in range(_ACC):
        acc[i] = 0
    for t in range(MAX_ROWS):
        scale[t] = 0
    for k0 in range(0, 4 * KW, K_CHUNK):
        kc = min(K_CHUNK, 4 * KW - k0)
        i = np.uint32(tid)
        while i < np.uint32(kc // 4):  # a thread stages 4 values of each token row: one 16-byte store each
            k = np.uint32(k0) + i * np.uint32(4)
            for t in range(MAX_ROWS):
                if t < T:
                    for j in range(4):
                        v4[j] = x[t, k + np.uint32(j)]
                    if normalize:
                        for j in range(4):
                            scale[t] += v4[j] * v4[j]
                            v4[j] *= norm[k + np.uint32(j)]
                    for j in range(4):
                        xs[t, np.uint64(i * np.uint32(4) + np.uint32(j))] = v4[j]
            i = np.uint32(i + np.uint32(threads))  # 32-bit counters: Numba's range() counts in 64 bits, with checks
        cuda.syncthreads()
        w0, wc = np.uint32(k0 // 4), np.uint32(kc // 4)  # the chunk's first word, its words a row
        for c in range(lane, kc // 4, lanes * UNROLL):  # inside: fixed trip counts, so acc and wv stay in registers
            u = np.uint32(c)
            for rr in range(WARP_ROWS):
                if rr < warp_rows:
                    row = words[np.uint32(min(first + rr, last))]
                    for j in range(UNROLL):
                        i = u + np.uint32(j * lanes)
                        wv[rr * UNROLL + j] = row[w0 + i] if i < wc else np.uint64(0)
            for j in range(UNROLL):
                base = np.uint64((u + np.uint32(j * lanes)) * np.uint32(4))
                for t in range(MAX_ROWS):
                    if t < T and u + np.uint32(j * lanes) < wc:
                        x0, x1 = xs[t, base], xs[t, base + np.uint64(1)]
                        x2, x3 = xs[t, base + np.uint64(2)], xs[t, base + np.uint64(3)]
                        for rr in range(WARP_ROWS):
                            if rr < warp_rows:
                                wd = wv[rr * UNROLL + j]
                                lo = np.uint32(wd & np.uint64(0xFFFFFFFF))
                                hi = np.uint32(wd >> np.uint64(32))
                                a = rr * MAX_ROWS + t  # four FFMA into the accumulator
                                acc[a] += bf16_lo(lo) * x0
                                acc[a] += bf16_hi(lo) * x1
                                acc[a] += bf16_lo(hi) * x2
                                acc[a] += bf16_hi(hi) * x3
        cuda.syncthreads()
    for t in range(MAX_ROWS):
        if t < T:  # the same for the whole block, as block_sum needs
            if normalize:
                scale[t] = np.float32(1) / math.sqrt(block_sum(partial, scale[t], tid, threads) / np.float32(4 * KW)
                                                     + eps)
                if cuda.blockIdx.x == 0:
                    for i in range(tid, 4 * KW, threads):
                        normed[t, i] = norm[i] * (x[t, i] * scale[t])
            else:
                scale[t] = 1
    for rr in range(WARP_ROWS):
        if rr < warp_rows:  # the same for the whole block, as row_sum needs
            n = first + rr
            for t in range(MAX_ROWS):
                if t < T:
                    total = row_sum(partial, acc[rr * MAX_ROWS + t], lane, warp, lanes)
                    if lane == 0 and n < N:
                        y = total * scale[t] + bias[n]
                        out[t, n] = residual[t, n] + y if add_residual else y


@cuda.jit(cache=True)
def _widen_rows_kernel(w, rows, out):
    """Grid (rows, column blocks): out[i, k] = float32 of bf16 bits w[rows[i], k] (rows on the grid's x,
    which holds 2**31 - 1 blocks where y holds 65535: a prompt's tokens)."""
    i = cuda.blockIdx.x
    k = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
    if k < w.shape[1]:
        out[i, k] = bf16_lo(w[rows[i], k])


def gemv(x, w_bits, bias, out, residual=None, norm=None):
    """out [T, N] = x [T, K] f32 @ W.T + bias [N] f32 (+ residual [T, N] f32), W [N, K] bf16 bits
    (uint16, K a multiple of 4), T <= MAX_ROWS. With norm = (weight [K] f32, eps, normed [T, K] f32),
    of rmsnorm(x, weight, eps) instead of x, which is also written to normed."""
    T, K = x.shape
    N = w_bits.shape[0]
    check(T <= MAX_ROWS and K % 4 == 0 and x.dtype == np.float32 and w_bits.shape == (N, K)
          and w_bits.dtype == np.uint16 and bias.shape == (N,) and bias.dtype == np.float32
          and out.shape == (T, N) and out.dtype == np.float32 and x.flags.c_contiguous and w_bits.flags.c_contiguous,
          "bf16 gemv", x=x, w=w_bits, bias=bias, out=out)
    check(GEMV_LANES * GEMV_WARPS <= _GEMV_MAX_THREADS and K_CHUNK % 4 == 0,
          "bf16 gemv block", lanes=GEMV_LANES, warps=GEMV_WARPS, chunk=K_CHUNK)
    if norm is None:  # arrays of the right types, which the kernel reads only with the flag
        weight, eps, normed, normalize = bias, 0.0, out, False
    else:
        (weight, eps, normed), normalize = norm, True
        check(weight.shape == (K,) and weight.dtype == np.float32 and normed.shape == (T, K)
              and normed.dtype == np.float32, "bf16 gemv's norm", x=x, weight=weight, normed=normed)
    warp_rows = WARP_ROWS if N >= WARP_ROWS_FROM_N else 1
    split = GEMV_WARPS if N < SPLIT_BELOW_N else 1  # warps a row
    block = (GEMV_LANES * split, GEMV_WARPS // split)
    grid = -(-N // (block[1] * warp_rows))
    _gemv_kernel[grid, block, stream_of(out)](x, w_bits.view(np.uint64), bias, *residual_args(residual, out),
                                              weight, np.float32(eps), normalize, normed, warp_rows, out)
    return out


def widen_rows(w_bits, rows, out):
    """out [R, K] f32 = W[rows] for W [V, K] bf16 bits and rows [R] int."""
    R = rows.shape[0]
    check(w_bits.dtype == np.uint16 and w_bits.ndim == 2 and out.shape == (R, w_bits.shape[1])
          and out.dtype == np.float32, "bf16 widen_rows", w=w_bits, rows=rows, out=out)
    if R:
        grid = (R, (w_bits.shape[1] + WIDEN_THREADS - 1) // WIDEN_THREADS)
        _widen_rows_kernel[grid, WIDEN_THREADS, stream_of(out)](w_bits, rows, out)
    return out
