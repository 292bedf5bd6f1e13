"""The CPU engine against Hugging Face transformers (float32, eager) on synthetic checkpoints."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest

import gptoss_np
from gptoss_np import generate as generation, synthetic
from conftest import (CHECKPOINTS, assert_greedy, hf_logits, load_hf, random_checkpoint, random_config, rel_err,
                      rewrite_tensors, write)
from gptoss_np.cache import KVCache
from gptoss_np.sampling import filter_probs

TOL = 1e-4  # relative error on float32 logits


def prompt(model, length: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, model.config.vocab_size, length)


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_logits_match_transformers(name, checkpoint_dir, hf_model, monkeypatch):
    monkeypatch.setattr("gptoss_np.kernels.attention.QUERY_PASS", 32)  # prefill attention in 4 passes
    folder = checkpoint_dir(name)
    model = gptoss_np.load(folder)
    # longer than the sliding windows and than YaRN's original_max_position_embeddings
    ids = prompt(model, 100)
    ours = model.logits(ids)
    assert ours.dtype == np.float32 and ours.shape == (100, model.config.vocab_size)
    ref = hf_logits(hf_model(folder), ids)
    assert rel_err(ours, ref) <= TOL
    assert ref.std() > 0.5  # the synthetic weights give logits with a real spread


@pytest.mark.parametrize("seed", range(8))
def test_random_configs_match_transformers(seed, tmp_path, hf_model):
    """Random small models (conftest.random_checkpoint): the logits at every position of a random prompt,
    and a greedy continuation that takes transformers' argmax at every step (scored by its forward over
    the whole continuation, not its generate(): see conftest.CHECKPOINTS["window1"])."""
    folder = random_checkpoint(tmp_path, seed)
    model, hf = gptoss_np.load(folder), hf_model(folder)
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, model.config.vocab_size, int(rng.integers(1, 150)))
    assert rel_err(model.logits(ids), hf_logits(hf, ids)) <= TOL
    start = ids[:20]
    new = list(model.generate(start, 8))
    steps = hf_logits(hf, np.concatenate([start, new]))[len(start) - 1:-1]  # [8, V]: the logits each new token follows
    assert_greedy(new, steps, TOL)


def store_lm_head(folder, values: str) -> None:
    """Rewrite `folder`'s checkpoint with an lm_head.weight beside its embedding: "other" (the embedding's
    rows reversed), "same" (a copy) or "same_in_f32" (its values, stored as F32); or "instead" of it."""
    from gptoss_np.kernels.bf16 import bf16_to_f32

    def add(tensors):
        dtype, embedding = tensors["model.embed_tokens.weight"]
        if values == "instead":
            del tensors["model.embed_tokens.weight"]
        tensors["lm_head.weight"] = {"other": (dtype, embedding[::-1].copy()), "same": (dtype, embedding.copy()),
                                     "same_in_f32": ("F32", bf16_to_f32(embedding)),
                                     "instead": (dtype, embedding)}[values]
    rewrite_tensors(folder, add)


def test_quantizing_a_tied_checkpoint_keeps_its_own_lm_head(tmp_path, capsys):
    """A dense, tied checkpoint whose lm_head.weight has other values: quantize saves that lm_head and a
    config.json that no longer ties it, so the result loads to the same logits, with nothing to warn of."""
    import json
    from gptoss_np import quantize
    dense = synthetic.write_dense(tmp_path / "dense", write(tmp_path / "tied", "mha_tied"))
    store_lm_head(dense, "other")
    with pytest.warns(UserWarning, match="tie_word_embeddings"):
        source = gptoss_np.load(dense, quantize_experts=True)
        folder = quantize.quantize_checkpoint(dense, tmp_path / "mxfp4")
    assert json.loads((folder / "config.json").read_text())["tie_word_embeddings"] is False
    assert quantize.main([str(dense), str(tmp_path / "by_command")]) == 0  # its warning: one line, no file
    assert "python -m gptoss_np.quantize: warning: " in capsys.readouterr().err
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = gptoss_np.load(folder)
    ids = prompt(model, 30)
    np.testing.assert_array_equal(model.logits(ids), source.logits(ids))


YARN = {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
        "original_max_position_embeddings": 64, "truncate": False}


@pytest.mark.parametrize("overrides", [
    dict(rope_scaling={**YARN, "mscale": 1.0, "mscale_all_dim": 1.0}),  # DeepSeek's YaRN keys: cos/sin unscaled
    dict(rope_scaling={**YARN, "mscale": 0.5, "mscale_all_dim": 1.25}),
    dict(rope_scaling={**YARN, "mscale": 0.5}),  # one of them alone changes nothing
    dict(rope_scaling=YARN, original_max_position_embeddings=16),  # over rope_scaling's 64
    dict(rope_scaling=YARN, rope_parameters={**YARN, "factor": 4.0, "rope_theta": 1000.0}),  # rope_scaling counts
    # and rope_parameters' theta does not: without a top-level one, gpt-oss's 150000
    dict(rope_scaling=YARN, rope_parameters={**YARN, "rope_theta": 1000.0}, rope_theta=None),
    dict(rope_scaling={k: v for k, v in YARN.items() if k != "truncate"}),  # YaRN's default: truncated
], ids=["mscale_equal", "mscale_ratio", "mscale_alone", "top_level_original", "scaling_and_parameters",
        "default_theta", "truncate_left_out"])
def test_rope_settings_beyond_gpt_oss_s_are_read_as_transformers_reads_them(overrides, tmp_path, hf_model):
    """config.json keys that gpt-oss's files do not hold but a fine-tune's may, which transformers reads:
    the engine reads them alike (before, it ignored the first four, took rope_parameters over
    rope_scaling, and without rope_theta beside rope_scaling took rope_parameters'), so the logits past
    YaRN's original context are transformers'. An override of None leaves the key out."""
    config = synthetic.config_dict("tiny", **overrides)
    folder = synthetic.write_checkpoint(tmp_path, {k: v for k, v in config.items() if overrides.get(k, 0) is not None})
    model = gptoss_np.load(folder)
    ids = prompt(model, 100)
    assert rel_err(model.logits(ids), hf_logits(hf_model(folder), ids)) <= TOL


@pytest.mark.parametrize("head", ["other", "same", "same_in_f32", "instead"])
def test_a_tied_checkpoint_that_stores_lm_head_loads_as_transformers_loads_it(head, tmp_path, hf_model):
    """tie_word_embeddings, and lm_head.weight stored all the same: with other values than the embedding,
    transformers uses it (untied, with a warning), and so does the engine, saying so, where before it
    took the embedding; with the embedding's values (as a converted torch checkpoint has; in another
    dtype too) the embedding serves, held once, and nothing is said. Stored instead of the embedding,
    it is the embedding too (transformers ties either way; the engine used to say the embedding was
    missing)."""
    folder = write(tmp_path, "mha_tied")
    store_lm_head(folder, head)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = gptoss_np.load(folder)
    said = [str(w.message) for w in caught if "tie_word_embeddings" in str(w.message)]
    assert (model.lm_head is model.embedding) == (head != "other") and len(said) == (head == "other")
    assert all(w.filename == __file__ for w in caught if "tie_word_embeddings" in str(w.message))
    ids = prompt(model, 40)
    assert rel_err(model.logits(ids), hf_logits(hf_model(folder), ids)) <= TOL


def test_far_positions_match_transformers(tmp_path, hf_model):
    """gpt-oss-20b's RoPE (head dim 64, theta 150000, YaRN 32x over 4096 positions) at positions up to
    its context's end, through forward's `positions` and transformers' position_ids: the angles there
    are what a long conversation's last tokens see, which no prompt a test can afford reaches."""
    config = synthetic.config_dict("tiny", head_dim=64, num_attention_heads=4, num_key_value_heads=2,
                                   hidden_size=128, rope_theta=150000.0, max_position_embeddings=131072,
                                   rope_scaling={**YARN, "original_max_position_embeddings": 4096})
    folder = synthetic.write_checkpoint(tmp_path, config)
    model, hf = gptoss_np.load(folder), hf_model(folder)
    ids = prompt(model, 64)
    import torch
    for start in (4096, 32768, 100000, 131072 - 64):
        positions = np.arange(start, start + len(ids))
        ours = model.forward(ids, model.new_cache(len(ids)), all_logits=True, positions=positions)
        with torch.no_grad():
            ref = hf(torch.tensor(ids)[None], position_ids=torch.tensor(positions)[None]).logits[0].numpy()
        assert rel_err(ours, ref) <= TOL, start


