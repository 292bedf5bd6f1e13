"""Token generation: prefill the prompt once, then decode one token at a time with the KV cache."""

from __future__ import annotations

import operator
from typing import Callable, Iterator, Sequence

import numpy as np

from . import user_warnings
from .cache import KVCache
from .sampling import check_args

# Prompt tokens one forward pass takes at most: a longer prompt is prefilled in chunks through the KV
# cache, so its activations and the experts' scratch stay bounded (on a GPU, a 32k-token prompt in one
# pass would hold ~9 GB of expert products at once; 4096 tokens hold ~1.1 GB and keep the products large).
# model.logits runs long sequences in the same passes (32k tokens' logits alone are 26 GB).
PREFILL_CHUNK = 4096


class PromptCache:
    """Carries the KV cache from one `generate` call to the next, so that a prompt that extends the
    previous one (a chat's next turn) prefills only its new tokens.

    Give the same PromptCache to each call. Between calls it keeps the cache, so its memory stays
    allocated, and a copy of the sliding layers' windows as they were before the prompt's last token.
    The next prompt reuses the cache (grown if it needs more room) if it starts with the previous prompt
    up to that token and is longer than that; otherwise it gets a new one. `reused` says how many
    prompt tokens the last call took from the cache. A call's tokens must all be taken (or the generator
    dropped) before the next call's: once that one starts, the earlier one raises RuntimeError."""

    def __init__(self):
        self._model = self._prefix = self._cache = self._snapshot = None
        self.reused = self._calls = 0

    def held(self, model, ids: Sequence[int]) -> int:
        """How many tokens of the prompt `ids` a call with `model` would take from the cache."""
        prefix = self._prefix
        if model is self._model and self._cache is not None and len(prefix) < len(ids) and \
                np.array_equal(ids[:len(prefix)], prefix):
            return len(prefix)
        return 0

    def take(self, model, ids: np.ndarray, capacity: int) -> KVCache:
        """A cache for `ids` with room for `capacity` tokens, holding what it can of ids[:-1]."""
        self._calls += 1
        if self.held(model, ids):
            cache = self._cache
            cache.restore(self._snapshot)
            cache.reserve(capacity)
        else:
            self._cache = self._snapshot = None  # freed before a new one is made
            cache = model.new_cache(capacity)
        self.reused = cache.length
        return cache

    def guard(self, decode: Callable[[int], object]) -> Callable[[int], object]:
        """`decode` for the call that took the cache last, refusing once a later call has taken it."""
        call = self._calls

        def guarded(token: int):
            if self._calls != call:
                raise RuntimeError("a later generate call took this PromptCache over, so this one cannot go on: "
                                   "take all of a call's tokens (or drop its generator) before the next call")
            return decode(token)
        return guarded

    def keep(self, model, prefix: np.ndarray, cache: KVCache) -> None:
        """Remember `cache`, which holds exactly the tokens `prefix`, for the next call."""
        self._model, self._prefix, self._cache, self._snapshot = model, prefix.copy(), cache, cache.snapshot()


def new_token_room(model, prompt_tokens: int, max_new_tokens: int) -> int:
    """How many tokens to generate after a prompt of `prompt_tokens`: max_new_tokens, or fewer where the
    model's context ends; ValueError when the prompt fills the context."""
    context = model.config.max_position_embeddings
    if prompt_tokens >= context:
        raise ValueError(f"the prompt ({prompt_tokens} tokens) fills the model's context of {context} tokens, "
                         f"leaving no room for a reply: shorten it")
    return min(max_new_tokens, context - prompt_tokens)


def generate(model, token_ids: Sequence[int], max_new_tokens: int, *, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
             seed: int | None = None, stop_ids: Sequence[int] | None = (),
             prompt_cache: PromptCache | None = None) -> Iterator[int]:
    """Yield up to `max_new_tokens` new ids; stop after yielding one of `stop_ids`.

    Greedy at temperature 0; otherwise sampled (see sampling.py), reproducibly for a given seed.
    The backend samples where the logits are, so on a GPU only the chosen id (and the largest logit,
    checked to be finite: damaged weights give NaN, a ValueError) crosses to the host.
    With a `prompt_cache`, the prompt's tokens already in it are not run again.
    Bad arguments raise ValueError here, at the call; the model runs as the tokens are taken.
    """
    ids = model.check_ids(token_ids)
    if not isinstance(max_new_tokens, (int, np.integer)) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    limit = model.config.max_position_embeddings
    if len(ids) + max_new_tokens > limit:
        raise ValueError(f"prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                         f"context of {limit} tokens (max_position_embeddings)")
    check_args(temperature, top_k, top_p, min_p)
    if temperature == 0 and (top_k, top_p, min_p) != (None, None, None):
        user_warnings.warn("top_k, top_p and min_p filter what is sampled at a temperature above 0; at temperature "
                           "0 (generate's default) generation is greedy and they change nothing")
    if seed is not None and not (isinstance(seed, (int, np.integer)) and seed >= 0):
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    draw = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, rng=np.random.default_rng(seed))
    try:
        stops = set() if stop_ids is None else {operator.index(s) for s in stop_ids}
    except TypeError:
        raise ValueError(f"stop_ids must be a sequence of token ids (integers), got {stop_ids!r}") from None
    return _tokens(model, ids, max_new_tokens, draw, stops, prompt_cache)


def _tokens(model, ids: np.ndarray, max_new_tokens: int, draw: dict, stops: set[int],
            prompt_cache: PromptCache | None) -> Iterator[int]:
    """generate's tokens, its arguments checked; `draw`: the sampler's arguments."""
    if max_new_tokens == 0:
        return
    if prompt_cache is None:
        cache = model.new_cache(len(ids) + max_new_tokens)
    else:  # all but the prompt's last token, kept for the next call
        cache = prompt_cache.take(model, ids, len(ids) + max_new_tokens)
        _prefill(model, ids[cache.length:-1], cache)
        prompt_cache.keep(model, ids[:-1], cache)
    logits = _prefill(model, ids[cache.length:], cache)
    decode = model.ops.decoder(model, cache)  # on a GPU, steps replayed from a CUDA graph
    if prompt_cache is not None:
        decode = prompt_cache.guard(decode)
    for step in range(max_new_tokens):
        token = model.ops.sample(logits[0], **draw)
        yield token
        if token in stops or step == max_new_tokens - 1:
            return
        logits = decode(token)


def _prefill(model, ids: np.ndarray, cache: KVCache):
    """Run `ids` after the tokens in `cache`, in passes of PREFILL_CHUNK; the last one's logits [1, V]
    (None when ids is empty)."""
    logits = None
    for start in range(0, len(ids), PREFILL_CHUNK):
        logits = model.forward(ids[start:start + PREFILL_CHUNK], cache)  # [1, V]: the chunk's last position
    return logits
