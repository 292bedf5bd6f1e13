"""Random gpt-oss checkpoints in the exact on-disk format of openai/gpt-oss-20b.

`write_checkpoint(folder, config)` writes config.json (with `quantization_config`),
generation_config.json and safetensors files: MXFP4 experts as uint8 blocks and e8m0 scales, every
other tensor bf16, optionally sharded with a `model.safetensors.index.json`. Sizes go from tiny (tests)
to the real 20b / 120b shapes (benchmarks): see `PRESETS`.

Weights are random but scaled so a forward pass looks like a real one: unit-scale normalised inputs,
attention scores of order one, router logits that separate experts, SwiGLU gates that only
sometimes reach the clamp, and logits with a spread of a few units.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .checkpoint import (DENSE_EXPERTS, EMBED, FINAL_NORM, LM_HEAD, ORIGINAL_NAMES, Checkpoint,
                         expected_tensors, layer_tensor_name)
from .config import GptOssConfig
from .kernels.bf16 import f32_to_bf16
from .kernels.mxfp4 import dequantize
from .safetensors_io import write, write_shards

_GPT_OSS_20B = {
    "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss",
    "vocab_size": 201088, "hidden_size": 2880, "intermediate_size": 2880, "head_dim": 64,
    "num_hidden_layers": 24, "num_attention_heads": 64, "num_key_value_heads": 8,
    "num_local_experts": 32, "num_experts_per_tok": 4, "experts_per_token": 4,
    "sliding_window": 128, "max_position_embeddings": 131072, "initial_context_length": 4096,
    "rms_norm_eps": 1e-05, "rope_theta": 150000,
    "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                     "original_max_position_embeddings": 4096, "truncate": False},
    "swiglu_limit": 7.0, "attention_bias": True, "attention_dropout": 0.0, "hidden_act": "silu",
    "tie_word_embeddings": False, "use_cache": True, "output_router_logits": False,
    "router_aux_loss_coef": 0.9, "initializer_range": 0.02,
    "eos_token_id": 200002, "pad_token_id": 199999,
    "quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]},
}

PRESETS = {
    "gpt-oss-20b": _GPT_OSS_20B,
    "gpt-oss-120b": {**_GPT_OSS_20B, "num_hidden_layers": 36, "num_local_experts": 128},
    # the tiny default used by tests and examples: every feature of the real model at toy size
    "tiny": {**_GPT_OSS_20B, "vocab_size": 512, "hidden_size": 64, "intermediate_size": 64, "head_dim": 16,
             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "num_local_experts": 8, "num_experts_per_tok": 2, "experts_per_token": 2, "sliding_window": 8,
             "max_position_embeddings": 2048,
             "rope_scaling": {**_GPT_OSS_20B["rope_scaling"], "original_max_position_embeddings": 64},
             "eos_token_id": None, "pad_token_id": None},
    # the CPU benchmark's mid-size model
    "bench-cpu": {**_GPT_OSS_20B, "vocab_size": 32768, "hidden_size": 1024, "intermediate_size": 1024,
                  "num_hidden_layers": 8, "num_attention_heads": 16, "num_key_value_heads": 4,
                  "num_local_experts": 16, "num_experts_per_tok": 4, "experts_per_token": 4,
                  "eos_token_id": None, "pad_token_id": None},
}

# the released generation_config.json; ids beyond a small synthetic vocabulary are left out
GENERATION_CONFIG = {"bos_token_id": 199998, "do_sample": True, "eos_token_id": [200002, 199999, 200012],
                     "pad_token_id": 199999}

# FP4 e2m1 values have mean square 68.5 / 8 when the 16 nibbles are equally likely
_FP4_RMS = math.sqrt(68.5 / 8)


def config_dict(preset: str = "tiny", *, rope_style: str = "scaling", **overrides) -> dict:
    """A config.json dictionary (a copy, nested values too: a caller may change it): a preset with overrides.

    rope_style "scaling" writes `rope_theta` + `rope_scaling` as the released checkpoints do;
    "parameters" writes newer transformers' `rope_parameters` (rope_theta inside).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    d = copy.deepcopy({**PRESETS[preset], **overrides})
    if "num_experts_per_tok" in overrides:
        d["experts_per_token"] = overrides["num_experts_per_tok"]
    if "layer_types" not in overrides:
        d["layer_types"] = ["sliding_attention" if i % 2 == 0 else "full_attention"
                            for i in range(d["num_hidden_layers"])]
    if rope_style == "parameters":
        d["rope_parameters"] = {**d.pop("rope_scaling"), "rope_theta": d.pop("rope_theta")}
    elif rope_style != "scaling":
        raise ValueError(f"rope_style must be 'scaling' or 'parameters', got {rope_style!r}")
    return d


