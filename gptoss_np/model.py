"""The gpt-oss transformer.

    x = embed(tokens)
    for each layer:
        x = x + attention(rmsnorm(x))      # sinks, GQA, RoPE (YaRN), sliding window on some layers
        x = x + moe(rmsnorm(x))            # top-k of E experts, MXFP4 weights, clamped SwiGLU
    logits = lm_head(rmsnorm(x))

The arithmetic lives in `ops` (see backend.py), so the same code runs on the CPU and the GPU.
Each residual add `x + ...` is done by the sublayer's last op (the o projection, the experts' combine),
given x as `residual`: the same sum, one GPU launch fewer per sublayer. On the GPU, a decode step's
rmsnorm is done by the matrix-vector product that reads it (backend_cuda.Normed), and its top-k routing by
the experts' first product (backend_cuda.Routed): one launch fewer each.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from tqdm import tqdm

from . import backend, hub, rope
from . import generate as generation
from .cache import KVCache
from .checkpoint import EMBED, FINAL_NORM, LM_HEAD, Checkpoint
from .config import GptOssConfig
from .dispatch import DispatchRule
from .moe import MoEWeights, moe
from .trace import Trace

# T new tokens, S keys attended (cached and new), D hidden, H q-heads, G kv-heads, Dh head dim, V vocab

_PROGRESS_BYTES = 1 << 30  # show a progress bar when loading checkpoints larger than this
_PROGRESS_DELAY_S = 2.0  # and one through the layers when a forward pass of several tokens takes longer


@dataclass
class AttentionWeights:
    qkv: np.ndarray  # [(H + 2G) * Dh, D]: the q, k and v projections stacked, one matmul for the three
    o: np.ndarray  # [D, H*Dh]
    qkv_bias: np.ndarray | None  # [(H + 2G) * Dh]
    o_bias: np.ndarray | None  # [D]
    sinks: np.ndarray  # [H]


@dataclass
class Layer:
    attn_norm: np.ndarray  # [D]
    attn: AttentionWeights
    mlp_norm: np.ndarray  # [D]
    moe: MoEWeights


class GptOss:
    """A loaded model. `logits` scores a sequence, `generate` continues it."""

    def __init__(self, checkpoint: Checkpoint, ops, progress: bool | None = None,
                 dispatch_rule: DispatchRule = DispatchRule()):
        self.config: GptOssConfig = checkpoint.config
        self.ops = ops
        self.dispatch_rule = dispatch_rule  # how MoE layers route several tokens
        self.progress = progress
        c = self.config
        ops.check_room(checkpoint.nbytes)  # a clear error before loading what cannot fit
        show = progress if progress is not None else checkpoint.nbytes > _PROGRESS_BYTES
        self.layers = [self._layer(checkpoint.layer(i))
                       for i in tqdm(range(c.num_hidden_layers), desc="loading layers", disable=not show)]
        self.embedding = ops.matrix(checkpoint.tensor(EMBED))  # [V, D]
        self.norm = ops.vector(checkpoint.tensor(FINAL_NORM))  # [D]
        self.lm_head = self.embedding if checkpoint.ties_lm_head else ops.matrix(checkpoint.tensor(LM_HEAD))  # [V, D]
        inv_freq, self.rope_scale = rope.inv_freq_and_scale(c)
        self.inv_freq = ops.vector(inv_freq)  # [Dh/2]

    def _layer(self, t: dict[str, np.ndarray]) -> Layer:
        ops = self.ops
        has_bias = self.config.attention_bias
        attn = AttentionWeights(
            qkv=ops.matrix(t["q"], t["k"], t["v"]), o=ops.matrix(t["o"]),
            qkv_bias=ops.vector(t["q_bias"], t["k_bias"], t["v_bias"]) if has_bias else None,
            o_bias=ops.vector(t["o_bias"]) if has_bias else None, sinks=ops.vector(t["sinks"]))
        experts = MoEWeights(
            router=ops.matrix(t["router"]), router_bias=ops.vector(t["router_bias"]),
            gate_up_blocks=ops.packed(t["gate_up_blocks"]), gate_up_scales=ops.packed(t["gate_up_scales"]),
            gate_up_bias=ops.vector(t["gate_up_bias"]),
            down_blocks=ops.packed(t["down_blocks"]), down_scales=ops.packed(t["down_scales"]),
            down_bias=ops.vector(t["down_bias"]))
        return Layer(ops.vector(t["attn_norm"]), attn, ops.vector(t["mlp_norm"]), experts)

    # ------------------------------------------------------------------ the transformer

    def forward(self, token_ids: np.ndarray, cache: KVCache, all_logits: bool = False,
                trace: Trace | None = None, positions=None) -> np.ndarray:
        """Run new tokens [T] after the `cache.length` tokens already in `cache`; returns the
        logits [T, V] (all_logits) or [1, V] (the last position's), and advances the cache.
        A `trace` records each layer's attention and routing. `positions` [T] (an ops.xp array
        holding cache.length, cache.length + 1, ...) is for callers that keep the position in
        device memory (cuda_graph.py); by default it is made here."""
        c, ops = self.config, self.ops
        if positions is None:
            positions = ops.xp.arange(cache.length, cache.length + len(token_ids))  # [T], where ops compute
        cos, sin = ops.rope_tables(self.inv_freq, self.rope_scale, positions)  # [T, Dh/2]
        x = ops.embed(self.embedding, token_ids)  # [T, D]
        for i, layer in enumerate(self._layers_shown(len(token_ids))):
            h = ops.rmsnorm(x, layer.attn_norm, c.rms_norm_eps)  # [T, D]
            x = self.attention(i, layer.attn, h, positions, cos, sin, cache, trace, residual=x)  # x + attention(h)
            h = ops.rmsnorm(x, layer.mlp_norm, c.rms_norm_eps)  # [T, D]
            x = moe(ops, layer.moe, h, c.num_experts_per_tok, c.swiglu_limit, c.swiglu_alpha,
                    self.dispatch_rule, trace, residual=x)  # x + moe(h)
        cache.length += len(token_ids)
        x = x if all_logits else x[-1:]
        return ops.linear(ops.rmsnorm(x, self.norm, c.rms_norm_eps), self.lm_head)  # [T or 1, V]

    def _layers_shown(self, T: int):
        """self.layers, for a pass of T tokens; for T > 1 as a progress bar that appears when the pass
        takes more than _PROGRESS_DELAY_S (a long prompt on a CPU takes minutes) and is erased at its end,
        on a terminal (progress=None), always (True) or never (False)."""
        if T == 1 or self.progress is False:
            return self.layers
        return tqdm(self.layers, desc=f"{T} tokens through the layers", unit="layer", delay=_PROGRESS_DELAY_S,
                    leave=False, disable=None if self.progress is None else False)

    def attention(self, i, w: AttentionWeights, x, positions, cos, sin, cache: KVCache, trace=None, residual=None):
        """x [T, D] -> [T, D]: causal self-attention with sinks over the cached and new tokens, plus
        `residual` [T, D] if given (added by the o projection)."""
        c, ops = self.config, self.ops
        T, H, G, Dh = x.shape[0], c.num_attention_heads, c.num_key_value_heads, c.head_dim
        window, scale = c.window(i), Dh ** -0.5  # window: None on full-attention layers
        qkv = ops.linear(x, w.qkv, w.qkv_bias).reshape(T, H + 2 * G, Dh)  # [T, H + 2G, Dh]: q, k, v heads
        qk = ops.rope(qkv[:, :H + G], cos, sin)  # [T, H + G, Dh]: q and k rotated together
        q, k, v = qk[:, :H], qk[:, H:], qkv[:, H + G:]  # [T, H, Dh], [T, G, Dh], [T, G, Dh]
        k_all, v_all, k_pos = cache.update(i, k, v, positions)  # [S, G, Dh], [S, G, Dh], [S]
        o = ops.attention(q, k_all, v_all, positions, k_pos, w.sinks, window, scale)  # [T, H, Dh]
        if trace is not None:
            trace.attention(window, q, k_all, positions, k_pos, w.sinks, scale, ops.to_numpy)
        return ops.linear(o.reshape(T, H * Dh), w.o, w.o_bias, residual=residual)  # [T, D]

    # ------------------------------------------------------------------ public API

    def new_cache(self, capacity: int = 256) -> KVCache:
        return KVCache(self.config, capacity, self.ops)

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        """The logits [T, vocab_size] (float32) at every position of one sequence. A sequence longer than
        generate.PREFILL_CHUNK runs in passes of that many tokens through the KV cache, as generate()
        prefills it, so that the device holds one pass's activations and logits, not the whole text's."""
        ids = self.check_ids(token_ids)
        cache, step = self.new_cache(len(ids)), generation.PREFILL_CHUNK
        return np.concatenate([self.ops.to_numpy(self.forward(ids[start:start + step], cache, all_logits=True))
                               for start in range(0, len(ids), step)])

    def trace(self, token_ids: Sequence[int], attention: bool = True) -> list:
        """Run one sequence and return, per layer, what it saw (trace.LayerTrace): attention
        probabilities and sink shares (unless attention=False), router logits, chosen experts,
        tokens per expert, drops."""
        ids = self.check_ids(token_ids)
        trace = Trace(with_attention=attention)
        self.forward(ids, self.new_cache(len(ids)), trace=trace)
        return trace.layers

    def generate(self, token_ids: Sequence[int], max_new_tokens: int, temperature: float = 0.0, *,
                 top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
                 seed: int | None = None, stop_ids: Sequence[int] | None = (),
                 prompt_cache: generation.PromptCache | None = None) -> Iterator[int]:
        """Yield up to `max_new_tokens` new token ids (greedy at temperature 0), using the KV cache.
        Stops after yielding a token in `stop_ids`. A `prompt_cache` (gptoss_np.PromptCache) given to
        successive calls keeps the KV cache between them, so a prompt that extends the previous one
        prefills only its new tokens."""
        return generation.generate(self, token_ids, max_new_tokens, temperature=temperature, top_k=top_k,
                                   top_p=top_p, min_p=min_p, seed=seed, stop_ids=stop_ids,
                                   prompt_cache=prompt_cache)

    def check_ids(self, token_ids: Sequence[int]) -> np.ndarray:
        """token_ids as an int64 array [T]; ValueError if empty, not 1-D, out of the vocabulary or longer than
        the model's context."""
        if isinstance(token_ids, (str, bytes)):
            raise ValueError("token_ids must be token ids, not text: encode the text with the tokenizer first "
                             "(gptoss_np.tokenizer.Tokenizer, or harmony.render_conversation for a chat)")
        ids = np.asarray(list(token_ids) if isinstance(token_ids, Iterator) else token_ids)  # (a generator: its ids)
        if ids.ndim != 1:
            raise ValueError(f"token_ids must be one sequence (1-D), got shape {ids.shape}")
        if ids.size == 0:
            raise ValueError("token_ids is empty: give at least one token")
        V = self.config.vocab_size
        python_ints = ids.dtype == object and all(isinstance(i, int) for i in ids)  # some beyond int64
        if not (np.issubdtype(ids.dtype, np.integer) or python_ints):
            raise ValueError(f"token_ids must be integers, got {ids.dtype}")
        outside = [not 0 <= i < V for i in ids] if python_ints else (ids < 0) | (ids >= V)
        bad = np.flatnonzero(outside)
        if bad.size:
            raise ValueError(f"token id {ids[bad[0]]} at position {bad[0]} is outside the vocabulary "
                             f"(vocab_size {V}: ids 0..{V - 1})")
        if ids.size > self.config.max_position_embeddings:
            raise ValueError(f"the sequence ({ids.size} tokens) is longer than the model's context of "
                             f"{self.config.max_position_embeddings} tokens (max_position_embeddings)")
        return ids.astype(np.int64)