@pytest.mark.slow
def test_gpt_oss_20b_widths_match_transformers(tmp_path):
    """Two layers, a sliding and a full one, of gpt-oss-20b's real widths (hidden and intermediate 2880:
    90 MXFP4 blocks a row; 64 query heads and 8 key/value heads of 64; 32 experts, top 4; window 128)
    and a small vocabulary: the logits of a prompt longer than the window, and the greedy continuation
    (decode steps), are transformers'. transformers holds 6.4 GB of float32 experts (13 GB at its peak)."""
    pytest.importorskip("transformers")
    import torch
    config = synthetic.config_dict("gpt-oss-20b", num_hidden_layers=2, vocab_size=4096, eos_token_id=None,
                                   pad_token_id=None)
    folder = synthetic.write_checkpoint(tmp_path, config, progress=False)
    model = gptoss_np.load(folder)
    ids = prompt(model, 200, seed=4)
    ours, continuation = model.logits(ids), list(model.generate(ids[:150], 8))
    del model
    hf = load_hf(folder)
    ref = hf_logits(hf, ids)
    assert rel_err(ours, ref) <= TOL and ref.std() > 0.5
    with torch.no_grad():
        out = hf.generate(torch.tensor(ids[:150])[None], max_new_tokens=8, do_sample=False, eos_token_id=None,
                          pad_token_id=0)
    assert continuation == out[0, 150:].tolist()