def write_checkpoint(folder: str | Path, config: dict | str = "tiny", *, seed: int = 0, shards: int = 1,
                     progress: bool | None = None) -> Path:
    """Write a random checkpoint with this config.json dict (or preset name) into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = config_dict(config) if isinstance(config, str) else dict(config)
    c = GptOssConfig.from_dict(config)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "generation_config.json").write_text(json.dumps(_generation_config(c), indent=2))

    expected = expected_tensors(c)
    rng = np.random.default_rng(seed)
    show = progress if progress is not None else c.num_hidden_layers * c.hidden_size > 4096
    with tqdm(total=len(expected), desc=f"writing {folder.name}", unit="tensor", disable=not show) as bar:
        def tensor(name: str) -> tuple[str, np.ndarray]:
            bar.update()
            return _random_tensor(name, expected[name][0], c, rng)
        # numbered from 0, as the released checkpoints' shards are (gpt-oss-20b: model-00000-of-00002 to -00002)
        _write_shards(folder, list(expected), tensor, [f"model-{i:05d}-of-{shards - 1:05d}.safetensors"
                                                       for i in range(shards)], metadata={"format": "pt"})
    return folder


def _write_shards(folder: Path, names: list[str], tensor, files: list[str], metadata: dict | None = None) -> None:
    """Write tensor(name) -> (dtype, bits) for `names`, in order, into `files` (consecutive groups, each
    file's tensors made only when it is written), with the index when there are several. One file is
    model.safetensors."""
    if len(files) == 1:
        files = ["model.safetensors"]
    groups = np.array_split(np.arange(len(names)), len(files))
    write_shards(folder, ((fname, {names[i]: tensor(names[i]) for i in group}) for fname, group in zip(files, groups)),
                 metadata=metadata)


def write_original(folder: str | Path, hf_folder: str | Path, shards: int = 1) -> Path:
    """Write the checkpoint in `hf_folder` into `folder` in OpenAI's original format, as a Hugging Face
    repository's `original/` folder holds it (transformers' converter read backwards): config.json in
    OpenAI's names, dtypes.json, and model.safetensors with q, k and v fused into qkv, everything bf16
    but the MXFP4 experts (or, as gpt-oss-120b's, `shards` files model--00001-of-0000N.safetensors and
    their index). The format has no field for what gpt-oss does not vary (ValueError)."""
    source = Checkpoint(hf_folder)
    c, r = source.config, source.config.rope_parameters
    alternating = c.layer_types == tuple("sliding_attention" if i % 2 == 0 else "full_attention"
                                         for i in range(c.num_hidden_layers))
    if not (alternating and c.attention_bias and not c.tie_word_embeddings and r.rope_type == "yarn"
            and not r.truncate and r.attention_factor is None):
        raise ValueError("OpenAI's format holds only alternating layers, biases, an untied lm_head and "
                         "untruncated YaRN")
    config = {"num_hidden_layers": c.num_hidden_layers, "num_experts": c.num_local_experts,
              "experts_per_token": c.num_experts_per_tok, "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
              "intermediate_size": c.intermediate_size, "swiglu_limit": c.swiglu_limit, "head_dim": c.head_dim,
              "num_attention_heads": c.num_attention_heads, "num_key_value_heads": c.num_key_value_heads,
              "sliding_window": c.sliding_window, "initial_context_length": r.original_max_position_embeddings,
              "rope_theta": r.rope_theta, "rope_scaling_factor": r.factor, "rope_ntk_alpha": r.beta_slow,
              "rope_ntk_beta": r.beta_fast}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    tensors = {}
    for name in (EMBED, FINAL_NORM, LM_HEAD):
        tensors[ORIGINAL_NAMES[name]] = _stored(source, name)
    for i in range(c.num_hidden_layers):
        t = {short: _stored(source, layer_tensor_name(i, short)) for short in source.layer(i)}
        for suffix in ("", "_bias"):
            t["qkv" + suffix] = ("BF16", np.concatenate([t.pop(part + suffix)[1] for part in "qkv"]))
        for short, value in t.items():
            tensors[layer_tensor_name(i, short, original=True)] = value
    dtypes = {name: {"U8": "UE8" if name.endswith(".scales") else "FP4"}.get(dtype, dtype)
              for name, (dtype, _) in tensors.items()}
    (folder / "dtypes.json").write_text(json.dumps(dtypes, indent=2))
    _write_shards(folder, list(tensors), tensors.get,
                  [f"model--{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)])
    return folder


def write_dense(folder: str | Path, hf_folder: str | Path) -> Path:
    """Write the checkpoint in `hf_folder` into `folder` with its experts dequantized to bf16, as
    fine-tuned gpt-oss checkpoints hold them: `mlp.experts.gate_up_proj` [E, D, 2I] and `down_proj`
    [E, I, D] (transformers' layout, x @ W), no quantization_config. MXFP4 values are exact in bf16."""
    source = Checkpoint(hf_folder)
    c = source.config
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = json.loads((Path(hf_folder) / "config.json").read_text())
    config.pop("quantization_config", None)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if (Path(hf_folder) / "generation_config.json").is_file():
        shutil.copy2(Path(hf_folder) / "generation_config.json", folder)
    tensors = {}
    for name in expected_tensors(c):
        if not name.endswith(("_blocks", "_scales")):
            tensors[name] = _stored(source, name)
    for i in range(c.num_hidden_layers):
        for short in DENSE_EXPERTS:
            w = dequantize(source.tensor(layer_tensor_name(i, f"{short}_blocks")),
                           source.tensor(layer_tensor_name(i, f"{short}_scales")))
            tensors[layer_tensor_name(i, short)] = ("BF16", f32_to_bf16(np.ascontiguousarray(w.transpose(0, 2, 1))))
    write(folder / "model.safetensors", tensors)
    return folder


def _stored(checkpoint: Checkpoint, name: str) -> tuple[str, np.ndarray]:
    """(dtype, bits) of a tensor as the released checkpoints store it: MXFP4 bytes as they are, the rest
    in bf16 (the norms too, whatever transformers' converter says of them)."""
    array = checkpoint.tensor(name)
    if array.dtype == np.uint8:
        return "U8", array
    return "BF16", array if array.dtype == np.uint16 else f32_to_bf16(array)


def _generation_config(c: GptOssConfig) -> dict:
    g = {k: v for k, v in GENERATION_CONFIG.items() if not isinstance(v, int) or v < c.vocab_size}
    g["eos_token_id"] = [i for i in g["eos_token_id"] if i < c.vocab_size]
    if not g["eos_token_id"]:
        del g["eos_token_id"]
    return g


def _random_tensor(name: str, shape: tuple[int, ...], c: GptOssConfig, rng: np.random.Generator):
    """(safetensors dtype, stored bits) of one random tensor, scaled by its role."""
    if name.endswith("_blocks"):
        return "U8", rng.integers(0, 256, shape, dtype=np.uint8)
    if name.endswith("_scales"):
        return "U8", (scale_exponent(name, shape) + rng.integers(-1, 2, shape)).astype(np.uint8)
    mean, std = weight_stats(name, shape, c)
    normal = rng.standard_normal(shape, dtype=np.float32)
    return "BF16", f32_to_bf16(std * normal if mean == 0 else mean + std * normal)


def scale_exponent(name: str, shape: tuple[int, ...]) -> int:
    """The e8m0 byte that a random MXFP4 matrix's block scales (`*_scales` [..., rows, K/32]) lie
    around (+-1): weights ~ std / sqrt(fan_in), gate_up std 2.5 so |gate| > 7 a few percent of the time."""
    fan_in = shape[-1] * 32
    std = (2.5 if "gate_up" in name else 1.0) / math.sqrt(fan_in)
    return 127 + round(math.log2(std / _FP4_RMS))


def weight_stats(name: str, shape: tuple[int, ...], c: GptOssConfig) -> tuple[float, float]:
    """(mean, std) of the normal distribution a random dense tensor is drawn from, by its role."""
    D = c.hidden_size
    if name.endswith("norm.weight"):
        return 1.0, 0.1
    if name.endswith("bias"):
        return 0.0, 0.1
    if name.endswith("sinks") or name == EMBED:
        return 0.0, 1.0
    if name == LM_HEAD or name.endswith("router.weight"):
        return 0.0, 2.0 / math.sqrt(D)
    if name.endswith(("q_proj.weight", "k_proj.weight")):
        # q and k entries of std ~1.2, so q.k / sqrt(Dh) has std ~1.5 at any head size
        return 0.0, 1.2 / math.sqrt(D)
    return 0.0, 1.0 / math.sqrt(shape[-1])  # v_proj, o_proj
