"""Loading checkpoints: config styles, single and sharded files, and errors that name the culprit."""

from __future__ import annotations

import dataclasses
import json
import mmap
import re
import shutil

import numpy as np
import pytest

import gptoss_np
from conftest import rewrite_tensors, write
from gptoss_np import synthetic
from gptoss_np.checkpoint import Checkpoint, CheckpointError
from gptoss_np.config import ConfigError, GptOssConfig, RopeParameters, is_openai_format
from gptoss_np.kernels import mxfp4
from gptoss_np.safetensors_io import SafetensorsFile


@pytest.fixture
def tiny(tmp_path):
    return synthetic.write_checkpoint(tmp_path / "tiny", "tiny")


def test_real_20b_config_file():
    c = GptOssConfig.from_dict(synthetic.config_dict("gpt-oss-20b"))
    assert (c.hidden_size, c.num_hidden_layers, c.num_local_experts, c.num_experts_per_tok) == (2880, 24, 32, 4)
    assert c.layer_types[:2] == ("sliding_attention", "full_attention")
    assert c.window(0) == 128 and c.window(1) is None and (c.num_attention_heads, c.num_key_value_heads) == (64, 8)
    r = c.rope_parameters
    assert (r.rope_type, r.rope_theta, r.factor, r.original_max_position_embeddings, r.truncate) == \
        ("yarn", 150000.0, 32.0, 4096, False)


def test_rope_styles_agree():
    old = GptOssConfig.from_dict(synthetic.config_dict("gpt-oss-20b", rope_style="scaling"))
    new = GptOssConfig.from_dict(synthetic.config_dict("gpt-oss-20b", rope_style="parameters"))
    assert old == new


def test_the_hugging_face_name_counts_over_openais_alias():
    """num_experts_per_tok beside experts_per_token: the Hugging Face name is read, as transformers reads it."""
    transformers = pytest.importorskip("transformers")
    d = {**synthetic.config_dict("tiny"), "num_experts_per_tok": 2, "experts_per_token": 4}
    assert GptOssConfig.from_dict(d).num_experts_per_tok == transformers.GptOssConfig(**d).num_experts_per_tok == 2


def test_aliases_and_defaults():
    d = synthetic.config_dict("tiny")
    del d["num_experts_per_tok"], d["layer_types"]
    d["experts_per_token"] = 2
    c = GptOssConfig.from_dict({**d, "unknown_key": 1})
    assert c.num_experts_per_tok == 2
    assert c.layer_types == ("sliding_attention", "full_attention")


@pytest.mark.parametrize("field, value", [("head_dim", "absent"), ("num_key_value_heads", "absent"),
                                          ("layer_types", "absent"), ("layer_types", None)])
def test_fields_left_out_read_as_transformers_reads_them(field, value):
    """head_dim and num_key_value_heads left out are gpt-oss's 64 and 8 in transformers' GptOssConfig (the
    engine took hidden_size / num_attention_heads and no grouping, as it still does for null, which
    transformers refuses); layer_types left out alternate from a sliding one."""
    transformers = pytest.importorskip("transformers")
    d = synthetic.config_dict("tiny", num_attention_heads=16, num_key_value_heads=4, head_dim=8,
                              num_hidden_layers=3)
    d = {k: v for k, v in d.items() if k != field} if value == "absent" else {**d, field: value}
    ours, theirs = GptOssConfig.from_dict(d), transformers.GptOssConfig(**d)
    assert (ours.head_dim, ours.num_key_value_heads, list(ours.layer_types)) == \
        (theirs.head_dim, theirs.num_key_value_heads, theirs.layer_types)


