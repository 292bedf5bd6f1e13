"""The MoE layer's dispatch inside the model: grouped == per token, expert choice without drops ==
exact, the routing trace, and the load options."""

from __future__ import annotations

import numpy as np
import pytest

import gptoss_np
from gptoss_np.moe import moe
from conftest import hf_logits, rel_err


@pytest.fixture(scope="module")
def folder(checkpoint_dir):
    return checkpoint_dir("gqa4_sharded")  # 16 experts, top-4


def test_grouped_equals_per_token(folder):
    model = gptoss_np.load(folder)
    c, layer = model.config, model.layers[1]
    x = np.random.default_rng(0).standard_normal((23, c.hidden_size)).astype(np.float32)
    together = moe(model.ops, layer.moe, x, c.num_experts_per_tok, c.swiglu_limit, c.swiglu_alpha)
    alone = np.concatenate([moe(model.ops, layer.moe, x[t:t + 1], c.num_experts_per_tok, c.swiglu_limit,
                                c.swiglu_alpha) for t in range(23)])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-5 * np.abs(alone).max())


def roomy(folder):
    """The model with an expert-choice budget that drops nothing of 50 tokens, and 50 random ids."""
    c = gptoss_np.GptOssConfig.from_file(folder / "config.json")
    E, k = c.num_local_experts, c.num_experts_per_tok
    model = gptoss_np.load(folder, moe_dispatch="expert_choice", tokens_per_expert_ratio=E / k)
    assert model.dispatch_rule.budget(50, k, E) >= 50
    return model, np.random.default_rng(1).integers(0, model.config.vocab_size, 50)


def test_expert_choice_without_drops_is_exact(folder):
    model, ids = roomy(folder)
    assert rel_err(model.logits(ids), gptoss_np.load(folder).logits(ids)) <= 1e-6
    assert all(layer.dropped == 0 for layer in model.trace(ids))


def test_expert_choice_without_drops_is_transformers_top_k(folder, hf_model):
    model, ids = roomy(folder)
    assert rel_err(model.logits(ids), hf_logits(hf_model(folder), ids)) <= 1e-4


def test_tight_budget_drops_and_is_recorded(folder):
    model = gptoss_np.load(folder, moe_dispatch="expert_choice", tokens_per_expert_ratio=1.0)
    ids = np.random.default_rng(2).integers(0, model.config.vocab_size, 64)
    budget = model.dispatch_rule.budget(64, 4, 16)
    assert budget == 16
    layers = model.trace(ids)
    assert all(layer.tokens_per_expert.max() <= budget for layer in layers)
    assert sum(layer.dropped for layer in layers) > 0
    logits = model.logits(ids)
    assert np.isfinite(logits).all()
    assert rel_err(logits, gptoss_np.load(folder).logits(ids)) > 1e-4  # it does change the answer
    # decode of one token always runs its own k experts
    assert model.dispatch_rule.budget(1, 4, 16) is None


def test_auto_follows_the_seed_rule(folder):
    model = gptoss_np.load(folder, moe_dispatch="auto", tokens_per_expert_ratio=1.0)
    assert model.dispatch_rule.budget(64, 4, 16) == 16  # 3 * 16 <= 2 * 64: expert choice
    assert model.dispatch_rule.budget(8, 4, 16) is None  # 3 * 8 > 2 * 8: exact


def test_trace_of_exact_routing(folder):
    model = gptoss_np.load(folder)
    c = model.config
    ids = np.random.default_rng(3).integers(0, c.vocab_size, 30)
    layers = model.trace(ids)
    assert len(layers) == c.num_hidden_layers
    for i, layer in enumerate(layers):
        assert layer.attention.shape == (c.num_attention_heads, 30, 30)
        np.testing.assert_allclose(layer.attention.sum(-1) + layer.sink, 1, rtol=1e-5)
        q = np.arange(30)[:, None]
        s = layer.key_positions[None, :]
        hidden = (s > q) | ((q - s >= layer.window) if layer.window else False)
        assert np.all(layer.attention[:, hidden] == 0)
        assert layer.window == c.window(i)
        assert layer.router_logits.shape == (30, c.num_local_experts)
        assert layer.tokens_per_expert.sum() == 30 * c.num_experts_per_tok
        np.testing.assert_array_equal(np.sort(layer.experts, axis=1),
                                      np.sort(np.argsort(-layer.router_logits, axis=1)[:, :4], axis=1))
        assert layer.dropped == layer.unrouted == 0