def load(path: str | Path, device: str = "cpu", progress: bool | None = None, *, moe_dispatch: str = "exact",
         tokens_per_expert_ratio: float = 2.0, cuda_graphs: bool = True, quantize_experts: bool = False) -> GptOss:
    """Load a Hugging Face gpt-oss checkpoint on "cpu", "cuda" or "auto" (the GPU when one is usable, its
    kernels run the model and the weights fit in its free memory, else the CPU; `model.ops.reason` says
    why): its folder, or its hub id (`openai/gpt-oss-20b`) when it is in the local Hugging Face cache
    (see hub.py; nothing is downloaded).

    progress: progress bars on stderr, while loading (None: for checkpoints over 1 GB) and through the
    layers of a prompt's forward pass when it takes more than 2 s (None: on a terminal); True: always,
    False: never.

    moe_dispatch: "exact" top-k routing (as trained; the default), "expert_choice" (each expert takes
    at most tokens_per_expert_ratio * N * k / E tokens of an N-token forward pass, rounded up to a
    multiple of 8; generate() and logits() run sequences longer than generate.PREFILL_CHUNK in passes
    of that many tokens) or "auto" (expert choice only when that budget is at most 2N/3 tokens, the
    seed's rule).
    cuda_graphs: on a GPU, generate() replays each decode step from a CUDA graph (one launch instead
    of hundreds); False launches op by op (for debugging and comparison).
    quantize_experts: a checkpoint whose experts are dense (fine-tuned or dequantized, in bf16) has them
    rounded to MXFP4 as they load, which the engine runs; without it such a checkpoint is an error.
    """
    rule = DispatchRule(moe_dispatch, tokens_per_expert_ratio)
    checkpoint = Checkpoint(hub.resolve(path), quantize_experts=quantize_experts)
    ops = backend.select(device, cuda_graphs=cuda_graphs, weights_bytes=checkpoint.nbytes, config=checkpoint.config)
    return GptOss(checkpoint, ops, progress=progress, dispatch_rule=rule)
