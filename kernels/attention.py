"""Attention with per-head sinks, GQA and an optional sliding window: the NumPy reference and the
Numba CPU kernels.

Each query head h has a sink logit s_h: a virtual key that takes part in the softmax but has no value,
so a head can put probability on "nothing". In online-softmax form: start the running max at s_h and
add exp(s_h - m) to the denominator. A key slot whose position is negative is empty and never seen.

On the CPU, prefill (many queries) takes the reference's passes of queries, each over the keys its
queries can see, and its matrix products go to BLAS; the softmax between them is a Numba loop (three
vectorized passes over the scores on every core, where NumPy makes six on one). Decode (a few queries)
takes the kernel: it splits the cache into chunks of keys read in memory order, one chunk per thread
at a time, and merges the chunks' softmax parts; it wakes no BLAS thread and beats the reference's
products at every length. Both take exp from _exp_shifted and maxima from _max, which vectorize
(libm's exp and Python's max do not).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

_MAX_SCORES = 1 << 24  # score elements per query chunk (64 MiB of float32)
KERNEL_MAX_QUERIES = 8  # up to this many queries the decode kernel runs, above it the passes
KEY_CHUNK, KEY_CHUNK_MIN = 256, 32  # the kernel's keys per chunk: 256, fewer for 2 chunks a thread, not under 32
QUERY_PASS = 128  # queries per pass (prefill): 64-256 run even at 1-2k tokens, 32 and 512 slower


def attention_ref(q: np.ndarray, k: np.ndarray, v: np.ndarray, q_pos: np.ndarray, k_pos: np.ndarray,
                  sinks: np.ndarray, window: int | None, scale: float) -> np.ndarray:
    """q [T, H, Dh], k/v [S, G, Dh], positions q_pos [T], k_pos [S], sinks [H] -> [T, H, Dh].

    Query t sees key s when 0 <= k_pos[s] <= q_pos[t] and, with a window W, k_pos[s] > q_pos[t] - W.
    Query head h reads kv head h // (H / G). The queries go in passes of at most QUERY_PASS (fewer if
    their scores would pass _MAX_SCORES), each over only the keys one of its queries can see: a causal
    prefill scores about half the key-query pairs, a sliding layer about W of them per query.
    """
    def probabilities(q, k, q_pos, k_pos):
        return probabilities_ref(q, k, q_pos, k_pos, sinks, window, scale)[0], None
    return _in_passes(q, k, v, q_pos, k_pos, window, probabilities)


def _in_passes(q, k, v, q_pos, k_pos, window, weights) -> np.ndarray:
    """attention_ref's passes; `weights(q, k, q_pos, k_pos)` of a pass's queries and the keys they can
    see gives the values' weights [G, R, t, S'] and what to divide each weighted sum by, [G, R, t]
    (None when the weights are probabilities already)."""
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
        w, denominators = weights(q[t0:t1], k[keys], q_pos[t0:t1], k_pos[keys])  # [G, R, t, S'], [G, R, t]
        t = t1 - t0
        o = w.reshape(G, R * t, -1) @ v[keys].transpose(1, 0, 2)  # [G, R * t, Dh]: each value read once
        if denominators is not None:
            o /= denominators.reshape(G, R * t, 1)
        out[t0:t1] = o.reshape(G, R, t, Dh).transpose(2, 0, 1, 3).reshape(t, H, Dh)
    return out


def probabilities_ref(q: np.ndarray, k: np.ndarray, q_pos: np.ndarray, k_pos: np.ndarray, sinks: np.ndarray,
                      window: int | None, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Attention probabilities [G, R, T, S] over the keys and the sink's share [G, R, T, 1] (the two
    sum to 1 for every query); query head h = g * R + r, R = H / G."""
    G, R = k.shape[1], q.shape[1] // k.shape[1]
    scores = scores_ref(q, k, scale)  # [G, R, T, S]
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


def scores_ref(q: np.ndarray, k: np.ndarray, scale: float) -> np.ndarray:
    """scale * q . k for every query head and key: [G, R, T, S]. One product per kv head scores its R
    query heads for all T queries ([G, R * T, Dh] @ [G, Dh, S]), so each key is read once."""
    T, H, Dh = q.shape
    S, G, _ = k.shape
    R = H // G
    qg = (q * np.float32(scale)).reshape(T, G, R, Dh).transpose(1, 2, 0, 3).reshape(G, R * T, Dh)  # [G, R * T, Dh]
    return (qg @ k.transpose(1, 2, 0)).reshape(G, R, T, S)