@pytest.mark.parametrize("field, value, message", [
    ("hidden_size", 100, "hidden_size = 100 must be divisible by 32"),
    ("intermediate_size", 48, "intermediate_size = 48 must be divisible by 32"),
    ("num_key_value_heads", 3, "num_attention_heads = 4 must be divisible by num_key_value_heads = 3"),
    ("num_experts_per_tok", 9, "num_experts_per_tok = 9 exceeds num_local_experts = 8"),
    ("layer_types", ["full_attention"], "layer_types has 1 entries"),
    ("layer_types", ["full_attention", "chunked"], "unknown type"),
    ("vocab_size", 0, "vocab_size must be a positive integer"),
    ("sliding_window", 0, "sliding_window must be a positive integer, got 0"),
    ("rope_scaling", {"rope_type": "longrope", "factor": 2.0}, "rope_type 'longrope' is not supported"),
    ("rope_scaling", [1, 2], "rope_scaling must be an object"),
    ("rope_scaling", {"rope_type": "yarn", "factor": "8"}, "rope_scaling.factor must be a number"),
    ("rope_scaling", {"rope_type": "yarn", "factor": 8, "original_max_position_embeddings": 6.5},
     "rope_scaling.original_max_position_embeddings must be an integer"),
    ("rope_scaling", {"rope_type": "yarn", "factor": 8, "mscale": "1", "mscale_all_dim": 1},
     "rope_scaling.mscale must be a number"),
    ("rope_scaling", {"rope_type": "yarn", "factor": 8, "mscale": -1, "mscale_all_dim": 1},
     "rope_scaling's mscale and mscale_all_dim must be positive"),
    ("original_max_position_embeddings", 0, "^original_max_position_embeddings must be a positive integer, got 0"),
    ("partial_rotary_factor", 0.5, "partial_rotary_factor 0.5 is not supported"),
    ("rope_theta", 1, "rope_theta must be greater than 1"),
    ("rms_norm_eps", "1e-5", "rms_norm_eps must be a number"),
    ("rms_norm_eps", 0, "rms_norm_eps must be positive, got 0"),
    ("attention_bias", 1, "attention_bias must be true or false"),
    ("layer_types", 2, "layer_types must be a list"),
    ("eos_token_id", [200002, "x"], "eos_token_id must be a token id"),
])
def test_config_validation_names_the_field(field, value, message):
    d = synthetic.config_dict("tiny", **{field: value})
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        GptOssConfig.from_dict(d)


def test_config_nulls_take_the_defaults_and_sizes_stay_bounded():
    c = GptOssConfig.from_dict({**synthetic.config_dict("tiny"), "swiglu_limit": None, "rms_norm_eps": None})
    assert (c.swiglu_limit, c.rms_norm_eps) == (7.0, 1e-5)
    d = synthetic.config_dict("tiny", hidden_size=64, num_attention_heads=4, num_key_value_heads=2)
    c = GptOssConfig.from_dict({**d, "head_dim": None, "num_key_value_heads": None})
    assert (c.head_dim, c.num_key_value_heads) == (64 // 4, 4)  # derived from the query heads, no grouping
    d = synthetic.config_dict("tiny")
    del d["layer_types"]  # made from num_hidden_layers, which must not make us build a list of 10**20
    with pytest.raises(ConfigError, match="num_hidden_layers = 100000000000000000000 is more than"):
        GptOssConfig.from_dict({**d, "num_hidden_layers": 10**20})


def test_missing_config_field(tiny):
    d = json.loads((tiny / "config.json").read_text())
    del d["num_local_experts"]
    (tiny / "config.json").write_text(json.dumps(d))
    with pytest.raises(ConfigError, match="config.json: missing field.*num_local_experts"):
        gptoss_np.load(tiny)



def test_another_models_config_says_it_is_not_gpt_oss(tiny):
    """A Llama or Qwen checkpoint is named as such, not listed as missing gpt-oss's fields."""
    (tiny / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 4096}))
    with pytest.raises(ConfigError, match="config.json: model_type is 'llama': gptoss_np runs gpt-oss checkpoints"):
        gptoss_np.load(tiny)

OPENAI_20B = {"num_hidden_layers": 24, "num_experts": 32, "experts_per_token": 4, "vocab_size": 201088,
              "hidden_size": 2880, "intermediate_size": 2880, "swiglu_limit": 7.0, "head_dim": 64,
              "num_attention_heads": 64, "num_key_value_heads": 8, "sliding_window": 128,
              "initial_context_length": 4096, "rope_theta": 150000, "rope_scaling_factor": 32.0,
              "rope_ntk_alpha": 1, "rope_ntk_beta": 32}  # gpt-oss-20b's original/config.json


def test_openais_original_config_reads_as_the_hugging_face_one():
    """original/config.json of gpt-oss-20b gives the model of its Hugging Face config.json (which names
    the token ids the original leaves out); a scaling factor of 1 or less is plain RoPE."""
    hf = GptOssConfig.from_dict(synthetic.config_dict("gpt-oss-20b"))
    original = GptOssConfig.from_dict(OPENAI_20B)
    assert original == dataclasses.replace(hf, eos_token_id=None, pad_token_id=None)
    plain = GptOssConfig.from_dict({**OPENAI_20B, "rope_scaling_factor": 1.0})
    assert plain.rope_parameters == RopeParameters(rope_theta=150000.0) and plain.max_position_embeddings == 4096


