"""Attention with sinks, GQA, causal and sliding-window masks on the GPU (online softmax).

One launcher serves prefill (many queries) and decode (one query, long KV): the keys are cut into
`splits` ranges (flash-decoding), so that one query still fills the GPU.

  _partial_kernel  block (query tile, kv head g, split): its rows are the tile's queries times the
                   H/G query heads that read kv head g (decode: the 8 heads of 20b's group), so each
                   key is loaded once for all of them. Keys come KEYS at a time: their positions
                   first (a chunk that no row can see, past the causal edge or outside the window,
                   is skipped without loading), then keys and values into shared memory, coalesced;
                   scores for every (row, key), a running max m and sum l per row, and the outputs
                   of every (row, dimension). Both products are register-tiled as in a matmul: a
                   thread computes SCORE_ROWS x SCORE_KEYS scores from that many q and k values a
                   dimension, and accumulates OUT_ROWS x OUT_DIMS outputs from that many weights and
                   values a key. q and k are staged dimension-major, and a thread's rows, keys and
                   dimensions sit side by side in their tiles, so each 4 values are one 16-byte
                   shared load: ~0.1 loads an FMA (bench/NOTES.md, attention v5)
  _combine_kernel  block (t, h): merges the splits and the sink: m = max(sink, m_i),
                   out = sum_i acc_i e^(m_i - m) / (sum_i l_i e^(m_i - m) + e^(sink - m))
A key slot whose position is negative is empty and never seen. The NumPy reference is
attention.attention_ref.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from .common_cuda import SHARED_ALIGN, array_module, check, power_of_two, stream_of

THREADS = 128  # threads per block of the partial kernel: a multiple of the head dim and of KEYS
ROWS = 64  # query rows (queries x heads of one kv group) of one block
KEYS = 32  # keys staged in shared memory at a time
KEYS_PER_SPLIT = 256  # keys one block walks, unless that would need too many partial results
MIN_SPLITS = 64  # short contexts still split (a chunk of keys each, at least), so that one query's
                 # few kv heads make enough blocks: 8 kv heads x 64 splits = 512, ~4 an SM (a decode
                 # block keeps only 16 of its threads busy in the products: it needs neighbours)
MAX_PARTIALS = 1 << 16  # splits * T * H: bounds the scratch memory (MAX_PARTIALS * Dh floats)
MAX_DH = 64  # head dims the shared tiles hold (gpt-oss: 64)
SCORE_ROWS, SCORE_KEYS = 4, 4  # the scores a thread computes per chunk: rows x keys, from registers
OUT_ROWS, OUT_DIMS = 8, 4  # the outputs a thread accumulates: rows x dimensions, in registers
# The product loops take DIM_STEP dimensions (scores) and KEY_STEP keys (outputs) a pass, unrolled, with
# 64-bit shared-memory indices: a pass's loads share one address and differ by immediate offsets (with
# 32-bit indices, each load's address was an IMAD and a LEA). More a pass: LLVM stops unrolling.
DIM_STEP, KEY_STEP = 4, 2
_ROWS_Q, _KEYS_T = ROWS + 4, KEYS + 4  # q and k tiles dimension-major, rows padded by 16 bytes
_ROWS_PADDED = ROWS + 4  # the weights p, key-major: rows padded by 16 bytes
_KEY_GROUPS = KEYS // SCORE_KEYS  # the threads that share a row's scores


@cuda.jit(device=True, inline=True)
def _visible(key_pos, query_pos, window):
    return key_pos >= 0 and key_pos <= query_pos and (window == 0 or key_pos > query_pos - window)


@cuda.jit(cache=True)
def _partial_kernel(q, k, v, q_pos, k_pos, window, scale, queries, keys_per_split, m_out, l_out, acc_out):
    """m_out, l_out [splits, T, H] and acc_out [splits, T, H, Dh]: this block's running max, sum
    and unnormalised output per row (m = -inf and l = 0 when it saw no visible key). Row r is
    query t0 + r // R of head g * R + r % R (R = H / G, `queries` per tile). k and v come flat
    ([S * G * Dh], k[s, g, d] at (s * G + g) * Dh + d)."""
    qs = cuda.shared.array((MAX_DH, _ROWS_Q), np.float32, alignment=SHARED_ALIGN)  # q^T: a dim's rows side by side
    ks = cuda.shared.array((MAX_DH, _KEYS_T), np.float32, alignment=SHARED_ALIGN)  # k^T
    vs = cuda.shared.array((KEYS, MAX_DH), np.float32, alignment=SHARED_ALIGN)
    p = cuda.shared.array((KEYS, _ROWS_PADDED), np.float32, alignment=SHARED_ALIGN)  # exp(score - m), key-major
    part = cuda.shared.array((ROWS, _KEY_GROUPS), np.float32)  # a row's max, then sum, of each key group
    kp = cuda.shared.array(KEYS, np.int64)
    row_pos = cuda.shared.array(ROWS, np.int64)
    m = cuda.shared.array(ROWS, np.float32)
    l = cuda.shared.array(ROWS, np.float32)
    rescale = cuda.shared.array(ROWS, np.float32)
    seen = cuda.shared.array(2, np.int32)  # per chunk parity: does any row see a key of the chunk
    acc = cuda.local.array((OUT_ROWS, OUT_DIMS), np.float32)
    score = cuda.local.array((SCORE_ROWS, SCORE_KEYS), np.float32)
    qa = cuda.local.array(SCORE_ROWS, np.float32)
    kb = cuda.local.array(SCORE_KEYS, np.float32)
    va = cuda.local.array(OUT_DIMS, np.float32)
    kd = cuda.local.array(4, np.float32)  # 4 keys' values of one dimension, staged
    tile, g, split = cuda.blockIdx.x, cuda.blockIdx.y, cuda.blockIdx.z
    tid, nt = cuda.threadIdx.x, cuda.blockDim.x
    T, H, Dh = q.shape
    S = k_pos.shape[0]
    R = H // (k.shape[0] // (S * Dh))
    rows, t0 = queries * R, tile * queries
    d = tid % Dh  # the dimension this thread stages (THREADS % Dh == 0): no division in the loops
    for r in range(tid // Dh, ROWS, nt // Dh):  # rows past `rows` stay 0 (score threads read them)
        t = t0 + r // R
        qs[d, r] = q[t, g * R + r % R, d] * scale if r < rows and t < T else np.float32(0)
    for r in range(tid, ROWS, nt):
        t = t0 + r // R
        row_pos[r] = q_pos[t] if r < rows and t < T else -1  # a row past the last query sees nothing
        m[r] = -math.inf
        l[r] = 0
        rescale[r] = 0
    for i in range(tid, KEYS * _ROWS_PADDED, nt):
        p[i // _ROWS_PADDED, i % _ROWS_PADDED] = 0
    if tid < 2:
        seen[tid] = 0
    for a in range(OUT_ROWS):
        for c in range(OUT_DIMS):
            acc[a, c] = 0
    cuda.syncthreads()
    first, last = row_pos[0], row_pos[0]  # the tile's query positions span [first, last]
    for r in range(1, rows):
        if row_pos[r] >= 0:
            first, last = min(first, row_pos[r]), max(last, row_pos[r])
    # scores: thread (sr, kg) has rows SCORE_ROWS * sr + a and keys SCORE_KEYS * kg + b; outputs: thread
    # (dg, orow) has dimensions OUT_DIMS * dg + c and rows OUT_ROWS * orow + a: each side by side in its
    # tile, one 16-byte load (unsigned indices: no wraparound checks). Rows past `rows` (up to ROWS) are
    # computed from zeros and weights that stay 0, and never written.
    # Rows are dealt densely, to as few threads as they need: decode's 8 rows take 16 threads of each
    # phase and leave the other warps' issue slots to other blocks, instead of 128 threads a row each.
    urows = np.uint32(rows)  # compared with unsigned rows (uint32 against int64 would compare as float64)
    s_keys = np.uint32(KEYS // SCORE_KEYS)
    s_rows = min(np.uint32(nt) // s_keys, (urows + np.uint32(SCORE_ROWS - 1)) // np.uint32(SCORE_ROWS))
    sr, kg = np.uint32(tid) % s_rows, np.uint32(tid) // s_rows
    scoring = np.uint32(tid) < s_rows * s_keys
    dims = np.uint32(Dh // OUT_DIMS)
    o_rows = min(np.uint32(nt) // dims, (urows + np.uint32(OUT_ROWS - 1)) // np.uint32(OUT_ROWS))
    dg, orow = np.uint32(tid) % dims, np.uint32(tid) // dims
    accumulating = np.uint32(tid) < o_rows * dims
    row0, key0 = np.uint32(SCORE_ROWS) * sr, np.uint32(SCORE_KEYS) * kg  # this thread's first score row and key
    dim0, orow0 = np.uint32(OUT_DIMS) * dg, np.uint32(OUT_ROWS) * orow  # and first output dimension and row
    last_row = urows - np.uint32(1)  # score rows past `rows` are masked as the last row
    ud = np.uint32(d)
    row_len = np.uint32(k.shape[0] // S)  # a key's row of kv heads in the flat k and v
    step = np.uint32(nt // Dh * 4)  # keys a pass of the block's threads stages
    begin = split * keys_per_split
    end = min(S, begin + keys_per_split)
    for c0 in range(begin, end, KEYS):
        parity = (c0 // KEYS) % 2
        if tid < KEYS:
            kp[tid] = k_pos[c0 + tid] if c0 + tid < end else -1
            pos = kp[tid]
            if pos >= 0 and pos <= last and (window == 0 or pos > first - window):  # some row may see it
                seen[parity] = 1
        cuda.syncthreads()
        if seen[parity]:  # the same for every thread of the block
            # A thread stages keys u .. u + 3 of dimension d: k's four are one 16-byte store into the
            # transposed tile (a store a key would be 4-way bank conflicts), v's four go to four rows.
            # 32-bit counters (Numba's range() counts in 64 bits, with checks); at: k[c0 + u, g, d] in
            # the flat k and v
            u = np.uint32(tid // Dh) * np.uint32(4)
            at = np.uint32(np.uint32(c0) * row_len + u * row_len + np.uint32(g * Dh + d))
            keys = np.uint32(min(KEYS, end - c0))
            while u < np.uint32(KEYS):
                for b in range(4):
                    inside, key_at = u + np.uint32(b) < keys, at + np.uint32(b) * row_len
                    kd[b] = k[key_at] if inside else np.float32(0)
                    vs[u + np.uint32(b), ud] = v[key_at] if inside else np.float32(0)
                for b in range(4):
                    ks[np.uint64(ud), np.uint64(u + np.uint32(b))] = kd[b]
                u = np.uint32(u + step)
                at = np.uint32(at + step * row_len)
            cuda.syncthreads()
            if scoring:
                for a in range(SCORE_ROWS):
                    for b in range(SCORE_KEYS):
                        score[a, b] = 0
                for d0 in range(0, Dh, DIM_STEP):
                    for dd in range(DIM_STEP):  # a fixed count: the dimension is an offset in the load
                        u = np.uint64(d0 + dd)
                        for a in range(SCORE_ROWS):
                            qa[a] = qs[u, np.uint64(row0 + np.uint32(a))]
                        for b in range(SCORE_KEYS):
                            kb[b] = ks[u, np.uint64(key0 + np.uint32(b))]
                        for a in range(SCORE_ROWS):
                            for b in range(SCORE_KEYS):
                                score[a, b] += qa[a] * kb[b]
                for a in range(SCORE_ROWS):  # masked scores to -inf, and each row's max over this thread's keys
                    r = min(row0 + np.uint32(a), last_row)
                    top = np.float32(-math.inf)
                    for b in range(SCORE_KEYS):
                        if not _visible(kp[key0 + np.uint32(b)], row_pos[r], window):
                            score[a, b] = -math.inf
                        top = max(top, score[a, b])
                    if row0 + np.uint32(a) < urows:
                        part[r, kg] = top
            cuda.syncthreads()
            for r in range(tid, rows, nt):  # a thread a row: the new running max
                m_new = m[r]
                for i in range(s_keys):
                    m_new = max(m_new, part[r, i])
                rescale[r] = math.exp(m[r] - m_new) if m[r] > -math.inf else np.float32(0)
                m[r] = m_new
            cuda.syncthreads()
            if scoring:  # the exps where the scores are, and each row's sum over this thread's keys
                for a in range(SCORE_ROWS):
                    r = row0 + np.uint32(a)
                    real, m_r = r < urows, m[r]
                    total = np.float32(0)
                    for b in range(SCORE_KEYS):
                        e = math.exp(score[a, b] - m_r) if real and score[a, b] > -math.inf else np.float32(0)
                        score[a, b] = e
                        total += e
                    if real:
                        part[r, kg] = total
                for b in range(SCORE_KEYS):  # a key's rows side by side, every row: one 16-byte store
                    for a in range(SCORE_ROWS):
                        p[np.uint64(key0 + np.uint32(b)), np.uint64(row0 + np.uint32(a))] = score[a, b]
            cuda.syncthreads()
            for r in range(tid, rows, nt):  # the running sum (part is rewritten only after the chunk's last sync)
                total = np.float32(0)
                for i in range(s_keys):
                    total += part[r, i]
                l[r] = l[r] * rescale[r] + total
            if accumulating:
                for a in range(OUT_ROWS):  # fixed trip counts: acc stays in registers
                    f = rescale[orow0 + np.uint32(a)]
                    for c in range(OUT_DIMS):
                        acc[a, c] *= f
                for j0 in range(0, KEYS, KEY_STEP):
                    for jj in range(KEY_STEP):
                        u = np.uint64(j0 + jj)
                        for c in range(OUT_DIMS):
                            va[c] = vs[u, np.uint64(dim0 + np.uint32(c))]
                        for a in range(OUT_ROWS):
                            w = p[u, np.uint64(orow0 + np.uint32(a))]
                            for c in range(OUT_DIMS):
                                acc[a, c] += w * va[c]
        cuda.syncthreads()
        if tid == 0:
            seen[parity] = 0  # read by everyone before the sync above; next set two chunks on
    uR = np.uint32(R)
    for a in range(OUT_ROWS):  # unrolled (32-bit divisions keep it small): acc stays in registers
        r = orow0 + np.uint32(a)
        t = np.uint32(t0) + r // uR
        if accumulating and r < urows and t < np.uint32(T):
            for c in range(OUT_DIMS):
                acc_out[split, t, np.uint32(g) * uR + r % uR, dim0 + np.uint32(c)] = acc[a, c]
    for r in range(tid, rows, nt):
        t = t0 + r // R
        if t < T:
            m_out[split, t, g * R + r % R] = m[r]
            l_out[split, t, g * R + r % R] = l[r]


@cuda.jit(cache=True)
def _combine_kernel(m_in, l_in, acc_in, sinks, out):
    """Block (t, h), thread d < Dh: out[t, h, d] from the splits' partial results and the sink."""
    t, h, d = cuda.blockIdx.x, cuda.blockIdx.y, cuda.threadIdx.x  # tokens on the grid's x (2**31 - 1 blocks)
    if d >= out.shape[2]:
        return
    m = sinks[h]
    for i in range(m_in.shape[0]):
        m = max(m, m_in[i, t, h])
    denom = math.exp(sinks[h] - m)
    acc = np.float32(0)
    for i in range(m_in.shape[0]):
        if m_in[i, t, h] > -math.inf:
            f = math.exp(m_in[i, t, h] - m)
            denom += l_in[i, t, h] * f
            acc += acc_in[i, t, h, d] * f
    out[t, h, d] = acc / denom