def attention(q, k, v, q_pos, k_pos, sinks, window: int | None, scale: float) -> np.ndarray:
    """attention_ref's result. Up to KERNEL_MAX_QUERIES queries (decode) go to the Numba kernel; more
    take the reference's passes and products, with the softmax as a Numba loop over the scores."""
    if q.shape[0] > KERNEL_MAX_QUERIES:
        def exponentials(q, k, q_pos, k_pos):
            scores = scores_ref(q, k, scale)  # [G, R, t, S']
            return scores, _softmax_kernel(scores, q_pos, k_pos, sinks, int(window or 0))
        return _in_passes(q, k, v, q_pos, k_pos, window, exponentials)
    S = k.shape[0]
    chunk = max(KEY_CHUNK_MIN, min(KEY_CHUNK, -(-S // (2 * numba.get_num_threads()))))  # 2+ chunks a thread
    out = np.empty(q.shape, np.float32)
    _attention_kernel(np.ascontiguousarray(q, dtype=np.float32), k, v, np.asarray(q_pos, np.int64),
                      np.asarray(k_pos, np.int64), sinks, int(window or 0), np.float32(scale), chunk, out)
    return out


@njit(parallel=True, fastmath={"reassoc", "contract"}, cache=True)  # not "ninf": masked scores are -inf
def _attention_kernel(q, k, v, q_pos, k_pos, sinks, window, scale, chunk, out):
    """out [T, H, Dh], split-K: the cache's slots go in chunks of `chunk` keys, one chunk per iteration
    (all T queries and H heads, so each key and value is read once, in memory order); each chunk keeps
    its own softmax (max, sum of exponentials, weighted values), and a second loop merges the chunks'
    parts per (query, head) with the sink. window 0 means no window."""
    T, H, Dh = q.shape
    S, G = k.shape[0], k.shape[1]
    R = H // G
    C = (S + chunk - 1) // chunk
    top = np.empty((C, T, H), np.float32)  # the chunk's max score, at least the sink logit
    mass = np.empty((C, T, H), np.float32)  # sum over the chunk of exp(score - top)
    part = np.zeros((C, T, H, Dh), np.float32)  # sum over the chunk of exp(score - top) * value
    for c in prange(C):
        s0 = c * chunk
        n = min(S, s0 + chunk) - s0
        p = np.empty((T, H, n), np.float32)  # scores, then exp(score - top)
        for j in range(n):
            kp = k_pos[s0 + j]
            for t in range(T):
                qp = q_pos[t]
                visible = _sees(qp, kp, window)
                for g in range(G):
                    for h in range(g * R, (g + 1) * R):  # the kv head's R query heads
                        dot = np.float32(0)
                        if visible:
                            for d in range(Dh):
                                dot += q[t, h, d] * k[s0 + j, g, d]
                        p[t, h, j] = dot * scale if visible else -np.inf
        for t in range(T):
            for h in range(H):
                m = sinks[h]
                for j in range(n):
                    m = _max(m, p[t, h, j])
                top[c, t, h] = m
                mass[c, t, h] = _exp_shifted(p[t, h], m)
        for j in range(n):
            for t in range(T):
                for g in range(G):
                    for h in range(g * R, (g + 1) * R):
                        w = p[t, h, j]
                        for d in range(Dh):
                            part[c, t, h, d] += w * v[s0 + j, g, d]
    for i in prange(T * H):
        t = i // H
        h = i % H
        m = sinks[h]
        for c in range(C):
            m = max(m, top[c, t, h])
        denom = math.exp(sinks[h] - m)
        acc = np.zeros(Dh, np.float32)
        for c in range(C):
            f = math.exp(top[c, t, h] - m)  # rescales the chunk's part to the common max
            denom += f * mass[c, t, h]
            for d in range(Dh):
                acc[d] += f * part[c, t, h, d]
        for d in range(Dh):
            out[t, h, d] = acc[d] / denom


@njit(parallel=True, fastmath={"reassoc", "contract"}, cache=True)
def _softmax_kernel(scores, q_pos, k_pos, sinks, window):
    """scores [G, R, T, S] of a prefill pass -> in place exp(score - m) over the visible keys (0 for the
    others), m the row's max and at least its head's sink logit; returns the rows' softmax denominators
    [G, R, T] (the sums plus the sink's exp(sink - m)). Three vectorized passes over a row (mask, max,
    exp and sum) on every thread, where NumPy makes six on one. window 0 means no window."""
    G, R, T, S = scores.shape
    denominators = np.empty((G, R, T), np.float32)
    for i in prange(G * R * T):
        g = i // (R * T)
        r = i // T % R
        t = i % T
        row = scores[g, r, t]
        qp = q_pos[t]
        sink = sinks[g * R + r]
        for s in range(S):
            row[s] = row[s] if _sees(qp, k_pos[s], window) else np.float32(-np.inf)
        m = sink
        for s in range(S):  # a loop of its own: with the mask in it, the max does not vectorize
            m = _max(m, row[s])
        denominators[g, r, t] = _exp_shifted(row, m) + math.exp(sink - m)
    return denominators


@njit(inline="always")
def _sees(qp, kp, window) -> bool:
    """Whether the query at position qp sees the key slot at position kp (-1: empty); window 0 means
    none. `&` instead of `and`, so a loop over keys has no branch and vectorizes."""
    lowest = qp - window if window != 0 else -1  # the key before the window (invariant in a loop over keys)
    return (kp >= 0) & (kp <= qp) & (kp > lowest)


_LOG2E = np.float32(1 / math.log(2))
_LN2_HI = np.float32(0.693359375)  # ln 2 = _LN2_HI + _LN2_LO; n * _LN2_HI is exact for |n| < 2**15
_LN2_LO = np.float32(math.log(2) - 0.693359375)
_EXP_MIN = np.float32(-87)  # exp below e**-87 (~1.6e-38, near float32's smallest normal) is taken as 0


@njit(fastmath={"reassoc", "contract"}, cache=True)
def _exp_shifted(x, m) -> np.float32:
    """x[:] = exp(x - m) for x <= m (a -inf gives 0); returns their sum.

    libm's scalar exp would cost as much as the rest of decode attention, so this one vectorizes:
    z = x - m = n ln 2 + f with n = round(z / ln 2) and |f| <= ln 2 / 2; exp(f) by its Taylor series to
    f**7 (truncation about 7e-9 relative, under float32's rounding); 2**n from its float32 bits, the
    exponent field n + 127 shifted left 23 (computed in float, converted to int32, reinterpreted).
    """
    total = np.float32(0)
    for s in range(x.shape[0]):
        z = x[s] - m
        zc = max(z, _EXP_MIN)
        n = np.floor(zc * _LOG2E + np.float32(0.5))  # float32, as everything here
        f = zc - n * _LN2_HI - n * _LN2_LO
        e = np.float32(1 / 5040)
        e = e * f + np.float32(1 / 720)
        e = e * f + np.float32(1 / 120)
        e = e * f + np.float32(1 / 24)
        e = e * f + np.float32(1 / 6)
        e = e * f + np.float32(1 / 2)
        e = e * f + np.float32(1)
        e = e * f + np.float32(1)
        two_n = _float32_from_bits(np.int32((n + np.float32(127)) * np.float32(1 << 23)))
        e = e * two_n if z > _EXP_MIN else np.float32(0)
        x[s] = e
        total += e
    return total


@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose bits are the int32 `bits` (LLVM's bitcast, which vectorizes)."""
    if bits != types.int32:
        raise TypingError(f"_float32_from_bits takes an int32, got {bits}")

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@intrinsic
def _max(typingctx, a, b):
    """max of two float32 (LLVM's maxnum): a loop's running max of it vectorizes, of Python's max not."""
    if a != types.float32 or b != types.float32:
        raise TypingError(f"_max takes two float32, got {a}, {b}")

    def codegen(context, builder, signature, args):
        maxnum = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.FloatType(), [ir.FloatType()] * 2),
                                                "llvm.maxnum.f32")
        return builder.call(maxnum, args)
    return types.float32(types.float32, types.float32), codegen
