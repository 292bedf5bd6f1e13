"""MXFP4 expert matrices on the GPU: FP4 nibbles and e8m0 scales decoded inside the matmul.

Both kernels compute, for pairs p = (token, slot) routed to expert e = experts of p,
    out[p, n] = W_e[n] . x[p // rows_per_x] + bias[e, n]
with W_e stored as on disk (blocks uint8 [E, N, K/32, 16], scales uint8 [E, N, K/32]; see mxfp4.py).
`rows_per_x` lets the gate_up projection read each token's row once for its A pairs (A) and the
down projection read the pair's own row (1). Only the selected experts' bytes are read.

  expert_gemv     decode: two output rows per warp, x staged in shared memory, each lane reading
                  4-byte words (a warp reads 128 contiguous bytes a row)
  expert_matmul   prefill: pairs grouped by expert (moe_cuda.sort_pairs); a block computes a tile of
                  pairs x rows, staging the x tile and the dequantized W tile in shared memory
  dequantize      one expert's whole matrix as float32, for a cuBLAS matmul over its pairs (long prompts)
The NumPy references are mxfp4.matmul_ref applied per pair, and mxfp4.dequantize.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from .common_cuda import MAX_THREADS, check, e8m0_half, fp4_times2, row_sum, stream_of, swiglu
from .mxfp4 import BLOCK

# Launch shapes (tests shrink them so the simulator covers partial blocks with few threads).
GEMV_LANES = 32  # threads per pair of output rows (a power of two)
GEMV_WARPS = 8  # pairs of output rows per block (the x row is staged once for 16 rows)
GEMV_MAX_K = 4096  # longest x row the GEMV stages in shared memory (gpt-oss: 2880)
_X_PADDED = GEMV_MAX_K + GEMV_MAX_K // 8
TILE_THREADS = (16, 16)  # (x: output rows, y: pairs) threads per block; each owns MICRO x MICRO outputs
MICRO = 4
_TILE_MAX = 64  # = 16 * MICRO: shared tiles are sized for the largest block
DEQUANT_THREADS = 256


@cuda.jit(cache=True)
def _gemv_kernel(x, rows_per_x, experts, words, scales, bias, limit, alpha, fuse_swiglu, out):
    """Block (lanes, warps) of pair blockIdx.y: each warp computes two neighbouring output rows n, n + 1
    (gate_up's gate and up), so every x value read serves both; words = blocks as uint32 [E, N, G, 4].
    With fuse_swiglu, the warp writes swiglu(row n, row n + 1) to out[p, n / 2] instead.

    The pair's x row is staged in shared memory first, element k at k + k // 8. Lane L then reads word
    i = L, L + lanes, ... of each row (8 weights, k = 8i .. 8i + 7): a warp reads 128 contiguous bytes
    of a row at a time, and its 32 lanes read x at 9i + m, 32 distinct banks."""
    xs = cuda.shared.array(_X_PADDED, np.float32)
    partial = cuda.shared.array(MAX_THREADS, np.float32)
    lane, warp = cuda.threadIdx.x, cuda.threadIdx.y
    lanes, warps = cuda.blockDim.x, cuda.blockDim.y
    p = cuda.blockIdx.y
    N, G = words.shape[1], words.shape[2]
    e = experts[p]
    row = p // rows_per_x
    for k in range(warp * lanes + lane, G * BLOCK, lanes * warps):
        xs[k + k // 8] = x[row, k]
    cuda.syncthreads()
    n = 2 * (cuda.blockIdx.x * warps + warp)
    acc0, acc1 = np.float32(0), np.float32(0)
    if n < N:
        second = n + 1 < N
        for i in range(lane, G * 4, lanes):
            g, j = i // 4, i % 4
            w0 = words[e, n, g, j]
            w1 = words[e, n + 1, g, j] if second else np.uint32(0)
            s0, s1 = np.float32(0), np.float32(0)
            for b in range(4):
                lo, hi = xs[9 * i + 2 * b], xs[9 * i + 2 * b + 1]
                byte0, byte1 = (w0 >> (8 * b)) & 0xFF, (w1 >> (8 * b)) & 0xFF
                s0 += fp4_times2(byte0 & 15) * lo + fp4_times2(byte0 >> 4) * hi
                s1 += fp4_times2(byte1 & 15) * lo + fp4_times2(byte1 >> 4) * hi
            acc0 += s0 * e8m0_half(scales[e, n, g])
            if second:
                acc1 += s1 * e8m0_half(scales[e, n + 1, g])
    total0 = row_sum(partial, acc0, lane, warp, lanes)
    total1 = row_sum(partial, acc1, lane, warp, lanes)
    if lane == 0 and n < N:
        if fuse_swiglu:  # N is even
            out[p, n // 2] = swiglu(total0 + bias[e, n], total1 + bias[e, n + 1], limit, alpha)
        else:
            out[p, n] = total0 + bias[e, n]
            if n + 1 < N:
                out[p, n + 1] = total1 + bias[e, n + 1]


@cuda.jit(cache=True)
def _grouped_matmul_kernel(x, rows_per_x, order, offsets, blocks, scales, bias, out):
    """Grid (row tiles, E, pair tiles), block (bx, by): expert e = blockIdx.y multiplies its pairs
    order[offsets[e] + blockIdx.z * TM ...] (TM = by * MICRO) by its rows blockIdx.x * TN ... (TN = bx * MICRO).

    Per 32-wide K block: stage x [TM, 32] and the dequantized W [TN, 32] in shared memory (rows
    padded to 33 words against bank conflicts), then each thread updates its MICRO x MICRO outputs,
    strided by the block shape so that neighbouring threads write neighbouring outputs."""
    xs = cuda.shared.array((_TILE_MAX, 33), np.float32)
    ws = cuda.shared.array((_TILE_MAX, 33), np.float32)
    acc = cuda.local.array((MICRO, MICRO), np.float32)
    a = cuda.local.array(MICRO, np.float32)
    b = cuda.local.array(MICRO, np.float32)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    bx, by = cuda.blockDim.x, cuda.blockDim.y
    tid, threads = ty * bx + tx, bx * by
    TN, TM = bx * MICRO, by * MICRO
    e = cuda.blockIdx.y
    start = offsets[e] + cuda.blockIdx.z * TM
    end = offsets[e + 1]
    if start >= end:  # this expert has fewer pairs: the whole block leaves
        return
    n0 = cuda.blockIdx.x * TN
    N, G = blocks.shape[1], blocks.shape[2]
    for i in range(MICRO):
        for j in range(MICRO):
            acc[i, j] = 0
    for g in range(G):
        for i in range(tid, TM * 32, threads):
            m, kk = i // 32, i % 32
            xs[m, kk] = x[order[start + m] // rows_per_x, g * 32 + kk] if start + m < end else 0
        for i in range(tid, TN * 16, threads):
            nn, j = i // 16, i % 16
            lo, hi = np.float32(0), np.float32(0)
            if n0 + nn < N:
                byte = blocks[e, n0 + nn, g, j]
                s = e8m0_half(scales[e, n0 + nn, g])
                lo, hi = fp4_times2(byte & 15) * s, fp4_times2(byte >> 4) * s
            ws[nn, 2 * j] = lo
            ws[nn, 2 * j + 1] = hi
        cuda.syncthreads()
        for kk in range(32):
            for i in range(MICRO):
                a[i] = xs[ty + i * by, kk]
                b[i] = ws[tx + i * bx, kk]
            for i in range(MICRO):
                for j in range(MICRO):
                    acc[i, j] += a[i] * b[j]
        cuda.syncthreads()
    for i in range(MICRO):
        if start + ty + i * by < end:
            p = order[start + ty + i * by]
            for j in range(MICRO):
                n = n0 + tx + j * bx
                if n < N:
                    out[p, n] = acc[i, j] + bias[e, n]


@cuda.jit(cache=True)
def _dequantize_kernel(blocks, scales, out):
    """Thread per packed byte j of block (n, g): the two weights out[n, 32g + 2j] and out[n, 32g + 2j + 1]."""
    i = cuda.grid(1)
    N, G = blocks.shape[0], blocks.shape[1]
    if i < N * G * 16:
        n, g, j = i // (G * 16), (i // 16) % G, i % 16
        byte = blocks[n, g, j]
        s = e8m0_half(scales[n, g])
        out[n, 32 * g + 2 * j] = fp4_times2(byte & 15) * s
        out[n, 32 * g + 2 * j + 1] = fp4_times2(byte >> 4) * s


def _check_experts(x, rows_per_x, blocks, scales, bias, out, P, out_cols=None):
    E, N, G, _ = blocks.shape
    check(x.ndim == 2 and x.shape[1] == G * BLOCK and x.dtype == np.float32 and x.shape[0] * rows_per_x >= P
          and blocks.dtype == np.uint8 and blocks.shape[3] == 16 and scales.shape == (E, N, G)
          and scales.dtype == np.uint8 and bias.shape == (E, N) and bias.dtype == np.float32
          and out.shape == (P, N if out_cols is None else out_cols) and out.dtype == np.float32,
          "mxfp4 experts", x=x, blocks=blocks, scales=scales, bias=bias, out=out)
    check(x.flags.c_contiguous and blocks.flags.c_contiguous, "mxfp4 experts (C-contiguous arrays)",
          x=x, blocks=blocks)


def expert_gemv(x, rows_per_x: int, experts, blocks, scales, bias, out, swiglu=None):
    """out[p, n] = W_{experts[p]}[n] . x[p // rows_per_x] + bias[experts[p], n] for p < P.

    x [P / rows_per_x, K] f32, experts [P] int, blocks [E, N, K/32, 16] u8, scales [E, N, K/32] u8,
    bias [E, N] f32, out [P, N] f32 (written; returned). With swiglu = (limit, alpha), out is
    [P, N / 2]: the clamped SwiGLU of each gate (even row) and up (odd row), as moe.swiglu_ref."""
    P = experts.shape[0]
    N = blocks.shape[1]
    check(x.shape[1] <= GEMV_MAX_K and (swiglu is None or N % 2 == 0),
          "mxfp4 expert_gemv (K <= GEMV_MAX_K; with swiglu, an even N)", x=x, blocks=blocks)
    _check_experts(x, rows_per_x, blocks, scales, bias, out, P, out_cols=None if swiglu is None else N // 2)
    limit, alpha = swiglu if swiglu is not None else (0.0, 0.0)
    grid = (-(-N // (2 * GEMV_WARPS)), P)
    _gemv_kernel[grid, (GEMV_LANES, GEMV_WARPS), stream_of(out)](
        x, rows_per_x, experts, blocks.view(np.uint32), scales, bias, np.float32(limit), np.float32(alpha),
        int(swiglu is not None), out)
    return out


def expert_matmul(x, rows_per_x: int, order, offsets, max_pairs: int, blocks, scales, bias, out):
    """The same product for pairs grouped by expert: expert e owns pairs order[offsets[e]:offsets[e+1]].

    order [P] int (pair ids), offsets [E + 1] int, max_pairs >= the most pairs of one expert
    (the token count: a token picks an expert at most once); out [R, N] has a row for every pair id
    (R >= P: rows no pair names are left as they are); other arguments as expert_gemv."""
    _check_experts(x, rows_per_x, blocks, scales, bias, out, out.shape[0])
    E, N = blocks.shape[:2]
    check(offsets.shape == (E + 1,), "mxfp4 expert_matmul", offsets=offsets, blocks=blocks)
    bx, by = TILE_THREADS
    grid = ((N + bx * MICRO - 1) // (bx * MICRO), E, max(1, (max_pairs + by * MICRO - 1) // (by * MICRO)))
    _grouped_matmul_kernel[grid, (bx, by), stream_of(out)](x, rows_per_x, order, offsets, blocks, scales, bias, out)
    return out


def dequantize(blocks, scales, out):
    """out [N, K] f32 = one expert's weights from blocks [N, K/32, 16] u8 and scales [N, K/32] u8."""
    N, G = blocks.shape[:2]
    check(blocks.shape == (N, G, 16) and scales.shape == (N, G) and blocks.dtype == scales.dtype == np.uint8
          and out.shape == (N, G * BLOCK) and out.dtype == np.float32 and out.flags.c_contiguous,
          "mxfp4 dequantize", blocks=blocks, scales=scales, out=out)
    n = N * G * 16
    if n:
        _dequantize_kernel[-(-n // DEQUANT_THREADS), DEQUANT_THREADS, stream_of(out)](blocks, scales, out)
    return out
