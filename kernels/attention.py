"""Attention with per-head sinks, GQA and an optional sliding window: the NumPy reference and the
Numba CPU kernel for a few queries.

Each query head h has a sink logit s_h: a virtual key that takes part in the softmax but has no value,
so a head can put probability on "nothing". In online-softmax form: start the running max at s_h and
add exp(s_h - m) to the denominator. A key slot whose position is negative is empty and never seen.

On the CPU, prefill (many queries) takes the reference in passes of queries, each over the keys its
queries can see, and its matrix products go to BLAS. Decode (a few queries) takes the kernel, which
runs without waking BLAS's threads, up to KERNEL_MAX_KEYS cached keys; over a longer cache the
reference's BLAS products read the keys and values faster than the kernel's loops and win despite it.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

_MAX_SCORES = 1 << 24  # score elements per query chunk (64 MiB of float32)
KERNEL_MAX_QUERIES = 8  # up to this many queries the Numba kernel runs, above it the reference
KERNEL_MAX_KEYS = 4096  # ... over up to this many keys: from 8k keys the reference decodes faster (bench/NOTES.md)
QUERY_PASS = 128  # queries per pass of the reference (prefill): 64-256 run even at 1-2k tokens, 32 and 512 slower


def attention_ref(q: np.ndarray, k: np.ndarray, v: np.ndarray, q_pos: np.ndarray, k_pos: np.ndarray,
                  sinks: np.ndarray, window: int | None, scale: float) -> np.ndarray:
    """q [T, H, Dh], k/v [S, G, Dh], positions q_pos [T], k_pos [S], sinks [H] -> [T, H, Dh].

    Query t sees key s when 0 <= k_pos[s] <= q_pos[t] and, with a window W, k_pos[s] > q_pos[t] - W.
    Query head h reads kv head h // (H / G). The queries go in passes of at most QUERY_PASS (fewer if
    their scores would pass _MAX_SCORES), each over only the keys one of its queries can see: a causal
    prefill scores about half the key-query pairs, a sliding layer about W of them per query.
    """
    T, H, Dh = q.shape
    S, G, _ = k.shape
    R = H // G
    out = np.empty((T, H, Dh), dtype=np.float32)
    chunk = min(QUERY_PASS, max(1, _MAX_SCORES // max(1, H * S)))
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        first, last = q_pos[t0:t1].min(), q_pos[t0:t1].max()
        seen = (k_pos >= 0) & (k_pos <= last)
        if window is not None:
            seen &= k_pos > first - window
        if not seen.any():  # every probability on the sink, which has no value
            out[t0:t1] = 0
            continue
        keys = slice(None) if seen.all() else np.flatnonzero(seen)  # [S'] the slots this pass can see
        p, _ = probabilities_ref(q[t0:t1], k[keys], q_pos[t0:t1], k_pos[keys], sinks, window, scale)  # [G, R, t, S']
        t = t1 - t0
        o = p.reshape(G, R * t, -1) @ v[keys].transpose(1, 0, 2)  # [G, R * t, Dh]: each value read once
        out[t0:t1] = o.reshape(G, R, t, Dh).transpose(2, 0, 1, 3).reshape(t, H, Dh)
    return out


def probabilities_ref(q: np.ndarray, k: np.ndarray, q_pos: np.ndarray, k_pos: np.ndarray, sinks: np.ndarray,
                      window: int | None, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Attention probabilities [G, R, T, S] over the keys and the sink's share [G, R, T, 1] (the two
    sum to 1 for every query); query head h = g * R + r, R = H / G. One product per kv head scores
    its R query heads for all T queries, so each key is read once."""
    T, H, Dh = q.shape
    S, G, _ = k.shape
    R = H // G
    qg = (q * np.float32(scale)).reshape(T, G, R, Dh).transpose(1, 2, 0, 3).reshape(G, R * T, Dh)  # [G, R * T, Dh]
    scores = (qg @ k.transpose(1, 2, 0)).reshape(G, R, T, S)  # [G, R * T, Dh] @ [G, Dh, S]
    visible = (k_pos[None, :] <= q_pos[:, None]) & (k_pos[None, :] >= 0)  # [T, S]
    if window is not None:
        visible &= k_pos[None, :] > q_pos[:, None] - window
    if not visible.all():
        np.copyto(scores, np.float32(-np.inf), where=~visible)
    sink = sinks.reshape(G, R, 1, 1).astype(np.float32)
    m = np.maximum(scores.max(axis=-1, keepdims=True), sink)  # the running max starts at the sink
    p = np.exp(np.subtract(scores, m, out=scores), out=scores)
    p_sink = np.exp(sink - m)
    denom = p.sum(axis=-1, keepdims=True) + p_sink
    p /= denom
    return p, p_sink / denom


def attention(q, k, v, q_pos, k_pos, sinks, window: int | None, scale: float) -> np.ndarray:
    """attention_ref's result; a few queries over a cache of at most KERNEL_MAX_KEYS go to the Numba kernel."""
    if q.shape[0] > KERNEL_MAX_QUERIES or k.shape[0] > KERNEL_MAX_KEYS:
        return attention_ref(q, k, v, q_pos, k_pos, sinks, window, scale)
    out = np.empty(q.shape, np.float32)
    _attention_kernel(np.ascontiguousarray(q, dtype=np.float32), k, v, np.asarray(q_pos, np.int64),
                      np.asarray(k_pos, np.int64), sinks, int(window or 0), np.float32(scale), out)
    return out


@njit(parallel=True, fastmath={"reassoc", "contract"}, cache=True)  # not "ninf": masked scores are -inf
def _attention_kernel(q, k, v, q_pos, k_pos, sinks, window, scale, out):
    """out [T, H, Dh]; one (query t, kv head g) per iteration: its R = H / G query heads score every
    visible key (read once for the R heads), then the probabilities weigh the values.
    window 0 means no window."""
    T, H, Dh = q.shape
    S, G = k.shape[0], k.shape[1]
    R = H // G
    for i in prange(T * G):
        t = i // G
        g = i % G
        qp = q_pos[t]
        p = np.empty((R, S), np.float32)  # scores, then probabilities
        acc = np.zeros((R, Dh), np.float32)
        for s in range(S):
            kp = k_pos[s]
            visible = kp >= 0 and kp <= qp and (window == 0 or kp > qp - window)
            for r in range(R):
                dot = np.float32(0)
                if visible:
                    for d in range(Dh):
                        dot += q[t, g * R + r, d] * k[s, g, d]
                p[r, s] = dot * scale if visible else -np.inf
        for r in range(R):
            m = sinks[g * R + r]
            for s in range(S):
                m = max(m, p[r, s])
            denom = math.exp(sinks[g * R + r] - m)
            for s in range(S):
                e = math.exp(p[r, s] - m)  # 0 for invisible keys
                p[r, s] = e
                denom += e
            for s in range(S):
                p[r, s] /= denom
        for s in range(S):
            for r in range(R):
                w = p[r, s]
                for d in range(Dh):
                    acc[r, d] += w * v[s, g, d]
        for r in range(R):
            for d in range(Dh):
                out[t, g * R + r, d] = acc[r, d]
