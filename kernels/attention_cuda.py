"""Attention with sinks, GQA, causal and sliding-window masks on the GPU (online softmax).

One launcher serves prefill (many queries) and decode (one query, long KV): the keys are cut into
`splits` ranges (flash-decoding), so that one query still fills the GPU.

  _partial_kernel  block (head h, query t, split): walks its keys THREADS at a time; a thread scores
                   one key, the block takes the chunk's max, and thread d accumulates output dim d
                   with the running max m and sum l of exp(score - m)
  _combine_kernel  block (h, t): merges the splits and the sink: m = max(sink, m_i),
                   out = sum_i acc_i e^(m_i - m) / (sum_i l_i e^(m_i - m) + e^(sink - m))
A key slot whose position is negative is empty and never seen. The NumPy reference is
attention.attention_ref.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from .common_cuda import MAX_THREADS, array_module, block_max, check, power_of_two, stream_of

THREADS = 128  # threads per block of the partial kernel (at least the head dim)
KEYS_PER_SPLIT = 256  # keys one block walks, unless that would need too many partial results
MAX_PARTIALS = 1 << 16  # splits * T * H: bounds the scratch memory (MAX_PARTIALS * Dh floats)
_MAX_DH = 256


@cuda.jit
def _partial_kernel(q, k, v, q_pos, k_pos, window, scale, keys_per_split, m_out, l_out, acc_out):
    """m_out, l_out [splits, T, H] and acc_out [splits, T, H, Dh]: this block's running max, sum
    and unnormalised output (m = -inf and l = 0 when it saw no visible key)."""
    qs = cuda.shared.array(_MAX_DH, np.float32)
    p = cuda.shared.array(MAX_THREADS, np.float32)
    buf = cuda.shared.array(MAX_THREADS, np.float32)
    h, t, split = cuda.blockIdx.x, cuda.blockIdx.y, cuda.blockIdx.z
    tid, nt = cuda.threadIdx.x, cuda.blockDim.x
    H, Dh = q.shape[1], q.shape[2]
    S, G = k.shape[0], k.shape[1]
    g = h // (H // G)
    qp = q_pos[t]
    if tid < Dh:
        qs[tid] = q[t, h, tid] * scale
    cuda.syncthreads()
    m = np.float32(-math.inf)
    l = np.float32(0)
    acc = np.float32(0)
    begin = split * keys_per_split
    end = min(S, begin + keys_per_split)
    for c0 in range(begin, end, nt):
        s = c0 + tid
        score = np.float32(-math.inf)
        if s < end:
            kp = k_pos[s]
            if kp >= 0 and kp <= qp and (window == 0 or kp > qp - window):
                score = np.float32(0)
                for d in range(Dh):
                    score += qs[d] * k[s, g, d]
        m_new = max(m, block_max(buf, score, tid, nt))
        p[tid] = math.exp(score - m_new) if score > -math.inf else np.float32(0)
        cuda.syncthreads()
        if tid < Dh and m_new > -math.inf:
            rescale = math.exp(m - m_new) if m > -math.inf else np.float32(0)
            acc *= rescale
            l *= rescale
            for j in range(min(nt, end - c0)):
                acc += p[j] * v[c0 + j, g, tid]
                l += p[j]
        m = m_new
        cuda.syncthreads()
    if tid < Dh:
        acc_out[split, t, h, tid] = acc
    if tid == 0:
        m_out[split, t, h] = m
        l_out[split, t, h] = l


@cuda.jit
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
    check(H % G == 0 and Dh <= _MAX_DH and k.shape == (S, G, Dh) and v.shape == (S, G, Dh)
          and q_pos.shape == (T,) and k_pos.shape == (S,) and sinks.shape == (H,) and out.shape == (T, H, Dh)
          and q.dtype == k.dtype == v.dtype == sinks.dtype == out.dtype == np.float32,
          "attention", q=q, k=k, v=v, q_pos=q_pos, k_pos=k_pos, sinks=sinks, out=out)
    threads = power_of_two(max(THREADS, Dh))
    splits = max(1, min(-(-S // KEYS_PER_SPLIT), MAX_PARTIALS // (T * H)))
    keys_per_split = max(1, -(-S // splits))
    splits = max(1, -(-S // keys_per_split))
    xp = array_module(out)
    m = xp.empty((splits, T, H), np.float32)
    l = xp.empty((splits, T, H), np.float32)
    acc = xp.empty((splits, T, H, Dh), np.float32)
    _partial_kernel[(H, T, splits), threads, stream_of(out)](q, k, v, q_pos, k_pos, int(window or 0), np.float32(scale),
                                             keys_per_split, m, l, acc)
    _combine_kernel[(H, T), power_of_two(Dh), stream_of(out)](m, l, acc, sinks, out)
    return out
