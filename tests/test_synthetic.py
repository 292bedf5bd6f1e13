"""Synthetic checkpoints: the real on-disk format, and activations in a realistic range."""

from __future__ import annotations

import json

import numpy as np
import pytest

import gptoss_np
from gptoss_np import synthetic
from gptoss_np.kernels import mxfp4
from gptoss_np.safetensors_io import SafetensorsFile, write


def test_20b_preset_has_the_real_tensor_layout():
    from gptoss_np.checkpoint import expected_tensors
    from gptoss_np.config import GptOssConfig
    names = expected_tensors(GptOssConfig.from_dict(synthetic.config_dict("gpt-oss-20b")))
    assert names["model.layers.0.mlp.experts.gate_up_proj_blocks"] == ((32, 5760, 90, 16), ("U8",))
    assert names["model.layers.23.mlp.experts.down_proj_scales"] == ((32, 2880, 90), ("U8",))
    assert names["model.layers.0.self_attn.q_proj.weight"][0] == (4096, 2880)
    assert names["lm_head.weight"][0] == (201088, 2880)
    packed = sum(np.prod(shape) for shape, dtypes in names.values() if dtypes == ("U8",))
    dense = sum(np.prod(shape) * 2 for shape, dtypes in names.values() if dtypes != ("U8",))
    assert 13.7e9 < packed + dense < 13.8e9  # gpt-oss-20b's safetensors hold 13.76 GB (12.8 GiB)


def test_files_are_what_transformers_reads(tmp_path):
    folder = synthetic.write_checkpoint(tmp_path / "c", "tiny", shards=2)
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "mxfp4"
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    f = SafetensorsFile(folder / index["weight_map"]["model.layers.0.mlp.experts.gate_up_proj_blocks"])
    assert f.tensors["model.layers.0.mlp.experts.gate_up_proj_blocks"].dtype == "U8"
    f = SafetensorsFile(folder / index["weight_map"]["model.embed_tokens.weight"])
    assert f.tensors["model.embed_tokens.weight"].dtype == "BF16"


def test_files_are_as_the_safetensors_library_writes_and_reads_them(tmp_path):
    """A file's header is padded with spaces to a multiple of 8 bytes, as safetensors' save_file pads it (the
    same length field, JSON and data; the JSON's key order aside); an index's total_size is the bytes of
    all its shards' tensors, as the library loads them."""
    pytest.importorskip("torch")  # the library reads BF16 through torch
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    array = np.arange(3, dtype=np.float32)
    write(tmp_path / "ours.safetensors", {"t": ("F32", array)}, metadata={"format": "pt"})
    safetensors_numpy.save_file({"t": array}, str(tmp_path / "theirs.safetensors"), metadata={"format": "pt"})
    ours, theirs = (tmp_path / "ours.safetensors").read_bytes(), (tmp_path / "theirs.safetensors").read_bytes()
    end = 8 + int.from_bytes(theirs[:8], "little")
    assert ours[:8] == theirs[:8] and ours[end:] == theirs[end:]
    assert json.loads(ours[8:end]) == json.loads(theirs[8:end])
    folder = synthetic.write_checkpoint(tmp_path / "sharded", "tiny", shards=3)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = [safetensors_torch.load_file(folder / name) for name in sorted(set(index["weight_map"].values()))]
    assert len(shards) == 3 and index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for shard in shards for t in shard.values())


@pytest.fixture(scope="module")
def mid_model(tmp_path_factory):
    config = synthetic.config_dict("tiny", hidden_size=512, intermediate_size=512, num_attention_heads=8,
                                   num_key_value_heads=2, head_dim=64, num_local_experts=8,
                                   num_experts_per_tok=4, vocab_size=2000)
    return gptoss_np.load(synthetic.write_checkpoint(tmp_path_factory.mktemp("mid"), config))


def test_activations_are_realistic(mid_model):
    """No all-saturated SwiGLU clamps, attention neither uniform nor all on the sink, routers that
    choose, and logits with a spread."""
    m, ops, c = mid_model, mid_model.ops, mid_model.config
    ids = np.random.default_rng(0).integers(0, c.vocab_size, 64)
    layer = m.layers[0]
    h = ops.rmsnorm(ops.embed(m.embedding, ids), layer.attn_norm, c.rms_norm_eps)

    H, G = c.num_attention_heads, c.num_key_value_heads
    qkv = ops.linear(h, layer.attn.qkv, layer.attn.qkv_bias).reshape(64, H + 2 * G, c.head_dim)
    q, k = qkv[:, :H], qkv[:, H:H + G]
    scores = np.einsum("thd,shd->hts", q[:, :c.num_key_value_heads], k) / np.sqrt(c.head_dim)
    assert 0.5 < scores.std() < 10

    router = ops.linear(h, layer.moe.router, layer.moe.router_bias)
    experts, weights = ops.route(router, c.num_experts_per_tok)
    assert 1 / c.num_experts_per_tok < weights[:, 0].mean() < 0.9

    w = mxfp4.dequantize(layer.moe.gate_up_blocks[experts[:, 0]], layer.moe.gate_up_scales[experts[:, 0]])
    gate_up = np.einsum("tnk,tk->tn", w, h) + layer.moe.gate_up_bias[experts[:, 0]]
    for part in (gate_up[:, 0::2], np.abs(gate_up[:, 1::2])):
        clamped = (part > c.swiglu_limit).mean()
        assert 0.001 < clamped < 0.2

    logits = m.logits(ids)
    assert 1 < logits.std() < 20
    top = np.sort(logits, axis=-1)
    assert (top[:, -1] - top[:, -2]).mean() > 0.1  # greedy choices are not coin flips
