"""gptoss_np.sampling against hand-worked examples, brute-force oracles and transformers' logits warpers."""

import itertools
import math
import warnings

import numpy as np
import pytest

from conftest import FixedUniform
from gptoss_np.sampling import filter_probs, sample


def logits_of(probs):
    """Logits whose softmax is `probs`."""
    return np.log(np.asarray(probs, dtype=np.float64))


def support(probs):
    return set(np.flatnonzero(probs).tolist())


def test_no_filter_is_the_softmax():
    logits = [2.0, -1.0, 0.5, 3.0]
    expected = [math.exp(v) for v in logits]
    probs = filter_probs(logits)
    assert probs.dtype == np.float64
    np.testing.assert_allclose(probs, np.array(expected) / sum(expected), rtol=1e-12)


@pytest.mark.parametrize("temperature", [0.25, 0.5, 2.0, 10.0])
def test_temperature_scales_the_logits(temperature):
    q = [0.5, 0.25, 0.125, 0.0625, 0.0625]
    powered = [p ** (1 / temperature) for p in q]  # softmax(log q / T) is q**(1/T), renormalised
    expected = np.array(powered) / sum(powered)
    np.testing.assert_allclose(filter_probs(logits_of(q), temperature=temperature), expected, rtol=1e-12)


@pytest.mark.parametrize("k", [1, 2, 5, 17, 49, 50, 80])
def test_top_k_keeps_exactly_the_k_largest(k):
    rng = np.random.default_rng(k)
    logits = rng.standard_normal(50).tolist()
    largest = sorted(range(50), key=lambda i: -logits[i])[:k]
    total = sum(math.exp(logits[i]) for i in largest)
    expected = [math.exp(logits[i]) / total if i in largest else 0.0 for i in range(50)]
    np.testing.assert_allclose(filter_probs(logits, top_k=k), expected, rtol=1e-12, atol=0)


def test_top_k_breaks_ties_towards_lower_ids():
    assert support(filter_probs([1.0, 3.0, 3.0, 3.0, 0.0], top_k=2)) == {1, 2}


@pytest.mark.parametrize("top_p, kept", [
    (0.3, {1}), (0.6, {1, 3}), (0.71, {1, 3, 4}), (0.9, {1, 3, 4, 2}), (0.99, {0, 1, 2, 3, 4}),
    (1.0, {0, 1, 2, 3, 4}),
])
def test_top_p_keeps_the_nucleus(top_p, kept):
    q = [0.05, 0.5, 0.1, 0.2, 0.15]
    probs = filter_probs(logits_of(q), top_p=top_p)
    assert support(probs) == kept
    total = sum(q[i] for i in kept)
    np.testing.assert_allclose([probs[i] for i in sorted(kept)], [q[i] / total for i in sorted(kept)],
                               rtol=1e-12)


def _brute_force_nucleus(q, top_p):
    """Among the smallest subsets whose mass reaches top_p, the one with the most mass."""
    for size in range(1, len(q) + 1):
        reaching = [s for s in itertools.combinations(range(len(q)), size)
                    if sum(q[i] for i in s) >= top_p]
        if reaching:
            return set(max(reaching, key=lambda s: sum(q[i] for i in s)))


@pytest.mark.parametrize("seed", range(20))
def test_top_p_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    q = rng.dirichlet(np.ones(8))
    top_p = float(rng.uniform(0.05, 0.99))
    assert support(filter_probs(logits_of(q), top_p=top_p)) == _brute_force_nucleus(q.tolist(), top_p)


@pytest.mark.parametrize("q, top_p, kept", [
    ([0.5, 0.25, 0.25], 0.75, {0, 1}),  # two tokens reach 0.75 exactly: a third is not needed
    ([0.25, 0.25, 0.25, 0.25], 0.5, {0, 1}),  # ties: the lower ids, as top-k's
    ([0.125, 0.25, 0.25, 0.375], 0.5, {1, 3}),
])
def test_top_p_at_an_exact_sum_and_at_ties_matches_brute_force(q, top_p, kept):
    """Probabilities exact in binary (the engine's sums are the brute force's), where random ones never
    land: on top_p itself, and equal ones at the nucleus's edge."""
    assert support(filter_probs(logits_of(q), top_p=top_p)) == _brute_force_nucleus(q, top_p) == kept


def test_top_p_1_keeps_every_token_however_improbable():
    """top_p = 1 keeps every token (the module's rule, and transformers' TopPLogitsWarper's), even one whose
    probability (4e-18) is lost in the float sum: 1 + 4e-18 == 1, so a nucleus would stop before it."""
    assert support(filter_probs([0.0, -40.0], top_p=1.0)) == {0, 1}