def test_openais_original_format_matches_transformers(checkpoint_dir, hf_model, tmp_path):
    """The tiny checkpoint rewritten in OpenAI's original format (names, fused qkv, OpenAI's config.json):
    its logits and greedy continuation are transformers' on the Hugging Face files."""
    import torch
    folder = checkpoint_dir("tiny")
    model = gptoss_np.load(synthetic.write_original(tmp_path / "original", folder))
    ids = prompt(model, 100, seed=5)
    hf = hf_model(folder)
    assert rel_err(model.logits(ids), hf_logits(hf, ids)) <= TOL
    with torch.no_grad():
        out = hf.generate(torch.tensor(ids[:30])[None], max_new_tokens=10, do_sample=False, eos_token_id=None,
                          pad_token_id=0)
    assert list(model.generate(ids[:30], 10)) == out[0, 30:].tolist()


@pytest.mark.parametrize("seed", [None, 1, 2, 3])
def test_openais_original_format_matches_openais_reference(seed, tmp_path):
    """OpenAI's own reference implementation (gpt_oss.torch.model, widened to float32) reads the files
    in the original format: the engine's logits on them are its logits. The test above checks the two
    formats against each other, both written by synthetic.py; this one checks the engine's reading of
    the format (names, the qkv split, config.json's keys, which layers slide) against code that is not
    its own. Models with gpt-oss-20b's RoPE, which the reference asserts is in YaRN's range: one of 4
    layers (2 sliding, window 8), and random ones (conftest.random_config, held to what the format
    can say) over up to 150 tokens."""
    torch = pytest.importorskip("torch")
    reference = pytest.importorskip("gpt_oss.torch.model", reason="OpenAI's reference implementation is not "
                                    "installed: pip install --no-deps --ignore-requires-python gpt-oss==0.0.9")
    rng = np.random.default_rng(seed)
    drawn = {} if seed is None else random_config(rng)
    L = drawn.get("num_hidden_layers", 4)
    config = synthetic.config_dict("tiny", **{
        **dict(head_dim=64, num_attention_heads=4, num_key_value_heads=2, hidden_size=128), **drawn,
        "num_hidden_layers": L, "layer_types": [("sliding_attention", "full_attention")[i % 2] for i in range(L)],
        "head_dim": max(drawn.get("head_dim", 64), 6), "attention_bias": True, "tie_word_embeddings": False,
        "rms_norm_eps": 1e-5, "swiglu_alpha": 1.702, "rope_theta": 150000.0, "max_position_embeddings": 131072,
        "rope_scaling": {**YARN, "original_max_position_embeddings": 4096}})
    folder = synthetic.write_original(tmp_path / "original", synthetic.write_checkpoint(tmp_path / "hf", config))
    model = gptoss_np.load(folder)
    ids = prompt(model, 100 if seed is None else int(rng.integers(1, 150)))
    with torch.no_grad():
        ref = reference.Transformer.from_checkpoint(str(folder), device="cpu").float()(torch.tensor(ids)).numpy()
    assert rel_err(model.logits(ids), ref) <= TOL


