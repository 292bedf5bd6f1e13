"""Sink attention: the NumPy reference and the Numba kernel against a direct float64 transcription of
transformers' eager attention (append the sink column, softmax, drop it) with explicit causal / sliding
masks."""

from __future__ import annotations

import numpy as np
import pytest

from gptoss_np.kernels import attention as attention_kernels
from gptoss_np.kernels.attention import attention_ref


def oracle(q, k, v, q_pos, k_pos, sinks, window, scale):
    T, H, Dh = q.shape
    G = k.shape[1]
    out = np.zeros((T, H, Dh))
    for t in range(T):
        for h in range(H):
            g = h // (H // G)
            seen = [s for s in range(len(k_pos))
                    if 0 <= k_pos[s] <= q_pos[t] and (window is None or q_pos[t] - k_pos[s] < window)]
            logits = [float(q[t, h] @ k[s, g]) * scale for s in seen]
            values = [v[s, g] for s in seen]
            row = np.array(logits + [sinks[h]], dtype=np.float64)
            p = np.exp(row - row.max())
            p /= p.sum()
            out[t, h] = p[:-1] @ np.array(values, dtype=np.float64).reshape(-1, Dh)
    return out


CASES = [(7, 7, 4, 2, None, 0), (6, 13, 4, 1, 4, 0), (1, 20, 8, 8, 6, 0), (5, 9, 6, 3, 1, 0),
         (1, 300, 8, 2, None, 40), (3, 50, 4, 2, 16, 10)]  # T, S, H, G, window, empty slots


def random_case(T, S, H, G, window, empty, Dh=8):
    rng = np.random.default_rng(T * S + H)
    q = rng.standard_normal((T, H, Dh), dtype=np.float32) * 2
    k = rng.standard_normal((S, G, Dh), dtype=np.float32)
    v = rng.standard_normal((S, G, Dh), dtype=np.float32)
    filled = S - empty
    k_pos = np.concatenate([rng.permutation(filled), np.full(empty, -1)])  # slot order must not matter (ring)
    q_pos = np.arange(filled - T, filled)
    sinks = rng.standard_normal(H).astype(np.float32)
    return q, k, v, q_pos, k_pos, sinks, window, Dh ** -0.5


@pytest.mark.parametrize("case", CASES)
def test_attention_matches_oracle(case):
    args = random_case(*case)
    np.testing.assert_allclose(attention_ref(*args), oracle(*args), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk", [256, 7, 1])  # one chunk; several with a partial last one; a key each
@pytest.mark.parametrize("case", CASES)
def test_kernel_matches_oracle(case, chunk):
    args = random_case(*case)
    out = np.full(args[0].shape, np.nan, np.float32)
    attention_kernels._attention_kernel(*args[:6], int(args[6] or 0), np.float32(args[7]), chunk, out)
    np.testing.assert_allclose(out, oracle(*args), rtol=1e-5, atol=1e-6)


def test_kernel_chunks_that_see_no_key_add_nothing():
    """A query far past a sliding window: most chunks hold only keys it cannot see (all -inf scores)."""
    q, k, v, _, _, sinks, _, scale = random_case(2, 64, 4, 2, None, 0)
    q_pos, k_pos = np.array([70, 71]), np.arange(64) + 8  # window 5: only keys 66..71 are seen
    out = np.full(q.shape, np.nan, np.float32)
    attention_kernels._attention_kernel(q, k, v, q_pos, k_pos, sinks, 5, np.float32(scale), 8, out)
    np.testing.assert_allclose(out, oracle(q, k, v, q_pos, k_pos, sinks, 5, scale), rtol=1e-5, atol=1e-6)


def test_exp_shifted_matches_numpy_and_sends_minus_infinity_to_zero():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-90, 0, 1000), rng.uniform(-1, 0, 100), [0, -np.inf, -86.9, -87.1, -1e30]])
    x = (x + 2.5).astype(np.float32)  # shifted by m = 2.5
    got = x.copy()
    total = attention_kernels._exp_shifted(got, np.float32(2.5))
    want = np.exp((x - np.float32(2.5)).astype(np.float64))  # z = x - m rounded to float32 as in the kernel
    want[want < np.exp(-87.0)] = 0  # documented cut, at float32's smallest normal numbers
    np.testing.assert_allclose(got, want, rtol=2.0**-23, atol=0)  # float32's rounding: the series' truncation is below
    assert got[-4] == got[-1] == 0 and got[-2] == 0 and got[-3] > 0
    np.testing.assert_allclose(total, want.sum(), rtol=1e-6)