def test_top_p_on_a_large_flat_vocabulary():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(20000) * 0.5
    weights = [math.exp(v) for v in logits.tolist()]
    total, order = sum(weights), sorted(range(20000), key=lambda i: -weights[i])
    mass, nucleus = 0.0, set()
    for i in order:
        nucleus.add(i)
        mass += weights[i] / total
        if mass >= 0.8:
            break
    assert len(nucleus) > 5000
    assert support(filter_probs(logits, top_p=0.8)) == nucleus


@pytest.mark.parametrize("min_p, kept", [(0.0, {0, 1, 2, 3, 4}), (0.2, {0, 1, 2, 4}),
                                         (0.3, {0, 1, 4}), (0.5, {0, 1}), (1.0, {0})])
def test_min_p_keeps_tokens_above_a_fraction_of_the_top(min_p, kept):
    q = [0.4, 0.3, 0.1, 0.05, 0.15]
    probs = filter_probs(logits_of(q), min_p=min_p)
    assert support(probs) == kept
    total = sum(q[i] for i in kept)
    np.testing.assert_allclose(probs[sorted(kept)], [q[i] / total for i in sorted(kept)], rtol=1e-12)


def test_top_p_sees_the_top_k_renormalised_probabilities():
    # top-k keeps 0.4 and 0.3; renormalised, 0.4 alone is 4/7 >= 0.5.
    assert support(filter_probs(logits_of([0.4, 0.3, 0.2, 0.1]), top_k=2, top_p=0.5)) == {0}


def test_min_p_comes_after_top_p():
    # top-p 0.75 keeps {0, 1, 2}; min-p 0.45 then needs >= 0.18: all three stay.
    # (min-p first would keep {0, 1, 2} and top-p on that renormalised set only {0, 1}.)
    probs = filter_probs(logits_of([0.4, 0.3, 0.2, 0.1]), top_p=0.75, min_p=0.45)
    assert support(probs) == {0, 1, 2}


def test_filters_match_transformers_logits_warpers():
    """Temperature, then top-k, top-p and min-p, as transformers' warpers run in that order: the same
    distribution on random logits without ties. (With ties at the k-th value transformers keeps them
    all, and the engine exactly k, the lower ids first: test_top_k_breaks_ties_towards_lower_ids.)"""
    torch = pytest.importorskip("torch")
    warpers = pytest.importorskip("transformers.generation.logits_process")
    rng = np.random.default_rng(1)
    for _ in range(500):
        V = int(rng.integers(2, 300))
        x = (rng.standard_normal(V) * rng.choice([0.5, 2, 8])).astype(np.float32)
        temperature = float(rng.choice([0.5, 1.0, 1.7]))
        top_k = int(rng.integers(1, V + 1)) if rng.random() < 0.5 else None
        top_p = float(rng.choice([0.3, 0.5, 0.9, 0.95])) if rng.random() < 0.6 else None
        min_p = float(rng.choice([0.05, 0.1, 0.3])) if rng.random() < 0.4 else None
        scores = warpers.TemperatureLogitsWarper(temperature)(None, torch.tensor(x, dtype=torch.float64)[None])
        for warper, value in ((warpers.TopKLogitsWarper, top_k), (warpers.TopPLogitsWarper, top_p),
                              (warpers.MinPLogitsWarper, min_p)):
            scores = scores if value is None else warper(value)(None, scores)
        ref = torch.softmax(scores, -1)[0].numpy()
        ours = filter_probs(x, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
        assert support(ours) == support(ref)
        np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-15)


def test_greedy_is_the_argmax():
    logits = np.array([0.1, 5.0, -2.0, 4.9])
    assert sample(logits) == 1
    assert sample(logits, temperature=0.0, top_k=3, top_p=0.5, rng=np.random.default_rng(0)) == 1
    assert sample([1.0, 7.0, 7.0]) == 1
    np.testing.assert_array_equal(filter_probs(logits, temperature=0.0), [0, 1, 0, 0])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("kwargs", [{}, {"temperature": 1.0}, {"temperature": 0.8, "top_k": 2, "top_p": 0.9}])
def test_nan_or_infinity_in_the_logits_is_an_error(bad, kwargs):
    """Nothing can be drawn from them (damaged weights give them): said, not a token made up."""
    logits = np.array([0.5, 1.0, -1.0, bad, 2.0])
    with pytest.raises(ValueError, match="NaN or infinity"):
        sample(logits, rng=np.random.default_rng(0), **kwargs)
    assert sample([0.5, -np.inf, 2.0], rng=np.random.default_rng(0), **kwargs) != 1  # -inf: masked, no error


