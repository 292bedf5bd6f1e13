"""Dispatch: exact grouped routing against per-token top-k, and the budgeted expert-choice rules."""

from __future__ import annotations

import numpy as np
import pytest

from gptoss_np import dispatch
from gptoss_np.kernels.moe import route_ref


def logits(N, E, seed=0):
    return np.random.default_rng(seed).standard_normal((N, E)).astype(np.float32) * 2


def as_matrix(d: dispatch.Dispatch, N, E) -> np.ndarray:
    """[N, E] weight of each computed pair (0 elsewhere)."""
    m = np.zeros((N, E))
    for e, pairs in d.groups():
        assert np.all(np.diff(d.tokens[pairs]) > 0)  # each token at most once per expert
        m[d.tokens[pairs], e] = d.weights[pairs]
    return m


def top_k_matrix(L, k) -> np.ndarray:
    """[N, E] each token's top-k routing weights (route_ref), 0 elsewhere."""
    experts, weights = route_ref(L, k)
    m = np.zeros(L.shape)
    np.put_along_axis(m, experts, weights, axis=1)
    return m


@pytest.mark.parametrize("N, E, k", [(1, 8, 2), (37, 16, 4), (64, 32, 4), (20, 5, 5), (9, 6, 1)])
def test_exact_grouping_is_per_token_top_k(N, E, k):
    L = logits(N, E, N + E)
    d = dispatch.from_top_k(*route_ref(L, k), E)
    np.testing.assert_allclose(as_matrix(d, N, E), top_k_matrix(L, k), rtol=1e-6)
    assert (d.dropped, d.unrouted) == (0, 0)
    assert d.tokens_per_expert.sum() == N * k


@pytest.mark.parametrize("N, E, k", [(37, 16, 4), (64, 8, 2), (10, 4, 4)])
def test_expert_choice_without_drops_is_exact(N, E, k):
    L = logits(N, E, 1)
    for budget in (N, N + 8):
        d = dispatch.expert_choice(L, k, budget)
        np.testing.assert_allclose(as_matrix(d, N, E), top_k_matrix(L, k), rtol=1e-6)
        assert d.dropped == 0


def test_expert_choice_without_drops_is_exact_with_ties():
    """Tied logits (three values, so ties fall at the k-th place too): tokens rank the lower expert first,
    as the router's top-k does."""
    L = np.random.default_rng(0).integers(0, 3, (64, 32)).astype(np.float32)
    d = dispatch.expert_choice(L, 4, budget=64)
    np.testing.assert_allclose(as_matrix(d, 64, 32), top_k_matrix(L, 4), rtol=1e-6)
    assert d.dropped == 0


@pytest.mark.parametrize("budget", [1, 4, 8, 16])
def test_expert_choice_budget_rules(budget):
    N, E, k = 60, 8, 2
    L = logits(N, E, budget)
    ranks = np.argsort(np.argsort(-L, axis=1), axis=1)
    d = dispatch.expert_choice(L, k, budget)
    m = as_matrix(d, N, E)
    kept = m > 0
    assert np.all(d.tokens_per_expert <= budget)
    assert np.all(kept.sum(axis=1) <= k)
    routed = kept.any(axis=1)
    np.testing.assert_allclose(m[routed].sum(axis=1), 1, rtol=1e-6)
    assert d.unrouted == int((~routed).sum())
    # weights: softmax over the kept logits
    for t in np.flatnonzero(routed):
        z = np.exp(L[t, kept[t]] - L[t, kept[t]].max())
        np.testing.assert_allclose(m[t, kept[t]], z / z.sum(), rtol=1e-5)
    # dropped = exact top-k pairs not computed
    assert d.dropped == int(np.count_nonzero((ranks < k) & ~kept))
    # an expert never takes a token that ranks it worse over one that ranks it better
    for e, pairs in d.groups():
        took = d.tokens[pairs]
        if len(took) == budget:
            worst_taken = ranks[took, e].max()
            others = np.setdiff1d(np.arange(N), took)
            assert np.all(ranks[others, e] >= worst_taken)


def test_first_choices_win():
    # 4 tokens all prefer expert 0; with room for 2, expert 0 keeps the two with the highest logits
    L = np.array([[3.0, 0.0], [5.0, 1.0], [4.0, 2.0], [1.5, 1.0]], np.float32)
    d = dispatch.expert_choice(L, 1, budget=2)
    m = as_matrix(d, 4, 2)
    assert m[:, 0].nonzero()[0].tolist() == [1, 2]
    # expert 1 is everyone's second choice and also takes the two highest logits, tokens 2 and 1
    # (1 before 3 at equal logits), which keep expert 0 instead (k = 1): experts choose without
    # knowing what the tokens will keep, so tokens 0 and 3 end up with no expert
    assert not m[:, 1].any()
    assert d.dropped == 2 and d.unrouted == 2


def test_budget_and_seed_rule():
    assert dispatch.tokens_per_expert(1.0, 100, 4, 32) == 16  # 12.5 rounded up to a multiple of 8
    assert dispatch.tokens_per_expert(2.0, 4096, 4, 32) == 1024
    assert dispatch.seed_prefers_expert_choice(16, 100)
    assert not dispatch.seed_prefers_expert_choice(16, 20)
    assert dispatch.seed_prefers_expert_choice(16, 24)  # 3 * 16 == 2 * 24: the seed's rule takes it


def test_slots_layout_keeps_every_pair():
    L = logits(30, 8, 5)
    d = dispatch.expert_choice(L, 2, budget=4)
    rows, weights = d.as_slots(30)
    k = weights.shape[1]
    assert k <= 2 and len(set(rows.tolist())) == len(rows)  # one row per pair
    np.testing.assert_array_equal(rows // k, d.tokens)
    np.testing.assert_allclose(weights.ravel()[rows], d.weights)
    assert np.count_nonzero(weights) == len(rows)
    np.testing.assert_allclose(weights.sum(axis=1)[d.tokens], 1, rtol=1e-6)