def test_dense_experts_quantized_as_they_load_match_transformers(checkpoint_dir, tmp_path):
    """A checkpoint with dense bf16 experts (as fine-tuned ones hold them; here the tiny checkpoint's
    experts dequantized, so MXFP4 holds them exactly): with quantize_experts=True its logits are
    transformers' on that dense checkpoint; without, it is a CheckpointError that names the option."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    folder = synthetic.write_dense(tmp_path / "dense", checkpoint_dir("tiny"))
    with pytest.raises(gptoss_np.CheckpointError, match="experts are stored dense.*quantize_experts=True"):
        gptoss_np.load(folder)
    model = gptoss_np.load(folder, quantize_experts=True)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    ids = prompt(model, 100, seed=6)
    assert rel_err(model.logits(ids), hf_logits(hf.eval(), ids)) <= TOL


def test_a_quantized_save_of_dense_experts_matches_transformers(checkpoint_dir, hf_model, tmp_path):
    """quantize.quantize_checkpoint writes a dense checkpoint in the released MXFP4 layout (sharded by
    layer, with an index): it loads without quantize_experts, and transformers reads it as it reads the
    released files, to the same logits."""
    from gptoss_np import quantize
    dense = synthetic.write_dense(tmp_path / "dense", checkpoint_dir("gqa4_sharded"))
    folder = quantize.quantize_checkpoint(dense, tmp_path / "mxfp4")
    model = gptoss_np.load(folder)
    ids = prompt(model, 80, seed=7)
    assert rel_err(model.logits(ids), hf_logits(hf_model(folder), ids)) <= TOL
    assert (folder / "generation_config.json").read_text() == (dense / "generation_config.json").read_text()


@pytest.mark.parametrize("name", ["tiny", "gqa4_sharded"])
def test_trace_matches_transformers(name, checkpoint_dir, hf_model):
    """What model.trace shows (the notebooks' attention maps, sink shares and router logits) against
    transformers' output_attentions (its eager softmax over the keys and the sink, the sink's column
    dropped) and output_router_logits, past the sliding window."""
    import torch
    folder = checkpoint_dir(name)
    model, hf = gptoss_np.load(folder), hf_model(folder)
    ids = prompt(model, 40, seed=5)
    layers = model.trace(ids)
    with torch.no_grad():
        out = hf(torch.tensor(ids)[None], output_attentions=True, output_router_logits=True)
    assert len(layers) == len(out.attentions) == len(out.router_logits) == model.config.num_hidden_layers
    for layer, attention, router_logits in zip(layers, out.attentions, out.router_logits):
        theirs = attention[0].numpy()[:, :, layer.key_positions]  # [H, T, S]: the keys the layer kept
        assert rel_err(layer.attention, theirs) <= TOL
        assert rel_err(layer.sink, 1 - attention[0].numpy().sum(-1, dtype=np.float64)) <= TOL
        assert rel_err(layer.router_logits, router_logits.numpy()) <= TOL


def test_a_trace_passed_to_forward_after_cached_tokens_matches_transformers(checkpoint_dir, hf_model):
    """A Trace() (attention maps by default) given to forward after 16 tokens are in the cache records the 8
    new queries' rows over the keys the layer attends to (key_positions: the cached and the new ones, a
    sliding layer's ring in its own order), as transformers' attention over the whole text has them."""
    import torch
    from gptoss_np.trace import Trace
    folder = checkpoint_dir("tiny")
    model, hf = gptoss_np.load(folder), hf_model(folder)
    ids = prompt(model, 24, seed=6)
    cache, trace = model.new_cache(24), Trace()
    model.forward(ids[:16], cache)
    model.forward(ids[16:], cache, trace=trace)
    with torch.no_grad():
        out = hf(torch.tensor(ids)[None], output_attentions=True, output_router_logits=True)
    assert len(trace.layers) == len(out.attentions) == model.config.num_hidden_layers
    for layer, attention, router_logits in zip(trace.layers, out.attentions, out.router_logits):
        theirs = attention[0].numpy()[:, 16:]  # [H, 8, 24]
        assert sorted(layer.key_positions) == list(range(24 - len(layer.key_positions), 24))
        assert rel_err(layer.attention, theirs[:, :, layer.key_positions]) <= TOL
        assert rel_err(layer.sink, 1 - theirs.sum(-1, dtype=np.float64)) <= TOL
        assert rel_err(layer.router_logits, router_logits.numpy()[16:]) <= TOL


def test_damaged_weights_are_an_error_not_gibberish(checkpoint_dir, tmp_path):
    """A NaN in the weights (as a corrupted download leaves) makes NaN logits; generate says so instead of
    sampling from them."""
    from gptoss_np.checkpoint import LM_HEAD
    folder = tmp_path / "damaged"
    shutil.copytree(checkpoint_dir("tiny"), folder)

    def damage(tensors):
        tensors[LM_HEAD][1][7, 3] = 0x7FC0  # a bf16 NaN in one weight of the lm_head
    rewrite_tensors(folder, damage)
    model = gptoss_np.load(folder)
    with pytest.raises(ValueError, match="NaN or infinity.*damaged weights"):
        next(model.generate(prompt(model, 10), 4))


def test_a_decode_step_with_nan_logits_is_an_error_too(checkpoint_dir, monkeypatch):
    """Every step's logits are checked, not only the prompt's: the tokens before come, then the error."""
    model = gptoss_np.load(checkpoint_dir("tiny"))
    decoder = model.ops.decoder

    def nan_at_the_third_step(model, cache):
        decode, steps = decoder(model, cache), []

        def step(token):
            steps.append(token)
            logits = decode(token)
            return np.full_like(logits, np.nan) if len(steps) == 3 else logits
        return step
    monkeypatch.setattr(model.ops, "decoder", nan_at_the_third_step)
    tokens = model.generate(prompt(model, 10), 8)
    assert len([next(tokens) for _ in range(3)]) == 3
    with pytest.raises(ValueError, match="NaN or infinity.*damaged weights"):
        next(tokens)


@pytest.mark.parametrize("name", ["tiny", "gqa4_sharded", "window1"])
def test_prefill_then_decode_equals_full_sequence(name, checkpoint_dir, hf_model):
    folder = checkpoint_dir(name)
    model = gptoss_np.load(folder)
    ids = prompt(model, 60, seed=2)
    full = model.logits(ids)
    ref = hf_logits(hf_model(folder), ids)
    # prefill 20, a second prefill chunk of 25 (longer than the sliding window, with a warm cache),
    # then one token at a time
    cache = model.new_cache(8)
    parts = [model.forward(ids[:20], cache, all_logits=True), model.forward(ids[20:45], cache, all_logits=True)]
    parts += [model.forward(ids[t:t + 1], cache) for t in range(45, 60)]
    stepped = np.concatenate(parts)
    assert cache.length == 60
    assert rel_err(stepped, full) <= TOL
    assert rel_err(stepped, ref) <= TOL


def test_long_sequences_run_in_passes(checkpoint_dir, hf_model, monkeypatch):
    """model.logits of a sequence longer than generate.PREFILL_CHUNK: passes through the KV cache
    (here of 7 tokens, the last one short, past the sliding window), the logits as one pass's."""
    monkeypatch.setattr("gptoss_np.generate.PREFILL_CHUNK", 7)
    folder = checkpoint_dir("tiny")
    model = gptoss_np.load(folder)
    ids = prompt(model, 40, seed=4)
    passes, forward = [], model.forward

    def counted(ids, *args, **kwargs):
        passes.append(len(ids))
        return forward(ids, *args, **kwargs)

    monkeypatch.setattr(model, "forward", counted)
    ours = model.logits(ids)
    assert passes == [7] * 5 + [5] and ours.shape == (40, model.config.vocab_size)
    assert rel_err(ours, hf_logits(hf_model(folder), ids)) <= TOL


