"""Attention with sinks, GQA, causal and window masks (simulator) against attention.attention_ref."""

from __future__ import annotations

import numpy as np
import pytest

from cuda_sim.sim import assert_close, poisoned
from gptoss_np.kernels import attention, attention_cuda


def inputs(rng, T, S, H, G, Dh):
    q = rng.standard_normal((T, H, Dh), dtype=np.float32)
    k = rng.standard_normal((S, G, Dh), dtype=np.float32)
    v = rng.standard_normal((S, G, Dh), dtype=np.float32)
    sinks = rng.standard_normal(H, dtype=np.float32)
    return q, k, v, sinks


# (the simulator's blocks, tests/cuda_sim/conftest.py: 8 rows, chunks of 4 keys; splits of at most 8 keys,
# and at least as many as there are chunks, up to 4; shipped: 64 rows, chunks of 32 keys, 128 threads)
@pytest.mark.parametrize("T, S, window, H, G, Dh", [
    (5, 5, None, 4, 2, 16),  # prefill from an empty cache: 4 queries x 2 heads per block, the second block partial
    (3, 21, 6, 4, 2, 16),  # prefill chunk after 18 cached tokens, sliding window; 21 keys = 4 splits of 6
    (1, 19, None, 4, 2, 16),  # decode: one query, several splits, the last chunk partial
    (9, 30, 4, 8, 2, 16),  # 4 heads a kv head: 2 queries per block; chunks outside every row's window are skipped
    (1, 13, None, 8, 8, 16),  # no GQA: a block holds 1 row
    (3, 11, 1, 4, 2, 16),  # window 1: each query sees only its own key (and the sink)
    pytest.param(3, 40, 20, 8, 1, 64, marks=pytest.mark.shipped_launches),  # gpt-oss's 8:1 GQA and head dim
    pytest.param(1, 70, None, 8, 2, 64, marks=pytest.mark.shipped_launches),  # decode: 3 splits of 24 keys
    # gpt-oss-20b's sliding layer at decode: 64 query heads over 8 kv heads of 64 dims, 128 keys, window 128
    pytest.param(1, 128, 128, 64, 8, 64, marks=pytest.mark.shipped_launches),
])
def test_matches_reference(T, S, window, H, G, Dh):
    rng = np.random.default_rng(S)
    q, k, v, sinks = inputs(rng, T, S, H, G, Dh)
    q_pos = np.arange(S - T, S)
    k_pos = rng.permutation(S)  # slot order does not matter: masks use positions
    out = poisoned((T, H, Dh))
    attention_cuda.attention(q, k, v, q_pos, k_pos, sinks, window, 0.25, out)
    assert_close(out, attention.attention_ref(q, k, v, q_pos, k_pos, sinks, window, 0.25), rtol=1e-5)


def test_empty_slots_are_ignored():
    rng = np.random.default_rng(7)
    q, k, v, sinks = inputs(rng, 1, 12, 2, 1, 16)
    k_pos = np.array([0, 1, 2, 3, -1, 4, -1, -1, 5, 6, -1, 7])
    out = poisoned((1, 2, 16))
    attention_cuda.attention(q, k, v, np.array([7]), k_pos, sinks, 4, 0.25, out)
    kept = k_pos >= 0
    assert_close(out, attention.attention_ref(q, k[kept], v[kept], np.array([7]), k_pos[kept], sinks, 4, 0.25))


@pytest.mark.parametrize("T, S, window", [(1, 19, None), (3, 21, 6)])  # decode over splits; a sliding prefill chunk
def test_without_sinks(T, S, window):
    """Sinks of -inf, as the attention-sinks walkthrough sets them: the softmax over the keys alone."""
    rng = np.random.default_rng(S + 1)
    q, k, v, _ = inputs(rng, T, S, 4, 2, 16)
    sinks = np.full(4, -np.inf, np.float32)
    q_pos, k_pos = np.arange(S - T, S), np.arange(S)
    out = poisoned((T, 4, 16))
    attention_cuda.attention(q, k, v, q_pos, k_pos, sinks, window, 0.25, out)
    ref = attention.attention_ref(q, k, v, q_pos, k_pos, sinks, window, 0.25)
    assert np.isfinite(ref).all()
    assert_close(out, ref, rtol=1e-5)


def test_without_gqa_the_last_query_alone_sees_the_last_split():
    """H == G, so a block's rows are its queries, one position each; 13 keys in 4 splits of 4 (conftest), the
    last holding only position 12, which only the block's last query sees: the positions the block spans
    (which decide the chunks it skips) must include its last row's. Against attention_ref."""
    rng = np.random.default_rng(0)
    q, k, v, sinks = inputs(rng, 2, 13, 2, 2, 16)
    q_pos, k_pos = np.arange(11, 13), np.arange(13)
    out = poisoned((2, 2, 16))
    attention_cuda.attention(q, k, v, q_pos, k_pos, sinks, None, 0.25, out)
    assert_close(out, attention.attention_ref(q, k, v, q_pos, k_pos, sinks, None, 0.25))


def test_without_sinks_scores_far_below_zero():
    """Every score about -150 and no sinks: the running max must be the rows' own (exp(-150) underflows
    against a max of 0). 2 queries a block's 4 score rows (H / G = 2), so padding rows, which must not
    write the max. Against attention_ref."""
    rng = np.random.default_rng(1)
    q, k, v, _ = inputs(rng, 1, 19, 4, 2, 16)
    q[..., 0], k[..., 0] = -20, 30  # 0.25 * (-20 * 30) = -150 added to every score
    sinks = np.full(4, -np.inf, np.float32)
    q_pos, k_pos = np.array([18]), np.arange(19)
    out = poisoned((1, 4, 16))
    attention_cuda.attention(q, k, v, q_pos, k_pos, sinks, None, 0.25, out)
    assert_close(out, attention.attention_ref(q, k, v, q_pos, k_pos, sinks, None, 0.25))


def test_chunks_no_row_sees_are_skipped_in_long_splits(monkeypatch):
    """Splits of 16 keys, 4 chunks of 4, so each chunk parity's `seen` flag is reused within a block. Keys
    in descending positions, window 8: in split 0 the first two chunks are seen and the next two are outside
    the window (as are splits 1 and 2). The keys and values no row sees are NaN: a chunk that no row sees is
    skipped without loading (the module's docstring), so none may reach the output. Against attention_ref
    over the visible keys alone."""
    monkeypatch.setattr(attention_cuda, "KEYS_PER_SPLIT", 16)
    monkeypatch.setattr(attention_cuda, "MIN_SPLITS", 1)
    rng = np.random.default_rng(12)
    S, W = 48, 8
    q, k, v, sinks = inputs(rng, 1, S, 4, 2, 16)
    q_pos, k_pos = np.array([S - 1]), np.arange(S)[::-1].copy()  # slot s holds position S - 1 - s
    hidden = k_pos <= S - 1 - W  # slots 8 on: whole chunks
    k[hidden], v[hidden] = np.nan, np.nan
    out = poisoned((1, 4, 16))
    attention_cuda.attention(q, k, v, q_pos, k_pos, sinks, W, 0.25, out)
    assert_close(out, attention.attention_ref(q, k[~hidden], v[~hidden], q_pos, k_pos[~hidden], sinks, W, 0.25))
