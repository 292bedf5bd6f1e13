"""A Hugging Face gpt-oss checkpoint folder: config.json plus one or more safetensors files.

This module owns every tensor name. `expected_tensors` is the one weight-name map: what the engine
reads, with shapes and dtypes. `Checkpoint` opens a folder (single file, or sharded with
`model.safetensors.index.json`), checks every expected tensor before anything is computed, and hands
out tensors lazily from memory maps. MXFP4 experts stay packed: `*_blocks` uint8 [E, rows, K/32, 16]
and `*_scales` uint8 [E, rows, K/32], rows being output features and K the input features.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .config import GptOssConfig
from .safetensors_io import SafetensorsError, SafetensorsFile

FLOAT = ("BF16", "F32", "F16")  # dense weights: bf16 in the released checkpoints
PACKED = ("U8",)  # MXFP4 nibbles and e8m0 scales

INDEX_FILE = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint the engine cannot run; the message names the file and the tensor."""


# Per-layer tensors: the engine's short name -> Hugging Face name after "model.layers.{i}."
LAYER_TENSORS = {
    "attn_norm": "input_layernorm.weight",
    "q": "self_attn.q_proj.weight", "q_bias": "self_attn.q_proj.bias",
    "k": "self_attn.k_proj.weight", "k_bias": "self_attn.k_proj.bias",
    "v": "self_attn.v_proj.weight", "v_bias": "self_attn.v_proj.bias",
    "o": "self_attn.o_proj.weight", "o_bias": "self_attn.o_proj.bias",
    "sinks": "self_attn.sinks",
    "mlp_norm": "post_attention_layernorm.weight",
    "router": "mlp.router.weight", "router_bias": "mlp.router.bias",
    "gate_up_blocks": "mlp.experts.gate_up_proj_blocks", "gate_up_scales": "mlp.experts.gate_up_proj_scales",
    "gate_up_bias": "mlp.experts.gate_up_proj_bias",
    "down_blocks": "mlp.experts.down_proj_blocks", "down_scales": "mlp.experts.down_proj_scales",
    "down_bias": "mlp.experts.down_proj_bias",
}
EMBED, FINAL_NORM, LM_HEAD = "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"


def layer_tensor_name(layer: int, short: str) -> str:
    return f"model.layers.{layer}.{LAYER_TENSORS[short]}"


def _layer_shapes(c: GptOssConfig) -> dict[str, tuple[int, ...]]:
    D, Dh, E, I = c.hidden_size, c.head_dim, c.num_local_experts, c.intermediate_size
    q, kv = c.num_attention_heads * Dh, c.num_key_value_heads * Dh
    shapes = {
        "attn_norm": (D,), "q": (q, D), "q_bias": (q,), "k": (kv, D), "k_bias": (kv,),
        "v": (kv, D), "v_bias": (kv,), "o": (D, q), "o_bias": (D,), "sinks": (c.num_attention_heads,),
        "mlp_norm": (D,), "router": (E, D), "router_bias": (E,),
        "gate_up_blocks": (E, 2 * I, D // 32, 16), "gate_up_scales": (E, 2 * I, D // 32), "gate_up_bias": (E, 2 * I),
        "down_blocks": (E, D, I // 32, 16), "down_scales": (E, D, I // 32), "down_bias": (E, D),
    }
    if not c.attention_bias:
        for short in ("q_bias", "k_bias", "v_bias", "o_bias"):
            del shapes[short]
    return shapes


def expected_tensors(c: GptOssConfig) -> dict[str, tuple[tuple[int, ...], tuple[str, ...]]]:
    """Every tensor the engine reads: name -> (shape, accepted safetensors dtypes)."""
    V, D = c.vocab_size, c.hidden_size
    names = {EMBED: ((V, D), FLOAT), FINAL_NORM: ((D,), FLOAT)}
    if not c.tie_word_embeddings:
        names[LM_HEAD] = ((V, D), FLOAT)
    for i in range(c.num_hidden_layers):
        for short, shape in _layer_shapes(c).items():
            packed = short.endswith(("_blocks", "_scales"))
            names[layer_tensor_name(i, short)] = (shape, PACKED if packed else FLOAT)
    return names


class Checkpoint:
    """An opened, validated checkpoint folder; `tensor(name)` and `layer(i)` read tensors lazily.

    Tensors come as memory-mapped arrays: BF16 as its uint16 bits, F32 as float32 (F16 is widened
    to float32), MXFP4 blocks and scales as uint8.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"checkpoint folder {self.folder} does not exist")
        self.config = GptOssConfig.from_file(self.folder / "config.json")
        self._files = self._open_files()
        files = {id(f): f for f in self._files.values()}.values()
        self.nbytes = sum(info.end - info.begin for f in files for info in f.tensors.values())
        self._validate()

    def _open_files(self) -> dict[str, SafetensorsFile]:
        """tensor name -> the file holding it."""
        index = self.folder / INDEX_FILE
        opened: dict[Path, SafetensorsFile] = {}
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index}: not a valid safetensors index ({e!r})") from None
            if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
                raise CheckpointError(f"{index}: weight_map must map tensor names to file names")
            files = {name: self.folder / fname for name, fname in weight_map.items()}
        else:
            paths = sorted(self.folder.glob("*.safetensors"))
            if not paths:
                raise FileNotFoundError(f"{self.folder}: no *.safetensors file and no {INDEX_FILE}")
            files = {}
            for path in paths:
                files.update(dict.fromkeys(_opened(path, opened).tensors, path))
        where = {}
        for name, path in files.items():
            f = _opened(path, opened)
            if name not in f.tensors:
                raise CheckpointError(f"{path}: tensor {name!r} is listed in {INDEX_FILE} but not in the file")
            where[name] = f
        return where

    def _validate(self) -> None:
        for name, (shape, dtypes) in expected_tensors(self.config).items():
            f = self._files.get(name)
            if f is None:
                raise CheckpointError(f"{self.folder}: tensor {name!r} is missing from the checkpoint")
            info = f.tensors[name]
            if info.shape != shape:
                raise CheckpointError(f"{f.path}: tensor {name!r} has shape {list(info.shape)}, "
                                      f"config.json implies {list(shape)}")
            if info.dtype not in dtypes:
                raise CheckpointError(f"{f.path}: tensor {name!r} has dtype {info.dtype}, "
                                      f"expected {' or '.join(dtypes)}")

    def tensor(self, name: str) -> np.ndarray:
        f = self._files[name]
        array = f.get(name)
        return array.astype(np.float32) if f.tensors[name].dtype == "F16" else array

    def layer(self, i: int) -> dict[str, np.ndarray]:
        """Layer i's tensors by short name (see LAYER_TENSORS)."""
        return {short: self.tensor(layer_tensor_name(i, short)) for short in _layer_shapes(self.config)}


def _opened(path: Path, cache: dict[Path, SafetensorsFile]) -> SafetensorsFile:
    if path not in cache:
        try:
            cache[path] = SafetensorsFile(path)
        except FileNotFoundError:
            raise CheckpointError(f"{path}: safetensors file not found") from None
        except SafetensorsError as e:
            raise CheckpointError(str(e)) from None
    return cache[path]