@pytest.mark.parametrize("name, grown", [("tiny", False), ("top1_sliding", False), ("mha_tied", False),
                                         ("window1", False), ("tiny", True), ("mha_tied", True)])
def test_static_shape_decode_matches_transformers(name, grown, checkpoint_dir, hf_model):
    """The decode step that CUDA graphs replay: every one-token update writes slot position % size and
    attends over the layer's whole buffer, with the position given as an array (not cache.length).
    grown: the cache was made smaller and grew (as a PromptCache's does): its new slots hold no keys."""
    folder = checkpoint_dir(name)
    model = gptoss_np.load(folder)
    ids = prompt(model, 60, seed=5)
    cache = model.new_cache(8 if grown else 60)
    parts = [model.forward(ids[:20], cache, all_logits=True)]
    cache.reserve(60)
    cache.static_shapes = True
    parts += [model.forward(ids[t:t + 1], cache, positions=np.array([t])) for t in range(20, 60)]
    assert cache.length == 60 and cache.keys[0].shape[0] == (60 if cache.windows[0] is None else cache.windows[0])
    assert rel_err(np.concatenate(parts), hf_logits(hf_model(folder), ids)) <= TOL
    if cache.capacity is not None:
        with pytest.raises(ValueError, match="cannot grow"):
            model.forward(ids[:1], cache, positions=np.array([60]))