def test_a_config_with_a_model_type_is_hugging_faces_whatever_it_names_its_experts():
    """OpenAI's original config.json has no model_type: one that has it is not read as OpenAI's (which would
    replace its rope_scaling by one from rope_scaling_factor), even where it says num_experts, which is then
    num_local_experts, as transformers maps it."""
    transformers = pytest.importorskip("transformers")
    d = synthetic.config_dict("tiny", num_local_experts=6)
    d["num_experts"] = d.pop("num_local_experts")
    assert d["model_type"] == "gpt_oss" and not is_openai_format(d)
    assert is_openai_format({k: v for k, v in d.items() if k != "model_type"})
    ours, theirs = GptOssConfig.from_dict(d), transformers.GptOssConfig(**d)
    assert ours.num_local_experts == theirs.num_local_experts == 6
    assert ours.rope_parameters.truncate == theirs.rope_scaling["truncate"] is False


def test_openais_original_format_errors_name_its_tensors(tiny, tmp_path):
    folder = synthetic.write_original(tmp_path / "original", tiny)
    qkv = "block.1.attn.qkv.weight"
    rewrite_tensors(folder, lambda t: t.update({qkv: ("BF16", t[qkv][1][:-1])}))
    with pytest.raises(CheckpointError, match=r"'block.1.attn.qkv.weight' has shape \[127, 64\], config.json "
                                              r"implies \[128, 64\]"):
        gptoss_np.load(folder)
    rewrite_tensors(folder, lambda t: t.pop(qkv))
    with pytest.raises(CheckpointError, match="'block.1.attn.qkv.weight' is missing"):
        gptoss_np.load(folder)


def test_dense_experts_are_held_packed(tiny, tmp_path):
    """quantize_experts: a dense checkpoint's weights are counted as they will be held, experts packed
    (what the GPU's room is checked against), and its experts come out as MXFP4 blocks and scales."""
    folder = synthetic.write_dense(tmp_path / "dense", tiny)
    dense = Checkpoint(folder, quantize_experts=True)
    assert dense.nbytes == Checkpoint(tiny).nbytes
    layer, packed = dense.layer(1), Checkpoint(tiny).layer(1)
    for short in ("gate_up", "down"):
        blocks, scales = layer[f"{short}_blocks"], layer[f"{short}_scales"]
        assert blocks.shape == packed[f"{short}_blocks"].shape and blocks.flags.c_contiguous
        np.testing.assert_array_equal(mxfp4.dequantize(blocks, scales),
                                      mxfp4.dequantize(packed[f"{short}_blocks"], packed[f"{short}_scales"]))


def test_quantize_command(tiny, tmp_path, capsys):
    """python -m gptoss_np.quantize: the MXFP4 checkpoint of a dense one holds the same experts as
    quantize_experts gives; an MXFP4 source, the source as target, a target holding a checkpoint or a
    file is a one-line error."""
    from gptoss_np import quantize
    dense = synthetic.write_dense(tmp_path / "dense", tiny)
    assert quantize.main([str(dense), str(tmp_path / "out")]) == 0
    saved, loaded = Checkpoint(tmp_path / "out"), Checkpoint(dense, quantize_experts=True)
    assert saved.nbytes == loaded.nbytes
    for short, array in loaded.layer(1).items():
        np.testing.assert_array_equal(saved.layer(1)[short], array)
    assert quantize.main([str(tiny), str(tmp_path / "again")]) == 2
    assert quantize.main([str(dense), str(dense)]) == 2
    assert quantize.main([str(dense), str(tiny)]) == 2
    (tmp_path / "a_file").write_text("x")
    assert quantize.main([str(dense), str(tmp_path / "a_file")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "already MXFP4" in err[0] and "must not be the source" in err[1]
    assert f"{tiny} holds a checkpoint already: give a new or empty folder" in err[2]
    assert f"the target {tmp_path / 'a_file'} is a file: give a new or empty folder" in err[3]


def test_quantizing_a_sharded_dense_checkpoint(tiny, tmp_path):
    """The target's shards come with their own index, not the source's (copied beside them, it would name
    the source's files)."""
    from gptoss_np import quantize
    from gptoss_np.safetensors_io import write_shards
    dense = synthetic.write_dense(tmp_path / "dense", tiny)
    f = SafetensorsFile(dense / "model.safetensors")
    tensors = {name: (info.dtype, np.array(f.get(name))) for name, info in f.tensors.items()}
    (dense / "model.safetensors").unlink()
    names = list(tensors)
    write_shards(dense, [("a.safetensors", {n: tensors[n] for n in names[:10]}),
                         ("b.safetensors", {n: tensors[n] for n in names[10:]})])
    saved = Checkpoint(quantize.quantize_checkpoint(dense, tmp_path / "out"))
    loaded = Checkpoint(dense, quantize_experts=True)
    assert saved.nbytes == loaded.nbytes
    for short, array in loaded.layer(1).items():
        np.testing.assert_array_equal(saved.layer(1)[short], array)


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        gptoss_np.load(tmp_path / "nowhere")


def test_missing_config(tiny):
    (tiny / "config.json").unlink()
    message = f"{tiny} holds no config.json: it is not a checkpoint folder"
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        gptoss_np.load(tiny)


def test_truncated_safetensors(tiny):
    f = tiny / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:len(data) - 1000])
    with pytest.raises(CheckpointError, match="model.safetensors: truncated: tensor '.*' ends at byte"):
        gptoss_np.load(tiny)
    f.write_bytes(data[:100])  # cut inside the header
    with pytest.raises(CheckpointError, match=r"header length \d+ does not fit in a file of 100 bytes"):
        gptoss_np.load(tiny)
    f.write_bytes(data[:5])
    with pytest.raises(CheckpointError, match="too short"):
        gptoss_np.load(tiny)


