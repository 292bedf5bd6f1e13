"""MXFP4 expert matrices on the GPU: FP4 nibbles and e8m0 scales decoded inside the matmul.

The two products compute, for pairs p = (token, slot) routed to expert e = experts of p,
    out[p, n] = W_e[n] . x[p // rows_per_x] + bias[e, n]
with W_e stored as on disk (blocks uint8 [E, N, K/32, 16], scales uint8 [E, N, K/32]; see mxfp4.py).
`rows_per_x` lets the gate_up projection read each token's row once for its A pairs (A) and the
down projection read the pair's own row (1). Only the selected experts' bytes are read.

  expert_gemv     decode: two output rows per warp, x staged in shared memory, each lane reading
                  8-byte words (a warp reads 256 contiguous bytes a row); the gate_up projection can
                  route its own pairs from the router's logits (no launch of the route kernel)
  expert_matmul   prefill: pairs grouped by expert (moe_cuda.sort_pairs); a block computes a tile of
                  pairs x rows, staging the x tile and the dequantized W tile in shared memory
  dequantize      chosen experts' whole matrices as float32, bf16 or scaled fp16 (largest_scales: each
                  expert's largest scale byte), for cuBLAS products over their pairs (long prompts)
The NumPy references are mxfp4.matmul_ref applied per pair, and mxfp4.dequantize.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from ..fp16x2 import LARGEST_AT
from .common_cuda import (SHARED_ALIGN, MAX_THREADS, bf16_hi, bf16_lo, block_max, check, e8m0_half, fp4_pair_tiny,
                          power_of_two, row_sum, stream_of, swiglu)
from .moe_cuda import MAX_K, rank_top_k, top_k_weight
from .mxfp4 import BLOCK

# Launch shapes (tests shrink them so the simulator covers partial blocks with few threads).
GEMV_LANES = 32  # threads per pair of output rows (a power of two)
GEMV_WARPS = 8  # pairs of output rows per block (the x row is staged once for 16 rows)
GEMV_MAX_K = 4096  # longest x row the GEMV stages in shared memory (gpt-oss: 2880)
_X_PADDED = GEMV_MAX_K + GEMV_MAX_K // 4  # 16 x values, then 4 floats of padding
TILE_THREADS = (16, 16)  # (x: output rows, y: pairs) threads per block; each owns MICRO x MICRO outputs
MICRO = 4
MIN_TILE_PAIRS = 16  # the fewest pair rows of a tile (4 thread rows)
K_STEP = 4  # columns a pass of the tiled matmul's product loop, unrolled (divides 8)
_TILE_MAX = 64  # = 16 * MICRO: shared tiles are sized for the largest block
_TILE_PADDED = _TILE_MAX + 4
DEQUANT_THREADS = 256  # a power of two (largest_scales reduces over its blocks)
LARGEST_BYTES = 16  # scale bytes a thread of largest_scales reads


@cuda.jit(device=True, inline=True)
def _half(word, h):
    """32-bit half h (0: the low one) of a uint64 word: 8 nibbles."""
    return np.uint32((word >> np.uint64(32 * h)) & np.uint64(0xFFFFFFFF))


@cuda.jit(device=True, inline=True)
def _weights(nibbles, j, s):
    """Weights j and j + 4 (j < 4) of 8 nibbles (a uint32) whose block has half-scale s: FP4 x 2**-126
    x 2**127 x s each."""
    pair = fp4_pair_tiny(nibbles, j)
    return bf16_lo(pair) * np.float32(2.0 ** 127) * s, bf16_hi(pair) * np.float32(2.0 ** 127) * s


@cuda.jit(cache=True)
def _gemv_kernel(x, rows_per_x, experts, words, scales, bias, limit, alpha, fuse_swiglu, route, logits, weights, out):
    """Block (lanes, warps) of pair blockIdx.y: each warp computes two neighbouring output rows n, n + 1
    (gate_up's gate and up), so every x value read serves both; words = blocks as uint64 [E, N, K/16].
    With fuse_swiglu, the warp writes swiglu(row n, row n + 1) to out[p, n / 2] instead.
    With route, pair p = t * k + a (k = rows_per_x) first finds its expert, token t's a-th best by
    logits[t] (moe_cuda.rank_top_k: every block of the pair ranks the same), and the pair's first
    block writes it to experts[p] and its softmax weight to weights[t, a], for the down projection
    and the combine.

    The pair's x row is staged in shared memory times 2**64, element k at k + 4 (k // 16). Lane L then
    reads word i = L, L + lanes, ... of each row (16 weights, k = 16i .. 16i + 15): a warp reads 256
    contiguous bytes of a row at a time, and its x values at 20i .. 20i + 15 as four 16-byte loads
    (the 8 lanes of a load's phase start 80 bytes apart: 32 distinct banks).
    Weights are decoded two at a time as FP4 x 2**-126 (fp4_pair_tiny: three operations a weight) and
    multiplied by the staged x, so the products are FP4 x x x 2**-62, normal floats: a word's sum times
    2**63 and half the block's scale is what unscaled products would give, bit for bit. Indices are
    unsigned and the rows are views taken once, so the loop holds no negative-index wraparound or 4-D
    address math (bench/sass.py: 182 instructions a lane for 2 x 8 bytes, 11 a byte; 35 in v2)."""
    xs = cuda.shared.array(_X_PADDED, np.float32, alignment=SHARED_ALIGN)
    partial = cuda.shared.array(MAX_THREADS, np.float32)
    chosen = cuda.shared.array(MAX_K, np.int32)
    chosen_logits = cuda.shared.array(MAX_K, np.float32)
    lane, warp = cuda.threadIdx.x, cuda.threadIdx.y
    lanes, warps = cuda.blockDim.x, cuda.blockDim.y
    p = cuda.blockIdx.y
    N, W = words.shape[1], words.shape[2]
    t, a = p // rows_per_x, p % rows_per_x
    if route:
        rank_top_k(logits[t], rows_per_x, chosen, chosen_logits, warp * lanes + lane, lanes * warps)
        e = chosen[a]
        if cuda.blockIdx.x == 0 and warp == 0 and lane == 0:
            experts[p] = e
            weights[t, a] = top_k_weight(chosen_logits, rows_per_x, a)
    else:
        e = experts[p]
    x_row = x[t]
    i, step = np.uint32(warp * lanes + lane), np.uint32(lanes * warps)
    while i < np.uint32(W):  # a thread stages 16 values (a word's) at a time: four 16-byte stores
        src, dst = i * np.uint32(16), np.uint64(i * np.uint32(20))
        for j in range(16):
            xs[dst + np.uint64(j)] = x_row[src + np.uint32(j)] * np.float32(2.0 ** 64)
        i = np.uint32(i + step)  # 32-bit counters: Numba's range() counts in 64 bits, with checks
    cuda.syncthreads()
    n = 2 * (cuda.blockIdx.x * warps + warp)
    acc0, acc1 = np.float32(0), np.float32(0)
    if n < N:
        m = min(n + 1, N - 1)  # the second row; row n again when N is odd (its result is not written)
        words0, words1, scales0, scales1 = words[e, n], words[e, m], scales[e, n], scales[e, m]
        for i in range(lane, W, lanes):
            u = np.uint32(i)
            w0, w1, base = words0[u], words1[u], np.uint64(u * np.uint32(20))
            s0, s1 = np.float32(0), np.float32(0)
            for h in range(2):  # the word's 32-bit halves
                half0, half1 = _half(w0, h), _half(w1, h)
                for j in range(4):  # unrolled: the shifts in fp4_pair_tiny are constants
                    x_lo, x_hi = xs[base + np.uint64(8 * h + j)], xs[base + np.uint64(8 * h + j + 4)]
                    pair0, pair1 = fp4_pair_tiny(half0, j), fp4_pair_tiny(half1, j)  # nibbles j, j + 4
                    s0 += bf16_lo(pair0) * x_lo
                    s0 += bf16_hi(pair0) * x_hi
                    s1 += bf16_lo(pair1) * x_lo
                    s1 += bf16_hi(pair1) * x_hi
            g = u // np.uint32(2)
            acc0 += s0 * np.float32(2.0 ** 63) * e8m0_half(scales0[g])
            acc1 += s1 * np.float32(2.0 ** 63) * e8m0_half(scales1[g])
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
def _grouped_matmul_kernel(x, rows_per_x, order, offsets, words, scales, bias, out):
    """Grid (row tiles, E, pair tiles), block (bx, by): expert e = blockIdx.y multiplies its pairs
    order[offsets[e] + blockIdx.z * TM ...] (TM = by * MICRO) by its rows blockIdx.x * TN ... (TN = bx * MICRO);
    words = blocks as uint32 [E, N, K/32, 4].

    Per 32-wide K block: stage x and the dequantized W in shared memory, column-major (xs[k, m],
    ws[k, n]), then thread (tx, ty) updates its MICRO x MICRO outputs: pairs MICRO * ty + i, rows
    MICRO * tx + j, side by side in the tiles, so each column's MICRO values are one 16-byte load.
    The product loop takes K_STEP columns a pass with 64-bit shared indices: a pass's loads share one
    address and differ by immediate offsets. Staging without bank conflicts: a warp writes x as 8
    columns of 4 pairs; a thread dequantizes a 4-byte word, columns 8w .. 8w + 7 of row n, into
    ws[8w + j, (n + 8w) mod TN], so the 4 words of a row, written by neighbouring threads, land in
    different banks (the product loop adds the same 8w to its rows). The tile's x rows are looked up
    once, before the K loop (bench/NOTES.md)."""
    xs = cuda.shared.array((32, _TILE_PADDED), np.float32, alignment=SHARED_ALIGN)
    ws = cuda.shared.array((32, _TILE_PADDED), np.float32, alignment=SHARED_ALIGN)
    x_rows = cuda.shared.array(_TILE_MAX, np.int64)  # each pair's row of x; -1 past the expert's pairs
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
    N, G = words.shape[1], words.shape[2]
    for m in range(tid, TM, threads):
        x_rows[m] = order[start + m] // rows_per_x if start + m < end else -1
    for i in range(MICRO):
        for j in range(MICRO):
            acc[i, j] = 0
    cuda.syncthreads()
    step = np.uint32(threads)  # 32-bit counters below: Numba's range() counts in 64 bits, with checks
    rotate = np.uint32(TN - 1)  # TN is a power of two
    pair0, row0 = np.uint64(ty * MICRO), np.uint32(tx * MICRO)  # this thread's first pair and row of the tile
    for g in range(G):
        i = np.uint32(tid)
        while i < np.uint32(TM * 32):  # 32 consecutive i: columns 8c .. 8c + 7 of pairs 4q .. 4q + 3
            r = i // np.uint32(32)
            kk = (r % np.uint32(4)) * np.uint32(8) + i % np.uint32(8)
            m = (r // np.uint32(4)) * np.uint32(4) + (i // np.uint32(8)) % np.uint32(4)
            row = x_rows[m]
            xs[kk, m] = x[np.uint64(row), np.uint64(g * 32) + np.uint64(kk)] if row >= 0 else np.float32(0)
            i = np.uint32(i + step)
        i = np.uint32(tid)
        while i < np.uint32(TN * 4):
            nn, w = i // np.uint32(4), i % np.uint32(4)
            n = np.uint32(n0) + nn
            word, s = np.uint32(0), np.float32(0)
            if n < np.uint32(N):
                word, s = words[e, n, g, w], e8m0_half(scales[e, n, g])
            column = (nn + w * np.uint32(8)) & rotate
            for j in range(4):
                low, high = _weights(word, j, s)
                ws[w * np.uint32(8) + np.uint32(j), column] = low
                ws[w * np.uint32(8) + np.uint32(j + 4), column] = high
            i = np.uint32(i + step)
        cuda.syncthreads()
        for k0 in range(0, 32, K_STEP):  # K_STEP divides 8: a pass stays in one rotated group
            rows = np.uint64((row0 + np.uint32(k0 // 8 * 8)) & rotate)
            for kk in range(K_STEP):
                u = np.uint64(k0 + kk)
                for i in range(MICRO):
                    a[i] = xs[u, pair0 + np.uint64(i)]
                    b[i] = ws[u, rows + np.uint64(i)]
                for i in range(MICRO):
                    for j in range(MICRO):
                        acc[i, j] += a[i] * b[j]
        cuda.syncthreads()
    for i in range(MICRO):
        if start + ty * MICRO + i < end:
            p = order[start + ty * MICRO + i]
            for j in range(MICRO):
                n = n0 + tx * MICRO + j
                if n < N:
                    out[p, n] = acc[i, j] + bias[e, n]


@cuda.jit(device=True, inline=True)
def _dequant_block(words, scales, experts):
    """This thread's block (32 weights) of chosen expert blockIdx.y, from words = blocks as uint64
    [E, N, K/32, 2]: (row n, block g, its four 32-bit quarters, its scale byte), or n = -1 past the
    expert's blocks. Unsigned: no wraparound checks."""
    i = np.uint32(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x)
    G = np.uint32(words.shape[2])
    if i >= np.uint32(words.shape[1]) * G:
        return -1, np.uint32(0), np.uint64(0), np.uint64(0), np.int32(0)
    n, g = i // G, i % G
    e = experts[cuda.blockIdx.y]
    return np.int64(n), g, words[e, n, g, 0], words[e, n, g, 1], np.int32(scales[e, n, g])


@cuda.jit(device=True, inline=True)
def _quarter(word0, word1, q):
    """32-bit quarter q (weights 8q .. 8q + 7) of a block held as two uint64 words."""
    return _half(word0 if q < 2 else word1, q % 2)


@cuda.jit(cache=True)
def _dequantize_kernel(words, scales, experts, out):
    """Grid (block ranges, chosen experts), a thread a block: out[x, n, 32g .. 32g + 31] = block g of row n."""
    n, g, word0, word1, byte = _dequant_block(words, scales, experts)
    if n >= 0:
        s = e8m0_half(byte)
        for q in range(4):
            quarter = _quarter(word0, word1, q)
            for j in range(4):
                low, high = _weights(quarter, j, s)
                out[cuda.blockIdx.y, n, g * np.uint32(32) + np.uint32(8 * q + j)] = low
                out[cuda.blockIdx.y, n, g * np.uint32(32) + np.uint32(8 * q + j + 4)] = high


@cuda.jit(device=True, inline=True)
def _bits16(weight, j, as_fp16):
    """A weight's fp16 bits (rounded to nearest), or its bf16 bits (exact: an FP4 value times a power of
    two has 2 significant bits, and bf16 is a float32's top 16 bits), at bits 16j .. 16j + 15 of a uint64."""
    if as_fp16:
        bits = np.uint32(np.float16(weight).view(np.uint16))
    else:
        bits = weight.view(np.uint32) >> np.uint32(16)
    return np.uint64(bits) << np.uint64(16 * j)


@cuda.jit(cache=True)
def _dequantize_16_kernel(words, scales, experts, largest, as_fp16, out):
    """The same weights as 16-bit floats, four to a uint64 of out [X, N, K/4] (eight 8-byte stores a
    thread): bf16, or with as_fp16 fp16 of the weights times 2**(LARGEST_AT - largest[e]) (fp16x2.py)."""
    n, g, word0, word1, byte = _dequant_block(words, scales, experts)
    if n >= 0:
        if as_fp16:  # FP4 x 2**(byte - largest + 13): up to 6 x 2**13; clipped where it rounds to 0 anyway
            s = e8m0_half(max(byte - largest[experts[cuda.blockIdx.y]] + np.int32(LARGEST_AT), np.int32(0)))
        else:
            s = e8m0_half(byte)
        for q in range(4):
            quarter = _quarter(word0, word1, q)
            first, second = np.uint64(0), np.uint64(0)  # weights 8q .. 8q + 3 and 8q + 4 .. 8q + 7
            for j in range(4):
                low, high = _weights(quarter, j, s)
                first |= _bits16(low, j, as_fp16)
                second |= _bits16(high, j, as_fp16)
            out[cuda.blockIdx.y, n, g * np.uint32(8) + np.uint32(2 * q)] = first
            out[cuda.blockIdx.y, n, g * np.uint32(8) + np.uint32(2 * q + 1)] = second


def _check_experts(x, rows_per_x, blocks, scales, bias, out, P, out_cols=None):
    E, N, G, _ = blocks.shape
    check(x.ndim == 2 and x.shape[1] == G * BLOCK and x.dtype == np.float32 and x.shape[0] * rows_per_x >= P
          and blocks.dtype == np.uint8 and blocks.shape[3] == 16 and scales.shape == (E, N, G)
          and scales.dtype == np.uint8 and bias.shape == (E, N) and bias.dtype == np.float32
          and out.shape == (P, N if out_cols is None else out_cols) and out.dtype == np.float32,
          "mxfp4 experts", x=x, blocks=blocks, scales=scales, bias=bias, out=out)
    check(x.flags.c_contiguous and blocks.flags.c_contiguous, "mxfp4 experts (C-contiguous arrays)",
          x=x, blocks=blocks)


def expert_gemv(x, rows_per_x: int, experts, blocks, scales, bias, out, swiglu=None, route=None):
    """out[p, n] = W_{experts[p]}[n] . x[p // rows_per_x] + bias[experts[p], n] for p < P.

    x [P / rows_per_x, K] f32, experts [P] int32, blocks [E, N, K/32, 16] u8, scales [E, N, K/32] u8,
    bias [E, N] f32, out [P, N] f32 (written; returned). With swiglu = (limit, alpha), out is
    [P, N / 2]: the clamped SwiGLU of each gate (even row) and up (odd row), as moe.swiglu_ref.
    With route = (logits [T, E] f32, weights [T, k] f32), k = rows_per_x and P = T * k, experts is
    written, not read: pair p = t * k + a takes token t's a-th best expert by logits[t], and
    weights[t, a] gets its softmax weight among the k, as moe_cuda.route gives them."""
    P = experts.shape[0]
    E, N = blocks.shape[:2]
    check(x.shape[1] <= GEMV_MAX_K and (swiglu is None or N % 2 == 0) and experts.shape == (P,)
          and experts.dtype == np.int32,
          "mxfp4 expert_gemv (K <= GEMV_MAX_K; with swiglu, an even N)", x=x, experts=experts, blocks=blocks)
    _check_experts(x, rows_per_x, blocks, scales, bias, out, P, out_cols=None if swiglu is None else N // 2)
    limit, alpha = swiglu if swiglu is not None else (0.0, 0.0)
    if route is None:  # arrays of the right types, which the kernel reads only with the flag
        logits, weights = x, out
    else:
        logits, weights = route
        check(logits.shape == (P // rows_per_x, E) and weights.shape == (P // rows_per_x, rows_per_x)
              and P % rows_per_x == 0 and rows_per_x <= min(E, MAX_K) and logits.dtype == weights.dtype == np.float32
              and logits.flags.c_contiguous, "mxfp4 expert_gemv's routing (k = rows_per_x <= MAX_K)",
              logits=logits, weights=weights, experts=experts)
    grid = (-(-N // (2 * GEMV_WARPS)), P)
    _gemv_kernel[grid, (GEMV_LANES, GEMV_WARPS), stream_of(out)](
        x, rows_per_x, experts, blocks.view(np.uint64).reshape(blocks.shape[:2] + (-1,)), scales, bias,
        np.float32(limit), np.float32(alpha), int(swiglu is not None), route is not None, logits, weights, out)
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
    check(bx & (bx - 1) == 0 and 8 % K_STEP == 0, "mxfp4 expert_matmul (TILE_THREADS[0] a power of two)")
    # a tile's pair rows follow the pairs an expert has on average: a 128-token prompt gives 20b's 32
    # experts ~16 pairs each, and 64-row tiles would spend 3/4 of their products on empty rows
    by = min(by, power_of_two(-(-order.shape[0] // (E * MICRO)), lo=MIN_TILE_PAIRS // MICRO))
    grid = ((N + bx * MICRO - 1) // (bx * MICRO), E, max(1, (max_pairs + by * MICRO - 1) // (by * MICRO)))
    words = blocks.view(np.uint32).reshape(E, N, -1, 4)
    _grouped_matmul_kernel[grid, (bx, by), stream_of(out)](x, rows_per_x, order, offsets, words, scales, bias, out)
    return out


def dequantize(blocks, scales, experts, out, largest=None):
    """out [X, N, K] = the weights of experts[x] (experts [X] int32) from blocks [E, N, K/32, 16] u8 and
    scales [E, N, K/32] u8: all chosen experts in one launch, as float32, as bf16 bits when out is
    uint16, or as float16 times 2**(fp16x2.LARGEST_AT - largest[e]) (largest [E] int32 of largest_scales)."""
    E, N, G = blocks.shape[:3]
    X = experts.shape[0]
    check(blocks.shape == (E, N, G, 16) and scales.shape == (E, N, G) and blocks.dtype == scales.dtype == np.uint8
          and experts.shape == (X,) and experts.dtype == np.int32 and out.shape == (X, N, G * BLOCK)
          and out.dtype in (np.float32, np.uint16, np.float16) and out.flags.c_contiguous
          and blocks.flags.c_contiguous
          and (out.dtype != np.float16 or (largest is not None and largest.shape == (E,) and largest.dtype == np.int32)),
          "mxfp4 dequantize", blocks=blocks, scales=scales, experts=experts, out=out, largest=largest)
    if X and N * G:
        launch = (-(-(N * G) // DEQUANT_THREADS), X), DEQUANT_THREADS, stream_of(out)
        words = blocks.view(np.uint64).reshape(E, N, G, 2)
        if out.dtype == np.float32:
            _dequantize_kernel[launch](words, scales, experts, out)
        else:
            as_fp16 = out.dtype == np.float16
            _dequantize_16_kernel[launch](words, scales, experts, largest if as_fp16 else experts, as_fp16,
                                          out.view(np.uint64))
    return out


@cuda.jit(cache=True)
def _largest_scales_kernel(scales, experts, largest):
    """Grid (byte ranges, chosen experts): largest[e] = max(largest[e], the largest scale byte of the
    block's range of expert e = experts[blockIdx.y]), scales as [E, N K/32]; each thread reads
    LARGEST_BYTES bytes (strided over the block), the block's largest goes in by one atomic max."""
    buf = cuda.shared.array(MAX_THREADS, np.float32)
    tid, nt = cuda.threadIdx.x, cuda.blockDim.x
    e = experts[cuda.blockIdx.y]
    row, size = scales[e], np.uint32(scales.shape[1])
    mine = np.float32(0)
    for j in range(LARGEST_BYTES):
        i = np.uint32((cuda.blockIdx.x * LARGEST_BYTES + j) * nt + tid)
        if i < size:
            mine = max(mine, np.float32(row[i]))
    top = block_max(buf, mine, tid, nt)
    if tid == 0:
        cuda.atomic.max(largest, e, np.int32(top))


def largest_scales(scales, experts, largest):
    """largest [E] int32 (zeroed here; returned): largest[e] = the largest scale byte of each chosen
    expert e of experts [X] int32 (scales [E, N, K/32] u8); others stay 0."""
    E = scales.shape[0]
    X = experts.shape[0]
    check(scales.dtype == np.uint8 and scales.ndim == 3 and experts.shape == (X,) and experts.dtype == np.int32
          and largest.shape == (E,) and largest.dtype == np.int32 and scales.flags.c_contiguous,
          "mxfp4 largest_scales", scales=scales, experts=experts, largest=largest)
    largest.fill(0)
    size = scales.shape[1] * scales.shape[2]
    if X and size:
        grid = (-(-size // (DEQUANT_THREADS * LARGEST_BYTES)), X)
        _largest_scales_kernel[grid, DEQUANT_THREADS, stream_of(largest)](scales.reshape(E, size), experts, largest)
    return largest