@pytest.mark.parametrize("name, chunk", [("tiny", None), ("mha_tied", None), ("tiny", 5)])
def test_greedy_continuation_matches_transformers(name, chunk, checkpoint_dir, hf_model, monkeypatch):
    """chunk: the prompt prefilled a few tokens at a time (generate.PREFILL_CHUNK), as long prompts are."""
    import torch
    if chunk is not None:
        monkeypatch.setattr("gptoss_np.generate.PREFILL_CHUNK", chunk)
    folder = checkpoint_dir(name)
    model = gptoss_np.load(folder)
    ids = prompt(model, 12, seed=3)
    ours = list(model.generate(ids, max_new_tokens=24))
    hf = hf_model(folder)
    with torch.no_grad():
        out = hf.generate(torch.tensor(ids)[None], max_new_tokens=24, do_sample=False, eos_token_id=None,
                          pad_token_id=0)
    assert ours == out[0, len(ids):].tolist()
    assert all(isinstance(t, int) for t in ours)
    assert len(set(ours)) > 3  # not a degenerate repetition


def test_kv_cache_that_cannot_be_allocated_says_its_size(checkpoint_dir):
    config = gptoss_np.load(checkpoint_dir("tiny")).config

    class NoRoom:  # a backend whose arrays cannot be allocated
        name = "cpu"

        class xp:
            @staticmethod
            def zeros(*args, **kwargs):
                raise MemoryError("Out of memory allocating 4,096 bytes")

            full = zeros

    # per layer: keys and values [slots, G, Dh] float32, positions [slots] int64; slots: the window or 10**7
    slots = sum(config.window(i) or 10**7 for i in range(config.num_hidden_layers))
    gb = slots * (2 * config.num_key_value_heads * config.head_dim * 4 + 8) / 1e9
    assert gb > 1
    with pytest.raises(MemoryError, match=rf"^the KV cache for 10000000 tokens needs {gb:.2f} GB \(cpu: Out of memory"):
        KVCache(config, 10**7, NoRoom())


def test_bad_token_ids_name_the_problem(checkpoint_dir):
    model = gptoss_np.load(checkpoint_dir("tiny"))
    V = model.config.vocab_size
    with pytest.raises(ValueError, match=f"vocab_size {V}"):
        model.logits([1, 2, V])
    with pytest.raises(ValueError, match="vocab_size"):
        model.logits([-1])
    with pytest.raises(ValueError, match="empty"):
        model.logits([])
    with pytest.raises(ValueError, match="1-D"):
        model.logits([[1, 2]])
    with pytest.raises(ValueError, match="integers, got float64"):
        model.logits([1.0, 2.5])
    with pytest.raises(ValueError, match=f"token id {2**70} at position 1 is outside the vocabulary"):
        model.logits([1, 2**70])  # (an integer, beyond int64: a NumPy object array)
    with pytest.raises(ValueError, match="not text: encode the text with the tokenizer first"):
        model.generate("hello", 3)
    assert model.check_ids(t for t in (3, 1, 2)).tolist() == [3, 1, 2]  # a generator's ids
    with pytest.raises(ValueError, match="longer than the model's context of 2048 tokens"):
        model.logits(np.ones(2049, np.int64))
    assert len(model.check_ids(np.ones(2048, np.int64))) == 2048  # the whole context is a sequence
    model.generate([1], max_new_tokens=2047)  # and a prompt whose reply fills it exactly
    assert generation.new_token_room(model, 2047, 5) == 1
    with pytest.raises(ValueError, match="the prompt \\(2048 tokens\\) fills the model's context of 2048 tokens"):
        generation.new_token_room(model, 2048, 5)
    # generate checks its arguments at the call, before any token is asked for
    with pytest.raises(ValueError, match="empty"):
        model.generate([], max_new_tokens=3)
    for bad in (-1, 1.0, True):
        with pytest.raises(ValueError, match="max_new_tokens"):
            model.generate([1], max_new_tokens=bad)
    with pytest.raises(ValueError, match="exceeds the model's context"):
        model.generate([1], max_new_tokens=model.config.max_position_embeddings)
    with pytest.raises(ValueError, match="temperature"):
        model.generate([1], 3, temperature=-1.0)
    with pytest.raises(ValueError, match="top_k"):
        model.generate([1], 3, 1.0, top_k=0)
    with pytest.raises(ValueError, match="seed must be an integer >= 0, got -1"):
        model.generate([1], 3, 1.0, seed=-1)
    with pytest.raises(ValueError, match="stop_ids must be a sequence of token ids"):
        model.generate([1], 3, stop_ids=5)
    with pytest.raises(ValueError, match="stop_ids must be a sequence of token ids"):
        model.generate([1], 3, stop_ids=[1.5])


