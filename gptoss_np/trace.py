"""What a forward pass saw, layer by layer: attention probabilities and routing decisions.

`model.trace(token_ids)` runs the sequence once with a `Trace` attached and returns one `LayerTrace`
per layer. It is for looking inside (the notebooks, debugging, routing statistics), not for speed:
the records are NumPy arrays on the host, computed with the NumPy references.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .kernels.attention import probabilities_ref

# T tokens, S keys seen, H query heads, E experts, A active experts per token


@dataclass
class LayerTrace:
    window: int | None  # the layer's sliding window (None: full attention)
    attention: np.ndarray = None  # [H, T, S] probability that query t of head h puts on key s
    sink: np.ndarray = None  # [H, T] probability that goes to the head's sink (the rest of the row)
    key_positions: np.ndarray = None  # [S] position of each key
    router_logits: np.ndarray = None  # [T, E]
    experts: np.ndarray = None  # [T, A] experts of exact top-k routing, best first
    tokens_per_expert: np.ndarray = None  # [E] tokens each expert actually ran
    dropped: int = 0  # (token, expert) pairs of exact top-k routing that did not run
    unrouted: int = 0  # tokens that ran no expert


@dataclass
class Trace:
    with_attention: bool = True  # attention maps take T * S * H floats per layer: skip for long inputs
    layers: list[LayerTrace] = field(default_factory=list)

    def attention(self, window, q, k, q_pos, k_pos, sinks, scale, to_numpy) -> None:
        """Record a layer's attention (starts the layer's record)."""
        if not self.with_attention:
            self.layers.append(LayerTrace(window=window))
            return
        q, k, q_pos, k_pos, sinks = (to_numpy(a) for a in (q, k, q_pos, k_pos, sinks))
        p, p_sink = probabilities_ref(q, k, q_pos, k_pos, sinks, window, scale)  # [G, R, T, S]
        G, R, T, S = p.shape
        self.layers.append(LayerTrace(window=window, attention=p.reshape(G * R, T, S),
                                      sink=p_sink.reshape(G * R, T), key_positions=k_pos))

    def routing(self, logits, experts, tokens_per_expert, dropped: int = 0, unrouted: int = 0) -> None:
        """Record the layer's routing (completes the record `attention` started)."""
        layer = self.layers[-1]
        layer.router_logits, layer.experts = logits, experts
        layer.tokens_per_expert, layer.dropped, layer.unrouted = tokens_per_expert, dropped, unrouted
