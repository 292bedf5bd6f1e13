"""Attention with sinks, GQA, causal and sliding-window masks on the GPU (online softmax).

One launcher serves prefill (many queries) and decode (one query, long KV): the keys are cut into
`splits` ranges (flash-decoding), so that one query still fills the GPU.

  _partial_kernel  block (query tile, kv head g, split): its rows are the tile's queries times the
                   H/G query heads that read kv head g (decode: the 8 heads of 20b's group), so each
                   key is loaded once for all of them. Keys come KEYS at a time: their positions
                   first (a chunk that no row can see, past the causal edge or outside the window,
                   is skipped without loading), then keys and values into shared memory, coalesced;
                   scores for every (row, key), a running max m and sum l per row, and each thread
                   accumulates its dimension d of several rows in registers
  _combine_kernel  block (h, t): merges the splits and the sink: m = max(sink, m_i),
                   out = sum_i acc_i e^(m_i - m) / (sum_i l_i e^(m_i - m) + e^(sink - m))
A key slot whose position is negative is empty and never seen. The NumPy reference is
attention.attention_ref.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from .common_cuda import array_module, check, power_of_two, stream_of

THREADS = 128  # threads per block of the partial kernel: a multiple of the head dim and of KEYS
ROWS = 64  # query rows (queries x heads of one kv group) of one block
KEYS = 32  # keys staged in shared memory at a time
KEYS_PER_SPLIT = 256  # keys one block walks, unless that would need too many partial results
MIN_SPLITS = 16  # short contexts still split (a chunk of keys each, at least), so that one query's
                 # few kv heads make enough blocks: 8 kv heads x 16 splits = 128 blocks
MAX_PARTIALS = 1 << 16  # splits * T * H: bounds the scratch memory (MAX_PARTIALS * Dh floats)
MAX_DH = 64  # head dims the shared tiles hold (gpt-oss: 64)
_DH_PADDED, _KEYS_PADDED = MAX_DH + 1, KEYS + 1  # shared rows padded, so that a row starts in the next bank
_ROWS_PER_THREAD = ROWS * MAX_DH // THREADS  # the outputs a thread accumulates (row r, its dimension)


@cuda.jit(device=True, inline=True)
def _visible(key_pos, query_pos, window):
    return key_pos >= 0 and key_pos <= query_pos and (window == 0 or key_pos > query_pos - window)


@cuda.jit(cache=True)
def _partial_kernel(q, k, v, q_pos, k_pos, window, scale, queries, keys_per_split, m_out, l_out, acc_out):
    """m_out, l_out [splits, T, H] and acc_out [splits, T, H, Dh]: this block's running max, sum
    and unnormalised output per row (m = -inf and l = 0 when it saw no visible key). Row r is
    query t0 + r // R of head g * R + r % R (R = H / G, `queries` per tile)."""
    qs = cuda.shared.array((ROWS, _DH_PADDED), np.float32)
    ks = cuda.shared.array((KEYS, _DH_PADDED), np.float32)
    vs = cuda.shared.array((KEYS, MAX_DH), np.float32)
    p = cuda.shared.array((ROWS, _KEYS_PADDED), np.float32)  # scores, then exp(score - m)
    kp = cuda.shared.array(KEYS, np.int64)
    row_pos = cuda.shared.array(ROWS, np.int64)
    m = cuda.shared.array(ROWS, np.float32)
    l = cuda.shared.array(ROWS, np.float32)
    rescale = cuda.shared.array(ROWS, np.float32)
    seen = cuda.shared.array(2, np.int32)  # per chunk parity: does any row see a key of the chunk
    acc = cuda.local.array(_ROWS_PER_THREAD, np.float32)
    tile, g, split = cuda.blockIdx.x, cuda.blockIdx.y, cuda.blockIdx.z
    tid, nt = cuda.threadIdx.x, cuda.blockDim.x
    T, H, Dh = q.shape
    S = k.shape[0]
    R = H // k.shape[1]
    rows, t0 = queries * R, tile * queries
    for i in range(tid, rows * Dh, nt):
        r, d = i // Dh, i % Dh
        t = t0 + r // R
        qs[r, d] = q[t, g * R + r % R, d] * scale if t < T else np.float32(0)
    for r in range(tid, rows, nt):
        t = t0 + r // R
        row_pos[r] = q_pos[t] if t < T else -1  # a row past the last query sees nothing
        m[r] = -math.inf
        l[r] = 0
    if tid < 2:
        seen[tid] = 0
    for i in range(acc.shape[0]):
        acc[i] = 0
    cuda.syncthreads()
    first, last = row_pos[0], row_pos[0]  # the tile's query positions span [first, last]
    for r in range(1, rows):
        if row_pos[r] >= 0:
            first, last = min(first, row_pos[r]), max(last, row_pos[r])
    d, j = tid % Dh, tid % KEYS  # this thread's dimension (outputs) and key (scores)
    own, step = tid // Dh, nt // Dh  # this thread accumulates rows own, own + step, ...
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
            for i in range(tid, KEYS * Dh, nt):
                jj, dd = i // Dh, i % Dh
                inside = c0 + jj < end
                ks[jj, dd] = k[c0 + jj, g, dd] if inside else np.float32(0)
                vs[jj, dd] = v[c0 + jj, g, dd] if inside else np.float32(0)
            cuda.syncthreads()
            for r in range(tid // KEYS, rows, nt // KEYS):
                score = np.float32(-math.inf)
                if _visible(kp[j], row_pos[r], window):
                    score = np.float32(0)
                    for dd in range(Dh):
                        score += qs[r, dd] * ks[j, dd]
                p[r, j] = score
            cuda.syncthreads()
            for r in range(tid, rows, nt):
                m_new = m[r]
                for jj in range(KEYS):
                    m_new = max(m_new, p[r, jj])
                total = np.float32(0)
                for jj in range(KEYS):
                    e = math.exp(p[r, jj] - m_new) if p[r, jj] > -math.inf else np.float32(0)
                    p[r, jj] = e
                    total += e
                rescale[r] = math.exp(m[r] - m_new) if m[r] > -math.inf else np.float32(0)
                l[r] = l[r] * rescale[r] + total
                m[r] = m_new
            cuda.syncthreads()
            for i in range(_ROWS_PER_THREAD):  # fixed trip counts: acc stays in registers
                if own + i * step < rows:
                    acc[i] *= rescale[own + i * step]
            for jj in range(KEYS):
                w = vs[jj, d]
                for i in range(_ROWS_PER_THREAD):
                    if own + i * step < rows:
                        acc[i] += p[own + i * step, jj] * w
        cuda.syncthreads()
        if tid == 0:
            seen[parity] = 0  # read by everyone before the sync above; next set two chunks on
    for i in range(_ROWS_PER_THREAD):
        r = own + i * step
        if r < rows and t0 + r // R < T:
            acc_out[split, t0 + r // R, g * R + r % R, d] = acc[i]
    for r in range(tid, rows, nt):
        t = t0 + r // R
        if t < T:
            m_out[split, t, g * R + r % R] = m[r]
            l_out[split, t, g * R + r % R] = l[r]


@cuda.jit(cache=True)
def _combine_kernel(m_in, l_in, acc_in, sinks, out):
    """Block (h, t), thread d < Dh: out[t, h, d] from the splits' partial results and the sink."""
    h, t, d = cuda.blockIdx.x, cuda.blockIdx.y, cuda.threadIdx.x
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


def attention(q, k, v, q_pos, k_pos, sinks, window: int | None, scale: float, out):
    """out [T, H, Dh] f32 = softmax-with-sinks attention of q [T, H, Dh] over k, v [S, G, Dh] (f32).

    Query t sees key s when 0 <= k_pos[s] <= q_pos[t] and, with a window W, k_pos[s] > q_pos[t] - W;
    query head h reads kv head h // (H / G); sinks [H] f32."""
    T, H, Dh = q.shape
    S, G = k.shape[:2]
    check(H % G == 0 and H // G <= ROWS and Dh <= MAX_DH and THREADS % Dh == 0 and THREADS % KEYS == 0
          and k.shape == (S, G, Dh) and v.shape == (S, G, Dh) and q_pos.shape == (T,) and k_pos.shape == (S,)
          and sinks.shape == (H,) and out.shape == (T, H, Dh)
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
    _partial_kernel[grid, THREADS, stream_of(out)](q, k, v, q_pos, k_pos, int(window or 0), np.float32(scale),
                                                   queries, keys_per_split, m, l, acc)
    _combine_kernel[(H, T), power_of_two(Dh), stream_of(out)](m, l, acc, sinks, out)
    return out