def test_sampling_filters_at_temperature_0_warn(checkpoint_dir):
    """top_k / top_p / min_p at the default temperature 0 change nothing (greedy): a warning says so,
    pointing at the caller's line; with a temperature, or without filters, nothing is said."""
    model = gptoss_np.load(checkpoint_dir("tiny"))
    with pytest.warns(UserWarning, match="at temperature 0.*greedy") as caught:
        model.generate([1], 3, top_p=0.5)
    assert caught[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.generate([1], 3, 1.0, top_p=0.5)
        model.generate([1], 3, seed=0)


def test_a_slow_prompt_shows_its_progress_through_the_layers(checkpoint_dir, monkeypatch, capsys):
    """A bar on stderr through the layers of a pass of several tokens that takes longer than the delay
    (here 0 s), erased at its end; none for a decode step's single token, none with progress=False."""
    from gptoss_np import model as model_module
    monkeypatch.setattr(model_module, "_PROGRESS_DELAY_S", 0.0)
    model = gptoss_np.load(checkpoint_dir("tiny"), progress=True)
    capsys.readouterr()
    list(model.generate([5, 6, 7], max_new_tokens=3))
    err = capsys.readouterr().err
    assert "3 tokens through the layers:" in err and f"/{model.config.num_hidden_layers} [" in err
    assert "1 tokens" not in err and err.endswith("\r")  # the bar erased itself
    quiet = gptoss_np.load(checkpoint_dir("tiny"), progress=False)
    quiet.logits([5, 6, 7])
    assert capsys.readouterr().err == ""


def test_generate_stops_and_is_reproducible(checkpoint_dir):
    model = gptoss_np.load(checkpoint_dir("tiny"))
    ids = [5, 6, 7]
    greedy = list(model.generate(ids, max_new_tokens=10))
    assert len(greedy) == 10
    stopped = list(model.generate(ids, max_new_tokens=10, stop_ids=[greedy[3]]))
    assert stopped == greedy[:greedy.index(greedy[3]) + 1]
    a = list(model.generate(ids, max_new_tokens=10, temperature=1.0, top_p=0.9, seed=7))
    b = list(model.generate(ids, max_new_tokens=10, temperature=1.0, top_p=0.9, seed=7))
    assert a == b
    assert list(model.generate(ids, max_new_tokens=0)) == []
    assert list(model.generate(ids, max_new_tokens=10, stop_ids=None)) == greedy  # None: no stop


def test_a_seed_s_tokens_are_successive_draws_of_one_generator(checkpoint_dir):
    """With a seed, each step draws as Generator.choice(p=filter_probs(its logits)) does
    (test_sampling.test_a_draw_is_numpys_choice_with_the_same_seed) from one np.random.default_rng(seed),
    which every draw moves on: not from the seed's first number at every step."""
    model = gptoss_np.load(checkpoint_dir("tiny"))
    ids, rng, expected = [5, 6, 7], np.random.default_rng(7), []
    for _ in range(12):
        probs = filter_probs(model.logits(ids + expected)[-1], temperature=1.0)
        expected.append(int(rng.choice(probs.size, p=probs)))
    assert list(model.generate(ids, 12, temperature=1.0, seed=7)) == expected
    assert len(set(expected)) > 1


@pytest.mark.parametrize("name", ["tiny", "top1_sliding", "mha_tied"])
def test_prompt_cache_runs_only_new_tokens_and_matches_transformers(name, checkpoint_dir, hf_model, monkeypatch):
    """A chat's turns through one PromptCache: each prompt extends the previous one, after a reply that
    overwrote the sliding layers' windows; only the new tokens run, and the logits and the greedy reply
    are transformers' for the whole prompt."""
    import torch
    folder = checkpoint_dir(name)
    model = gptoss_np.load(folder)
    hf = hf_model(folder)
    ids = prompt(model, 60, seed=6)
    runs, forward = [], model.forward

    def recorded(tokens, cache, *args, **kwargs):
        start = cache.length
        logits = forward(tokens, cache, *args, **kwargs)
        runs.append((start, len(tokens), logits))
        return logits

    monkeypatch.setattr(model, "forward", recorded)
    cache = gptoss_np.PromptCache()
    for turn, (length, prefilled) in enumerate([(20, [(0, 19), (19, 1)]), (45, [(19, 25), (44, 1)]),
                                                (45, [(44, 1)]), (50, [(44, 5), (49, 1)])]):
        runs.clear()
        reply = list(model.generate(ids[:length], 12, prompt_cache=cache))
        assert cache.reused == prefilled[0][0]
        assert [(start, n) for start, n, _ in runs[:len(prefilled)]] == prefilled
        assert rel_err(runs[len(prefilled) - 1][2], hf_logits(hf, ids[:length])[-1:]) <= TOL
        with torch.no_grad():
            out = hf.generate(torch.tensor(ids[:length])[None], max_new_tokens=12, do_sample=False,
                              eos_token_id=None, pad_token_id=0)
        assert reply == out[0, length:].tolist(), f"turn {turn}"
    # a longer prompt that differs from the last one inside the cached prefix starts over
    changed = ids[:55].copy()
    changed[9] = (changed[9] + 1) % model.config.vocab_size
    runs.clear()
    reply = list(model.generate(changed, 2, prompt_cache=cache))
    assert cache.reused == 0 and runs[0][:2] == (0, 54)
    assert reply == list(model.generate(changed, 2))
    # a prompt that does not extend the last one starts over
    runs.clear()
    list(model.generate(ids[30:40], 2, prompt_cache=cache))
    assert cache.reused == 0 and runs[0][:2] == (0, 9)
    # so does the last one but its last token (what the cache holds), and a prompt for another model
    assert list(model.generate(ids[30:39], 3, prompt_cache=cache)) == list(model.generate(ids[30:39], 3))
    assert cache.reused == 0
    list(gptoss_np.load(folder).generate(ids[30:45], 2, prompt_cache=cache))
    assert cache.reused == 0


def test_a_prompt_cache_makes_room_for_the_whole_call(checkpoint_dir):
    """Its KV cache is grown to the call's prompt and new tokens before the first token: a CUDA graph's
    decode (static shapes) cannot grow it later."""
    model = gptoss_np.load(checkpoint_dir("tiny"))
    ids = prompt(model, 40, seed=4)
    prompt_cache = gptoss_np.PromptCache()
    list(model.generate(ids[:20], 2, prompt_cache=prompt_cache))
    cache = prompt_cache.take(model, ids, 70)
    assert cache.length == 19 and all(keys.shape[0] >= 70 for keys, window in zip(cache.keys, cache.windows)
                                      if window is None)


def test_a_generator_whose_prompt_cache_a_later_call_took_cannot_go_on(checkpoint_dir):
    """The later call rewinds the KV cache under the earlier one's feet: the earlier one raises rather
    than decode from it; the later one is as without the earlier."""
    model = gptoss_np.load(checkpoint_dir("tiny"))
    ids = prompt(model, 20, seed=2).tolist()
    cache = gptoss_np.PromptCache()
    first = model.generate(ids, 8, prompt_cache=cache)
    taken = [next(first), next(first)]
    assert taken == list(model.generate(ids, 8))[:2]
    assert list(model.generate(ids + taken, 5, prompt_cache=cache)) == list(model.generate(ids + taken, 5))
    with pytest.raises(RuntimeError, match="a later generate call took this PromptCache over"):
        next(first)