def test_same_seed_same_tokens():
    logits = np.random.default_rng(0).standard_normal(1000)

    def draws(seed):
        rng = np.random.default_rng(seed)
        return [sample(logits, temperature=0.8, top_k=100, top_p=0.95, rng=rng) for _ in range(200)]
    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


@pytest.mark.parametrize("kwargs", [dict(temperature=1.0), dict(temperature=0.7, top_k=20),
                                    dict(temperature=1.3, top_p=0.8), dict(temperature=1.0, min_p=0.05)])
def test_a_draw_is_numpys_choice_with_the_same_seed(kwargs):
    """sample() draws as Generator.choice(p=filter_probs) does, from the same seed (the GPU's draw
    is checked against sample() with the same uniform number)."""
    logits = 2 * np.random.default_rng(3).standard_normal(5000)
    probs = filter_probs(logits, **kwargs)
    ours = [sample(logits, rng=np.random.default_rng(seed), **kwargs) for seed in range(200)]
    numpys = [int(np.random.default_rng(seed).choice(probs.size, p=probs)) for seed in range(200)]
    assert ours == numpys
    assert np.array_equal(logits, 2 * np.random.default_rng(3).standard_normal(5000))  # the caller's logits intact


def test_a_draw_at_either_end_of_the_unit_interval_is_a_kept_token():
    """_draw's rule: the id whose cumulative probability first exceeds u * total, u in [0, 1). At u = 0
    that is the first token kept, not a filtered one before it; at the largest u below 1 it is a token
    of the vocabulary even where the probabilities' float sum falls short of 1."""
    assert sample([0.0, 5.0, 1.0], temperature=1.0, top_k=1, rng=FixedUniform(0.0)) == 1
    logits = np.random.default_rng(0).standard_normal(20) * 3
    u = np.nextafter(1.0, 0.0)
    assert np.cumsum(filter_probs(logits))[-1] < u  # the case: 0.9999999999999998
    token = sample(logits, temperature=1.0, rng=FixedUniform(u))
    assert 0 <= token < len(logits) and filter_probs(logits)[token] > 0


def test_draws_follow_the_filtered_distribution():
    q = np.array([0.4, 0.3, 0.1, 0.05, 0.15])
    rng = np.random.default_rng(1)
    n = 20000
    counts = np.bincount([sample(logits_of(q), temperature=1.0, min_p=0.3, rng=rng) for _ in range(n)],
                         minlength=5)
    expected = np.array([0.4, 0.3, 0.0, 0.0, 0.15]) / 0.85
    assert counts[2] == counts[3] == 0
    sigma = np.sqrt(n * expected * (1 - expected))
    assert np.all(np.abs(counts - n * expected) <= 5 * sigma + 1e-9)


@pytest.mark.parametrize("temperature", [1e-30, 1e-308, 5e-324])
@pytest.mark.parametrize("top_k", [None, 2])
def test_a_tiny_temperature_is_greedy_not_nan(temperature, top_k):
    """As the temperature goes to 0 the distribution goes to the argmax's one-hot; logits / temperature
    alone would overflow to inf, and inf - inf is NaN."""
    logits = [1.0, 3.0, 2.0, -1.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warning either
        probs = filter_probs(logits, temperature=temperature, top_k=top_k)
        np.testing.assert_array_equal(probs, [0.0, 1.0, 0.0, 0.0])
        assert sample(logits, temperature=temperature, top_k=top_k, rng=np.random.default_rng(0)) == 1


@pytest.mark.parametrize("kwargs, name", [
    ({"temperature": -0.1}, "temperature"), ({"temperature": float("nan")}, "temperature"),
    ({"temperature": float("inf")}, "temperature"),
    ({"top_k": 0}, "top_k"), ({"top_k": 2.5}, "top_k"),
    ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"top_p": float("nan")}, "top_p"),
    ({"min_p": -0.1}, "min_p"), ({"min_p": 1.01}, "min_p"),
    # of the wrong type: a ValueError naming the setting too, not a TypeError from a comparison
    ({"temperature": "1"}, "temperature"), ({"temperature": None}, "temperature"),
    ({"temperature": True}, "temperature"), ({"top_k": float("nan")}, "top_k"), ({"top_k": "5"}, "top_k"),
    ({"top_p": "0.5"}, "top_p"), ({"min_p": [0.1]}, "min_p"),
])
def test_invalid_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        sample([0.0, 1.0], **{"temperature": 1.0, **kwargs})
    with pytest.raises(ValueError, match=name):
        filter_probs([0.0, 1.0], **{"temperature": 1.0, **kwargs})


def test_logits_must_be_a_vector():
    with pytest.raises(ValueError, match="logits"):
        filter_probs(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="logits"):
        sample([], temperature=1.0)
