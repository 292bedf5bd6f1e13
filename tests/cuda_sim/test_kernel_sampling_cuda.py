"""Argmax and the filtered draw (simulator) against sampling.sample with the same uniform number."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import FixedUniform
from cuda_sim.sim import poisoned
from gptoss_np import sampling
from gptoss_np.kernels import sampling_cuda


SHIPPED = pytest.mark.shipped_launches  # the GPU's block shapes (tests/cuda_sim/conftest.py)


# 70: 3 blocks of 8 threads, strided, partial; shipped: 2 blocks of 1024 threads, the tie across them
@pytest.mark.parametrize("V, ties", [(70, [13, 61]), pytest.param(1500, [13, 1030], marks=SHIPPED)])
def test_argmax_takes_the_lower_index_at_ties(V, ties):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(V, dtype=np.float32)
    logits[ties] = 9.0
    out = poisoned(2, np.int32)
    sampling_cuda.argmax(logits, out)
    assert out[0] == 13 and sampling_cuda.largest(out) == 9.0


# np.argmax's order: NaN before any number (the first NaN), +inf before finite values; -inf alone
@pytest.mark.parametrize("V, specials", [
    (70, {40: np.nan, 9: np.inf, 65: np.nan}), (70, {20: np.inf, 3: np.inf}), (70, {"all": -np.inf}),
    (70, {"all": np.nan}), pytest.param(1500, {1100: np.nan, 30: np.inf, 1400: np.nan}, marks=SHIPPED)])
def test_argmax_orders_nan_and_infinity_as_numpy(V, specials):
    logits = np.random.default_rng(2).standard_normal(V, dtype=np.float32)
    for i, value in specials.items():
        logits[slice(None) if i == "all" else i] = value
    out = poisoned(2, np.int32)
    sampling_cuda.argmax(logits, out)
    assert out[0] == np.argmax(logits)
    np.testing.assert_equal(sampling_cuda.largest(out), logits.max())


@pytest.mark.parametrize("temperature, top_k, top_p, min_p", [
    (1.0, None, None, None), (0.6, None, 1.0, 0.0), (0.7, 5, None, None), (1.3, None, 0.8, None), (1.0, 12, 0.9, 0.05),
    (0.5, None, None, 0.2), pytest.param(1.0, 12, 0.9, 0.05, marks=SHIPPED, id="shipped")])  # shipped: 1024 threads
def test_sample_draws_as_the_cpu(temperature, top_k, top_p, min_p, request):
    """Uniform numbers from seeded generators, and (at the simulator's small launches) a grid over [0, 1)
    that meets every kept id's interval, so that a token kept too many or too few is drawn, and 1 - 1e-9,
    which is 1.0 as a float32: u * total reaches the last running sum, and the last kept id is drawn."""
    rng = np.random.default_rng(1)
    logits = 2 * rng.standard_normal(50, dtype=np.float32)
    order = np.argsort(-logits, kind="stable").astype(np.int32)
    us = [np.random.default_rng(seed).random() for seed in range(6)]
    if not request.node.get_closest_marker("shipped_launches"):  # 1024 simulated threads a launch: slow
        us += [*np.linspace(0, 1, 41)[:-1], 1 - 1e-6, 1 - 1e-9]
    for u in us:
        expected = sampling.sample(logits, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                   rng=FixedUniform(u))
        # the ids in order when a filter needs them; without filters with and without (nothing sorted)
        for given in (order, None) if not sampling_cuda.filtered(top_k, top_p, min_p) else (order,):
            out = poisoned(2, np.int32)
            sampling_cuda.sample(logits, given, temperature, top_k, top_p, min_p, u, out)
            assert out[0] == expected, (u, given is None)
            assert sampling_cuda.largest(out) == logits.max()


def tied_largest():
    logits = 2 * np.random.default_rng(1).standard_normal(20, dtype=np.float32)
    logits[[3, 11]] = logits.max() + 1
    return logits


@pytest.mark.parametrize("logits, top_p, min_p", [
    (np.zeros(8, np.float32), 0.5, None),  # 4 of 8 equal probabilities sum to exactly top_p: those 4 are kept
    (tied_largest(), None, 1.0),  # the two tied largest, p / p_max = 1 >= min_p, are kept
], ids=["top_p", "min_p"])
def test_filters_keep_the_tokens_at_their_threshold(logits, top_p, min_p):
    """A cumulative probability equal to top_p, and a ratio to the largest equal to min_p, keep the token
    (>=, as sampling.sample), against sampling.sample with the same uniform numbers."""
    order = np.argsort(-logits, kind="stable").astype(np.int32)
    for u in (0.1, 0.6, 0.9):
        expected = sampling.sample(logits, temperature=1.0, top_p=top_p, min_p=min_p, rng=FixedUniform(u))
        out = poisoned(2, np.int32)
        sampling_cuda.sample(logits, order, 1.0, None, top_p, min_p, u, out)
        assert out[0] == expected, u


@pytest.mark.parametrize("temperature", [1e-20, 1e-39, 1e-300])  # 1 / 1e-39 is over float32's largest
@pytest.mark.parametrize("top_k", [None, 5])
def test_a_tiny_temperature_draws_the_argmax(temperature, top_k):
    logits = 2 * np.random.default_rng(3).standard_normal(37, dtype=np.float32)
    order = np.argsort(-logits, kind="stable").astype(np.int32)
    for u in (0.0, 0.5, 0.999):
        out = poisoned(2, np.int32)
        sampling_cuda.sample(logits, order if top_k else None, temperature, top_k, None, None, u, out)
        assert out[0] == np.argmax(logits), u


def test_filters_need_the_order():
    logits = np.zeros(8, np.float32)
    with pytest.raises(ValueError, match="needed by the filters"):
        sampling_cuda.sample(logits, None, 1.0, None, 0.9, None, 0.5, poisoned(2, np.int32))