def test_trace_without_attention_keeps_windows_and_routing(folder):
    """model.trace(ids, attention=False) skips the attention maps only: each layer still says its window,
    and its routing is the same, the exact top-k experts best first (the highest router logit first)."""
    model = gptoss_np.load(folder)
    c = model.config
    ids = np.random.default_rng(4).integers(0, c.vocab_size, 20)
    full, light = model.trace(ids), model.trace(ids, attention=False)
    assert len(light) == c.num_hidden_layers
    for i, (layer, same) in enumerate(zip(light, full)):
        assert layer.window == c.window(i) and layer.attention is None and layer.sink is None
        np.testing.assert_array_equal(layer.router_logits, same.router_logits)
        np.testing.assert_array_equal(layer.experts, same.experts)
        chosen = np.take_along_axis(layer.router_logits, layer.experts, axis=1)  # [T, k]
        assert (chosen == -np.sort(-layer.router_logits, axis=1)[:, :c.num_experts_per_tok]).all()


def expert_choice_by_hand(logits, k, budget):
    """dispatch.py's rule, one pair at a time: tokens rank experts by logit; each expert takes the `budget`
    tokens that rank it best (then: the higher logit); each token keeps its k best-ranked experts that took it.
    Returns tokens per expert, the dropped (token, top-k expert) pairs and the tokens left with no expert."""
    N, E = logits.shape
    rank = [{e: i for i, e in enumerate(sorted(range(E), key=lambda e: -logits[t, e]))} for t in range(N)]
    took = [set(sorted(range(N), key=lambda t: (rank[t][e], -logits[t, e]))[:budget]) for e in range(E)]
    kept = [sorted((e for e in range(E) if t in took[e]), key=lambda e: rank[t][e])[:k] for t in range(N)]
    tokens_per_expert = [sum(e in mine for mine in kept) for e in range(E)]
    dropped = sum(rank[t][e] < k and e not in kept[t] for t in range(N) for e in range(E))
    return tokens_per_expert, dropped, sum(not mine for mine in kept)


def test_trace_of_expert_choice_counts_drops_and_unrouted_tokens(folder):
    """With 256 tokens and 8 per expert, at most 16 * 8 tokens run an expert: the rest are unrouted. Each
    layer's record agrees with the rule worked by hand from its router logits."""
    model = gptoss_np.load(folder, moe_dispatch="expert_choice", tokens_per_expert_ratio=0.1)
    c = model.config
    assert model.dispatch_rule.budget(256, c.num_experts_per_tok, c.num_local_experts) == 8
    ids = np.random.default_rng(5).integers(0, c.vocab_size, 256)
    for layer in model.trace(ids, attention=False):
        tokens_per_expert, dropped, unrouted = expert_choice_by_hand(layer.router_logits, c.num_experts_per_tok, 8)
        np.testing.assert_array_equal(layer.tokens_per_expert, tokens_per_expert)
        assert (layer.dropped, layer.unrouted) == (dropped, unrouted)
        assert unrouted >= 256 - 16 * 8


def test_bad_dispatch_options(folder):
    with pytest.raises(ValueError, match="moe_dispatch must be one of"):
        gptoss_np.load(folder, moe_dispatch="random")
    with pytest.raises(ValueError, match="tokens_per_expert_ratio must be positive"):
        gptoss_np.load(folder, moe_dispatch="expert_choice", tokens_per_expert_ratio=0)