def test_missing_tensor(tiny):
    rewrite_tensors(tiny, lambda t: t.pop("model.layers.1.self_attn.sinks"))
    with pytest.raises(CheckpointError, match="'model.layers.1.self_attn.sinks' is missing"):
        gptoss_np.load(tiny)


def test_wrong_shape(tiny):
    def change(t):
        dtype, a = t["model.layers.0.mlp.experts.down_proj_scales"]
        t["model.layers.0.mlp.experts.down_proj_scales"] = (dtype, a[:, :, :1].copy())
    rewrite_tensors(tiny, change)
    with pytest.raises(CheckpointError, match=r"model.safetensors: tensor 'model.layers.0.mlp.experts.down_proj_scales'"
                                              r" has shape \[8, 64, 1\], config.json implies \[8, 64, 2\]"):
        gptoss_np.load(tiny)


def test_a_tied_checkpoints_lm_head_of_the_wrong_shape_is_named(tmp_path):
    """tie_word_embeddings, and an lm_head.weight stored all the same (which transformers then loads): its
    shape is checked as an untied one's is."""
    folder = write(tmp_path / "tied", "mha_tied")
    rewrite_tensors(folder, lambda t: t.update({"lm_head.weight": ("BF16", np.zeros((512, 32), np.uint16))}))
    with pytest.raises(CheckpointError, match=r"'lm_head.weight' has shape \[512, 32\], config.json implies "
                                              r"\[512, 64\]"):
        gptoss_np.load(folder)


def test_f16_tensors_are_widened_to_float32(tiny):
    """A dense weight stored as F16 reads as its float32 values (Checkpoint's docstring), not as raw halves."""
    name = "model.norm.weight"
    values = np.linspace(-2, 2, Checkpoint(tiny).config.hidden_size, dtype=np.float16)
    rewrite_tensors(tiny, lambda t: t.update({name: ("F16", values)}))
    array = Checkpoint(tiny).tensor(name)
    assert array.dtype == np.float32 and np.array_equal(array, values.astype(np.float32))


def test_wrong_dtype(tiny):
    def change(t):
        _, a = t["model.layers.0.mlp.experts.gate_up_proj_blocks"]
        t["model.layers.0.mlp.experts.gate_up_proj_blocks"] = ("I8", a.view(np.int8))
    rewrite_tensors(tiny, change)
    with pytest.raises(CheckpointError, match="gate_up_proj_blocks' has dtype I8, expected U8"):
        gptoss_np.load(tiny)


def test_index_names_a_missing_shard(tmp_path):
    folder = synthetic.write_checkpoint(tmp_path / "sharded", "tiny", shards=2)
    (folder / "model-00001-of-00001.safetensors").unlink()  # numbered from 0, as the released shards are
    with pytest.raises(CheckpointError, match="model-00001-of-00001.safetensors: safetensors file not found"):
        gptoss_np.load(folder)