@pytest.mark.parametrize("case", [(40, 40, 4, 2, None, 0), (40, 70, 4, 2, 16, 10), (37, 45, 6, 3, 1, 3),
                                  (40, 90, 4, 1, 8, 0)])
def test_many_queries_in_passes_match_oracle(case, monkeypatch):
    """More queries than the kernel takes, in passes of 16, each over the keys its queries can see."""
    monkeypatch.setattr(attention_kernels, "QUERY_PASS", 16)
    args = random_case(*case)
    np.testing.assert_allclose(attention_kernels.attention(*args), oracle(*args), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_prefill_softmax_kernel_matches_the_reference_probabilities(case):
    q, k, _, q_pos, k_pos, sinks, window, scale = random_case(*case)
    scores = attention_kernels.scores_ref(q, k, scale)
    denominators = attention_kernels._softmax_kernel(scores, q_pos, k_pos, sinks, int(window or 0))
    p, _ = attention_kernels.probabilities_ref(q, k, q_pos, k_pos, sinks, window, scale)
    np.testing.assert_allclose(scores / denominators[..., None], p, rtol=1e-5, atol=1e-7)
    assert not scores[p == 0].any()  # keys a query cannot see weigh exactly 0


def test_a_pass_that_sees_no_key_puts_everything_on_the_sink(monkeypatch):
    monkeypatch.setattr(attention_kernels, "QUERY_PASS", 16)
    q, k, v, _, _, sinks, _, scale = random_case(20, 30, 4, 2, None, 0)
    q_pos, k_pos = np.arange(20), np.arange(18, 48)  # queries 0..15 see no key, 16..17 none, 18.. some
    out = attention_kernels.attention(q, k, v, q_pos, k_pos, sinks, 4, scale)
    np.testing.assert_allclose(out, oracle(q, k, v, q_pos, k_pos, sinks, 4, scale), rtol=1e-5, atol=1e-6)
    assert not out[:18].any()


def test_few_queries_take_the_kernel_in_chunks_the_rest_passes(monkeypatch):
    calls = []
    monkeypatch.setattr(attention_kernels, "_attention_kernel", lambda *a: calls.append(("kernel", a[-2])))
    monkeypatch.setattr(attention_kernels, "_in_passes", lambda *a: calls.append(("passes", None)))
    monkeypatch.setattr(attention_kernels.numba, "get_num_threads", lambda: 2)
    max_t = attention_kernels.KERNEL_MAX_QUERIES
    for T, S in ((1, 20), (max_t, 20), (max_t + 1, 20), (1, 1000), (1, 5000)):
        attention_kernels.attention(*random_case(T, S, 4, 2, None, 0))
    # chunks: at least 32 keys, at most 256, fewer than 256 when that gives each thread 2
    assert calls == [("kernel", 32), ("kernel", 32), ("passes", None), ("kernel", 250), ("kernel", 256)]


def test_sink_takes_probability_mass():
    q = np.zeros((1, 1, 4), np.float32)
    k = np.zeros((1, 1, 4), np.float32)
    v = np.ones((1, 1, 4), np.float32)
    pos = np.array([0])
    # one key with logit 0 and a sink with logit 0: half the mass goes to the sink
    out = attention_ref(q, k, v, pos, pos, np.zeros(1, np.float32), None, 1.0)
    np.testing.assert_allclose(out, 0.5)
