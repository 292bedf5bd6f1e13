"""Sink attention: the NumPy reference against a direct float64 transcription of transformers' eager
attention (append the sink column, softmax, drop it) with explicit causal / sliding masks."""

from __future__ import annotations

import numpy as np
import pytest

from gptoss_np.kernels.attention import attention_ref


def oracle(q, k, v, q_pos, k_pos, sinks, window, scale):
    T, H, Dh = q.shape
    G = k.shape[1]
    out = np.zeros((T, H, Dh))
    for t in range(T):
        for h in range(H):
            g = h // (H // G)
            logits = [float(q[t, h] @ k[s, g]) * scale for s in range(len(k_pos))
                      if k_pos[s] <= q_pos[t] and (window is None or q_pos[t] - k_pos[s] < window)]
            values = [v[s, g] for s in range(len(k_pos))
                      if k_pos[s] <= q_pos[t] and (window is None or q_pos[t] - k_pos[s] < window)]
            row = np.array(logits + [sinks[h]], dtype=np.float64)
            p = np.exp(row - row.max())
            p /= p.sum()
            out[t, h] = p[:-1] @ np.array(values, dtype=np.float64).reshape(-1, Dh)
    return out


@pytest.mark.parametrize("T, S, H, G, window", [(7, 7, 4, 2, None), (6, 13, 4, 1, 4), (1, 20, 8, 8, 6),
                                                (5, 9, 6, 3, 1)])
def test_attention_matches_oracle(T, S, H, G, window):
    rng = np.random.default_rng(T * S + H)
    Dh = 8
    q = rng.standard_normal((T, H, Dh), dtype=np.float32) * 2
    k = rng.standard_normal((S, G, Dh), dtype=np.float32)
    v = rng.standard_normal((S, G, Dh), dtype=np.float32)
    k_pos = rng.permutation(S)  # slot order must not matter (ring buffer)
    q_pos = np.arange(S - T, S)
    sinks = rng.standard_normal(H).astype(np.float32)
    ours = attention_ref(q, k, v, q_pos, k_pos, sinks, window, Dh ** -0.5)
    np.testing.assert_allclose(ours, oracle(q, k, v, q_pos, k_pos, sinks, window, Dh ** -0.5), rtol=1e-5, atol=1e-6)


def test_sink_takes_probability_mass():
    q = np.zeros((1, 1, 4), np.float32)
    k = np.zeros((1, 1, 4), np.float32)
    v = np.ones((1, 1, 4), np.float32)
    pos = np.array([0])
    # one key with logit 0 and a sink with logit 0: half the mass goes to the sink
    out = attention_ref(q, k, v, pos, pos, np.zeros(1, np.float32), None, 1.0)
    np.testing.assert_allclose(out, 0.5)