def fits(H: int, G: int, Dh: int) -> bool:
    """Whether the kernels take H query heads over G key/value heads of Dh dimensions (gpt-oss: 64 over
    8 of 64): a head dim that divides THREADS, up to MAX_DH, and up to ROWS query heads a kv head."""
    return (H % G == 0 and H // G <= ROWS and Dh <= MAX_DH and Dh % OUT_DIMS == 0 and THREADS % Dh == 0
            and Dh % DIM_STEP == 0 and THREADS * OUT_ROWS >= ROWS * (Dh // OUT_DIMS))


def attention(q, k, v, q_pos, k_pos, sinks, window: int | None, scale: float, out):
    """out [T, H, Dh] f32 = softmax-with-sinks attention of q [T, H, Dh] over k, v [S, G, Dh] (f32).

    Query t sees key s when 0 <= k_pos[s] <= q_pos[t] and, with a window W, k_pos[s] > q_pos[t] - W;
    query head h reads kv head h // (H / G); sinks [H] f32."""
    T, H, Dh = q.shape
    S, G = k.shape[:2]
    check(fits(H, G, Dh) and ROWS % OUT_ROWS == 0 and ROWS % SCORE_ROWS == 0 and KEYS % 4 == 0 and KEYS % KEY_STEP == 0
          and KEYS % SCORE_KEYS == 0 and THREADS % (KEYS // SCORE_KEYS) == 0
          and THREADS * SCORE_ROWS >= ROWS * (KEYS // SCORE_KEYS) and KEYS <= THREADS
          and k.shape == (S, G, Dh) and v.shape == (S, G, Dh) and q_pos.shape == (T,) and k_pos.shape == (S,)
          and sinks.shape == (H,) and out.shape == (T, H, Dh) and k.size < 2 ** 32
          and q.dtype == k.dtype == v.dtype == sinks.dtype == out.dtype == np.float32,
          "attention", q=q, k=k, v=v, q_pos=q_pos, k_pos=k_pos, sinks=sinks, out=out)
    queries = max(1, min(T, ROWS // (H // G)))  # per block
    wanted = max(-(-S // KEYS_PER_SPLIT), min(MIN_SPLITS, -(-S // KEYS)))
    splits = max(1, min(wanted, MAX_PARTIALS // (T * H)))
    keys_per_split = max(1, -(-S // splits))
    splits = max(1, -(-S // keys_per_split))
    xp = array_module(out)
    m = xp.empty((splits, T, H), np.float32)
    l = xp.empty((splits, T, H), np.float32)
    acc = xp.empty((splits, T, H, Dh), np.float32)
    grid = (-(-T // queries), G, splits)
    k, v = k.reshape(-1), v.reshape(-1)  # flat: the staging loop's addresses are 32-bit offsets
    _partial_kernel[grid, THREADS, stream_of(out)](q, k, v, q_pos, k_pos, int(window or 0), np.float32(scale),
                                                   queries, keys_per_split, m, l, acc)
    _combine_kernel[(T, H), power_of_two(Dh), stream_of(out)](m, l, acc, sinks, out)
    return out