def test_an_index_naming_the_wrong_shard_is_named(tmp_path):
    folder = synthetic.write_checkpoint(tmp_path / "sharded", "tiny", shards=2)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    name = next(n for n, file in index["weight_map"].items() if file == "model-00000-of-00001.safetensors")
    index["weight_map"][name] = "model-00001-of-00001.safetensors"  # the other shard
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=f"model-00001-of-00001.safetensors: tensor '{name}' is listed "
                                              "in model.safetensors.index.json but not in the file"):
        gptoss_np.load(folder)


@pytest.mark.parametrize("weight_map", [["model-00001-of-00002.safetensors"], {"model.norm.weight": 1}])
def test_malformed_index_is_a_clear_error(tmp_path, weight_map):
    folder = synthetic.write_checkpoint(tmp_path / "sharded", "tiny", shards=2)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match="index.json: weight_map must map tensor names to file names"):
        gptoss_np.load(folder)


def test_sharded_equals_single(tmp_path):
    single = gptoss_np.load(synthetic.write_checkpoint(tmp_path / "one", "tiny", seed=4))
    sharded = gptoss_np.load(synthetic.write_checkpoint(tmp_path / "three", "tiny", seed=4, shards=3))
    assert (tmp_path / "three" / "model.safetensors.index.json").exists()
    ids = [1, 2, 3, 4, 5]
    np.testing.assert_array_equal(single.logits(ids), sharded.logits(ids))


def test_openais_original_format_sharded_equals_single(tiny, tmp_path):
    """gpt-oss-120b's original/ folder is sharded (model--00001-of-00007.safetensors ..., and an index);
    every tensor is bf16 but the experts' bytes, as dtypes.json says."""
    single = synthetic.write_original(tmp_path / "one", tiny)
    sharded = synthetic.write_original(tmp_path / "three", tiny, shards=3)
    assert sorted(p.name for p in sharded.glob("*.safetensors")) == [
        f"model--0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    dtypes = json.loads((sharded / "dtypes.json").read_text())
    assert set(dtypes.values()) == {"BF16", "FP4", "UE8"} and dtypes["norm.scale"] == "BF16"
    assert (dtypes["block.0.mlp.mlp1_weight.blocks"], dtypes["block.0.mlp.mlp1_weight.scales"]) == ("FP4", "UE8")
    ids = [1, 2, 3, 4, 5]
    np.testing.assert_array_equal(gptoss_np.load(single).logits(ids), gptoss_np.load(sharded).logits(ids))


def test_tensors_stay_memory_mapped_and_packed(tiny):
    ck = Checkpoint(tiny)
    blocks = ck.tensor("model.layers.0.mlp.experts.gate_up_proj_blocks")
    assert blocks.dtype == np.uint8 and blocks.shape == (8, 128, 2, 16)
    base = blocks
    while base is not None and not isinstance(base, mmap.mmap):
        base = base.base
    assert isinstance(base, mmap.mmap) and not blocks.flags.writeable
    assert ck.tensor("model.embed_tokens.weight").dtype == np.uint16  # bf16 bits, not widened


def test_copy_of_checkpoint_loads(tiny, tmp_path):
    copy = shutil.copytree(tiny, tmp_path / "copy")
    assert gptoss_np.load(copy).config == gptoss_np.load(tiny).config


@pytest.mark.parametrize("header", [
    [1, 2],
    {"t": {"dtype": "U8", "shape": [2], "data_offsets": ["0", "2"]}},
    {"t": {"dtype": "U8", "shape": [-2], "data_offsets": [2, 0]}},
    {"t": {"dtype": "U8", "shape": [2.0], "data_offsets": [0, 2]}},
    {"t": {"dtype": "U8", "shape": [True, 2], "data_offsets": [0, 2]}},
    {"t": {"dtype": "U8", "shape": [2**64, 2**64], "data_offsets": [0, 2]}},
    {"t": {"dtype": "U8", "shape": [2], "data_offsets": [0]}},
    {"t": {"dtype": "U8", "shape": 2, "data_offsets": [0, 2]}},
    {"t": "U8"},
])
def test_malformed_safetensors_header_is_a_clear_error(tmp_path, header):
    """Whatever the header's JSON holds, reading it raises SafetensorsError naming the file."""
    from gptoss_np.safetensors_io import SafetensorsError
    blob = json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + bytes(8))
    with pytest.raises(SafetensorsError, match="bad.safetensors: "):
        SafetensorsFile(path)
