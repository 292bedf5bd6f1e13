"""Choosing the next token from logits: greedy, or a draw after temperature and filters.

`filter_probs` applies, in this order:
  1. temperature: softmax(logits / temperature) (temperature 0 gives a one-hot argmax);
  2. top-k: keep the k most probable tokens (exactly k; at a tie, the lower ids);
  3. top-p: keep the smallest set of most probable tokens whose probability, renormalised
     over the tokens kept so far, sums to at least top_p (never fewer than one token;
     top_p = 1 keeps every token);
  4. min-p: keep the tokens whose probability is at least min_p times the largest;
and renormalises what is left. Each stage sees the output of the stages before it.
"""

from __future__ import annotations

import math

import numpy as np

# What sample (and the GPU's sampler) says of logits whose largest is NaN or infinity.
NON_FINITE = ("the logits hold NaN or infinity, which damaged weights give: check the checkpoint's files "
              "(a download cut short or corrupted?)")


def check_args(temperature, top_k, top_p, min_p) -> None:
    """ValueError, naming the setting, for a bad one (a string or None where a number goes, too)."""
    if not (_number(temperature) and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if top_k is not None and not (_number(top_k) and math.isfinite(top_k) and int(top_k) == top_k >= 1):
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
    if top_p is not None and not (_number(top_p) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if min_p is not None and not (_number(min_p) and 0 <= min_p <= 1):
        raise ValueError(f"min_p must be in [0, 1], got {min_p!r}")


def _number(x) -> bool:
    """A real number (Python's or NumPy's), not a bool."""
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def _logits_vector(logits) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"logits must be a non-empty 1-D array, got shape {x.shape}")
    return x


def _top_ids(values: np.ndarray, k: int) -> np.ndarray:
    """Ascending indices of the k largest values (at a tie, the lower indices), in O(n)."""
    if k >= values.size:
        return np.arange(values.size)
    kth = np.partition(values, values.size - k)[values.size - k]
    above = np.flatnonzero(values > kth)
    tied = np.flatnonzero(values == kth)[:k - above.size]
    return np.sort(np.concatenate([above, tied]))


def _nucleus(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Indices of the smallest most-probable set whose probabilities sum to >= top_p.

    Sorts only a growing head of the nonzero probabilities, not the whole vocabulary."""
    support = np.flatnonzero(probs)
    values = probs[support]
    size = min(256, values.size)
    while True:
        head = _top_ids(values, size)
        head = head[np.lexsort((head, -values[head]))]  # most probable first, ties by index
        cumulative = np.cumsum(values[head])
        if cumulative[-1] >= top_p or size == values.size:
            break
        size = min(8 * size, values.size)
    return support[head[:min(np.searchsorted(cumulative, top_p) + 1, size)]]


def filter_probs(logits, *, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, min_p: float | None = None) -> np.ndarray:
    """float64 probabilities over the vocabulary after temperature, top-k, top-p, min-p."""
    check_args(temperature, top_k, top_p, min_p)
    x = _logits_vector(logits)
    if temperature == 0:
        probs = np.zeros_like(x)
        probs[np.argmax(x)] = 1.0
        return probs
    # the largest first taken out, so that a tiny temperature makes the others -inf, never inf - inf
    z = x - x.max()
    with np.errstate(over="ignore"):
        z /= temperature  # in place: a vocabulary-sized array costs more to allocate than to compute
    if top_k is not None and top_k < z.size:
        top = _top_ids(z, int(top_k))
        z_top, z = z[top], np.full_like(z, -np.inf)
        z[top] = z_top
    probs = np.exp(z, out=z)
    probs /= probs.sum()
    if top_p is not None and top_p < 1:
        nucleus = _nucleus(probs, top_p)
        kept = np.zeros_like(probs)
        kept[nucleus] = probs[nucleus]
        probs = kept / kept.sum()
    if min_p is not None:
        probs = np.where(probs >= min_p * probs.max(), probs, 0.0)
        probs /= probs.sum()
    return probs


def sample(logits, *, temperature: float = 0.0, top_k: int | None = None,
           top_p: float | None = None, min_p: float | None = None,
           rng: np.random.Generator | None = None) -> int:
    """The next token id: the argmax when temperature is 0, else a draw from `filter_probs`.

    `rng` is a NumPy Generator (a seeded one makes draws reproducible); by default a fresh
    unseeded one. Logits holding NaN or +infinity are a ValueError: nothing can be drawn from them.
    """
    check_args(temperature, top_k, top_p, min_p)
    x = _logits_vector(logits)
    if not math.isfinite(x.max()):  # NaN if any is; one pass, next to the model's step
        raise ValueError(NON_FINITE)
    if temperature == 0:
        return int(np.argmax(x))
    probs = filter_probs(x, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    rng = rng if rng is not None else np.random.default_rng()
    return _draw(probs, rng.random())


def _draw(probs: np.ndarray, u: float) -> int:
    """The id whose cumulative probability first exceeds u * total (u uniform in [0, 1)): NumPy's
    Generator.choice(len(probs), p=probs) made the same way from the same u, without its checks of p
    (each a pass over the vocabulary)."""
    cdf = np.cumsum(probs, out=probs)  # probs is ours: filter_probs made it
    cdf /= cdf[-1]
    return int(np.searchsorted(cdf, u, side="right"))
