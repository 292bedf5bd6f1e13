"""Attention with per-head sinks, GQA and an optional sliding window (NumPy reference; the CPU path).

Each query head h has a sink logit s_h: a virtual key that takes part in the softmax but has no value,
so a head can put probability on "nothing". In online-softmax form: start the running max at s_h and
add exp(s_h - m) to the denominator.
"""

from __future__ import annotations

import numpy as np

_MAX_SCORES = 1 << 24  # score elements per query chunk (64 MiB of float32)


def attention_ref(q: np.ndarray, k: np.ndarray, v: np.ndarray, q_pos: np.ndarray, k_pos: np.ndarray,
                  sinks: np.ndarray, window: int | None, scale: float) -> np.ndarray:
    """q [T, H, Dh], k/v [S, G, Dh], positions q_pos [T], k_pos [S], sinks [H] -> [T, H, Dh].

    Query t sees key s when k_pos[s] <= q_pos[t] and, with a window W, k_pos[s] > q_pos[t] - W.
    Query head h reads kv head h // (H / G).
    """
    T, H, Dh = q.shape
    S, G, _ = k.shape
    out = np.empty((T, H, Dh), dtype=np.float32)
    chunk = max(1, _MAX_SCORES // max(1, H * S))
    vg = v.transpose(1, 0, 2)[:, None]  # [G, 1, S, Dh]
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        p, _ = probabilities_ref(q[t0:t1], k, q_pos[t0:t1], k_pos, sinks, window, scale)  # [G, R, t, S]
        out[t0:t1] = (p @ vg).transpose(2, 0, 1, 3).reshape(t1 - t0, H, Dh)
    return out


def probabilities_ref(q: np.ndarray, k: np.ndarray, q_pos: np.ndarray, k_pos: np.ndarray, sinks: np.ndarray,
                      window: int | None, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Attention probabilities [G, R, T, S] over the keys and the sink's share [G, R, T, 1] (the two
    sum to 1 for every query); query head h = g * R + r, R = H / G."""
    T, H, Dh = q.shape
    G = k.shape[1]
    R = H // G
    qg = q.reshape(T, G, R, Dh).transpose(1, 2, 0, 3)  # [G, R, T, Dh]
    scores = (qg @ k.transpose(1, 2, 0)[:, None]) * np.float32(scale)  # [G, R, T, S]
    visible = k_pos[None, :] <= q_pos[:, None]  # [T, S]
    if window is not None:
        visible &= k_pos[None, :] > q_pos[:, None] - window
    scores = np.where(visible, scores, -np.inf)
    sink = sinks.reshape(G, R, 1, 1).astype(np.float32)
    m = np.maximum(scores.max(axis=-1, keepdims=True), sink)  # the running max starts at the sink
    p = np.exp(scores - m)
    p_sink = np.exp(sink - m)
    denom = p.sum(axis=-1, keepdims=True) + p_sink
    return p / denom, p_sink / denom
