"""Token generation: prefill the prompt once, then decode one token at a time with the KV cache."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

# Prompt tokens one forward pass takes at most: a longer prompt is prefilled in chunks through the KV
# cache, so its activations and the experts' scratch stay bounded (on a GPU, a 32k-token prompt in one
# pass would hold ~9 GB of expert products at once; 4096 tokens hold ~1.1 GB and keep the products large).
# model.logits runs long sequences in the same passes (32k tokens' logits alone are 26 GB).
PREFILL_CHUNK = 4096


def generate(model, token_ids: Sequence[int], max_new_tokens: int, *, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
             seed: int | None = None, stop_ids: Sequence[int] = ()) -> Iterator[int]:
    """Yield up to `max_new_tokens` new ids; stop after yielding one of `stop_ids`.

    Greedy at temperature 0; otherwise sampled (see sampling.py), reproducibly for a given seed.
    The backend samples where the logits are, so on a GPU only the chosen id crosses to the host.
    """
    ids = model.check_ids(token_ids)
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    limit = model.config.max_position_embeddings
    if len(ids) + max_new_tokens > limit:
        raise ValueError(f"prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                         f"context of {limit} tokens (max_position_embeddings)")
    rng = np.random.default_rng(seed)
    stops = {int(s) for s in stop_ids}
    if max_new_tokens == 0:
        return
    cache = model.new_cache(len(ids) + max_new_tokens)
    for start in range(0, len(ids), PREFILL_CHUNK):
        logits = model.forward(ids[start:start + PREFILL_CHUNK], cache)  # [1, V]: the chunk's last position
    decode = model.ops.decoder(model, cache)  # on a GPU, steps replayed from a CUDA graph
    for step in range(max_new_tokens):
        token = model.ops.sample(logits[0], temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                 rng=rng)
        yield token
        if token in stops or step == max_new_tokens - 1:
            return
        logits = decode(token)
