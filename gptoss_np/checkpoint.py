"""A Hugging Face gpt-oss checkpoint folder: config.json plus one or more safetensors files.

This module owns every tensor name. `expected_tensors` is the one weight-name map: what the engine
reads, with shapes and dtypes, in Hugging Face's names or in those of OpenAI's original format (a
repository's `original/` folder: the same tensors renamed, q, k and v fused into one qkv tensor),
which `Checkpoint` tells apart by the name of the embedding. `Checkpoint` opens a folder (single
file, or sharded with `model.safetensors.index.json`), checks every expected tensor
before anything is computed, and hands out tensors lazily from memory maps. MXFP4 experts stay packed:
`*_blocks` uint8 [E, rows, K/32, 16] and `*_scales` uint8 [E, rows, K/32], rows being output features
and K the input features.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from . import user_warnings
from .config import GptOssConfig
from .kernels import bf16, mxfp4
from .safetensors_io import INDEX_FILE, SafetensorsError, SafetensorsFile

FLOAT = ("BF16", "F32", "F16")  # dense weights: bf16 in the released checkpoints
PACKED = ("U8",)  # MXFP4 nibbles and e8m0 scales


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
    # dense experts, as fine-tuned or dequantized checkpoints hold them (no quantization_config), in place
    # of the packed "{short}_blocks" and "{short}_scales" (see DENSE_EXPERTS)
    "gate_up": "mlp.experts.gate_up_proj", "down": "mlp.experts.down_proj",
}
EMBED, FINAL_NORM, LM_HEAD = "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"

# OpenAI's original format: short name -> name after "block.{i}."; q, k and v (and their biases) are
# row ranges of one "qkv" tensor, in that order (as transformers' converter splits them)
ORIGINAL_LAYER_TENSORS = {
    "attn_norm": "attn.norm.scale", "qkv": "attn.qkv.weight", "qkv_bias": "attn.qkv.bias",
    "o": "attn.out.weight", "o_bias": "attn.out.bias", "sinks": "attn.sinks",
    "mlp_norm": "mlp.norm.scale", "router": "mlp.gate.weight", "router_bias": "mlp.gate.bias",
    "gate_up_blocks": "mlp.mlp1_weight.blocks", "gate_up_scales": "mlp.mlp1_weight.scales",
    "gate_up_bias": "mlp.mlp1_bias",
    "down_blocks": "mlp.mlp2_weight.blocks", "down_scales": "mlp.mlp2_weight.scales", "down_bias": "mlp.mlp2_bias",
}
ORIGINAL_NAMES = {EMBED: "embedding.weight", FINAL_NORM: "norm.scale", LM_HEAD: "unembedding.weight"}
DENSE_EXPERTS = ("gate_up", "down")  # short names of the dense experts' tensors


def layer_tensor_name(layer: int, short: str, original: bool = False) -> str:
    return f"block.{layer}.{ORIGINAL_LAYER_TENSORS[short]}" if original else \
        f"model.layers.{layer}.{LAYER_TENSORS[short]}"


def _dense_shapes(c: GptOssConfig) -> dict[str, tuple[int, ...]]:
    """The dense experts' shapes: x @ W, so [E, inputs, outputs] (transformers' GptOssExperts)."""
    D, E, I = c.hidden_size, c.num_local_experts, c.intermediate_size
    return {"gate_up": (E, D, 2 * I), "down": (E, I, D)}


def _layer_shapes(c: GptOssConfig, original: bool = False) -> dict[str, tuple[int, ...]]:
    D, Dh, E, I = c.hidden_size, c.head_dim, c.num_local_experts, c.intermediate_size
    q, kv = c.num_attention_heads * Dh, c.num_key_value_heads * Dh
    attention = {"qkv": (q + 2 * kv, D), "qkv_bias": (q + 2 * kv,)} if original else \
        {"q": (q, D), "q_bias": (q,), "k": (kv, D), "k_bias": (kv,), "v": (kv, D), "v_bias": (kv,)}
    shapes = {
        "attn_norm": (D,), **attention, "o": (D, q), "o_bias": (D,), "sinks": (c.num_attention_heads,),
        "mlp_norm": (D,), "router": (E, D), "router_bias": (E,),
        "gate_up_blocks": (E, 2 * I, D // 32, 16), "gate_up_scales": (E, 2 * I, D // 32), "gate_up_bias": (E, 2 * I),
        "down_blocks": (E, D, I // 32, 16), "down_scales": (E, D, I // 32), "down_bias": (E, D),
    }
    if not c.attention_bias:
        for short in ("q_bias", "k_bias", "v_bias", "qkv_bias", "o_bias"):
            shapes.pop(short, None)
    return shapes


def expected_tensors(c: GptOssConfig, original: bool = False,
                     dense: bool = False) -> dict[str, tuple[tuple[int, ...], tuple[str, ...]]]:
    """Every tensor the engine reads: name -> (shape, accepted safetensors dtypes), in Hugging Face's
    names or (`original`) in those of OpenAI's original format; `dense`: the experts unquantized."""
    V, D = c.vocab_size, c.hidden_size
    names = {EMBED: ((V, D), FLOAT), FINAL_NORM: ((D,), FLOAT)}
    if not c.tie_word_embeddings:
        names[LM_HEAD] = ((V, D), FLOAT)
    if original:
        names = {ORIGINAL_NAMES[name]: spec for name, spec in names.items()}
    for i in range(c.num_hidden_layers):
        for short, shape in _layer_shapes(c, original).items():
            packed = short.endswith(("_blocks", "_scales"))
            if not (dense and packed):
                names[layer_tensor_name(i, short, original)] = (shape, PACKED if packed else FLOAT)
        if dense:
            for short, shape in _dense_shapes(c).items():
                names[layer_tensor_name(i, short)] = (shape, FLOAT)
    return names


class Checkpoint:
    """An opened, validated checkpoint folder; `tensor(name)` and `layer(i)` read tensors lazily.

    Tensors come as memory-mapped arrays: BF16 as its uint16 bits, F32 as float32 (F16 is widened
    to float32), MXFP4 blocks and scales as uint8.

    A checkpoint whose experts are dense (a fine-tuned or dequantized one: `gate_up_proj` and `down_proj`
    in bf16, no quantization_config) is a CheckpointError unless `quantize_experts`: then `layer`
    rounds them to MXFP4 (kernels/mxfp4.quantize_rows) as it reads them, which the engine runs. Not exact:
    the model is then the MXFP4 rounding of the checkpoint, as the released checkpoints are of theirs.
    `nbytes` counts the weights as they will be held: the experts packed. quantize.py saves the rounding.
    `ties_lm_head`: the embedding serves as lm_head too, as config.json's tie_word_embeddings asks, unless
    the files store an lm_head.weight with other values: then, as transformers loads them, each is its own.
    Tied files that store lm_head.weight and no embedding have it read as the embedding, as transformers
    ties them too.
    """

    def __init__(self, folder: str | Path, quantize_experts: bool = False):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"checkpoint folder {self.folder} does not exist")
        self.config = GptOssConfig.from_file(self.folder / "config.json")
        self._files = self._open_files()
        self.original = ORIGINAL_NAMES[EMBED] in self._files and EMBED not in self._files  # OpenAI's format
        self._names = {name: ORIGINAL_NAMES[name] if self.original else name for name in ORIGINAL_NAMES}
        self._embedding_is_lm_head = self.config.tie_word_embeddings and self._names[EMBED] not in self._files \
            and self._names[LM_HEAD] in self._files  # tied files that store only lm_head.weight
        self.dense = layer_tensor_name(0, "gate_up") in self._files and \
            layer_tensor_name(0, "gate_up_blocks") not in self._files  # unquantized experts
        if self.dense and not quantize_experts:
            raise CheckpointError(
                f"{self.folder}: the experts are stored dense (gate_up_proj and down_proj unquantized, as in "
                f"a fine-tuned or dequantized checkpoint), and gptoss_np runs MXFP4 experts; load it with "
                f"quantize_experts=True (gptoss-generate --quantize-experts) to round them to MXFP4 as they "
                f"load (not exact: the MXFP4 rounding of this checkpoint), or save that rounding once with "
                f"python -m gptoss_np.quantize {self.folder} TARGET")
        self._validate()
        self.ties_lm_head = self.config.tie_word_embeddings and self._lm_head_is_embedding()
        if self.config.tie_word_embeddings and not self.ties_lm_head:
            user_warnings.warn(f"{self.folder}: config.json ties lm_head to the embedding (tie_word_embeddings), "
                               f"but {self._stored_name(LM_HEAD)} is stored with other values: it is used, as "
                               "transformers does; set tie_word_embeddings to false to silence this")
        files = {id(f): f for f in self._files.values()}.values()
        self.nbytes = sum(info.end - info.begin for f in files for info in f.tensors.values())
        if self.dense:  # held as MXFP4: 17 bytes a block of 32 weights, not as stored
            for i in range(self.config.num_hidden_layers):
                for short in DENSE_EXPERTS:
                    info = self._files[layer_tensor_name(i, short)].tensors[layer_tensor_name(i, short)]
                    self.nbytes += math.prod(info.shape) * 17 // 32 - (info.end - info.begin)

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

    def _stored_name(self, name: str) -> str:
        """`name` as this checkpoint's files call it: OpenAI's format has its own for EMBED, FINAL_NORM and
        LM_HEAD, and tied files without an embedding read EMBED from LM_HEAD's."""
        if name == EMBED and self._embedding_is_lm_head:
            name = LM_HEAD
        return self._names.get(name, name)

    def _lm_head_is_embedding(self) -> bool:
        """Whether lm_head.weight is not stored, is read as the embedding, or holds the embedding's values
        (compared as float32, some rows at a time: both are [V, D])."""
        if self._stored_name(LM_HEAD) not in self._files or self._embedding_is_lm_head:
            return True
        head, embedding, rows = self.tensor(LM_HEAD), self.tensor(EMBED), 4096
        return all(np.array_equal(bf16.as_f32(head[i:i + rows]), bf16.as_f32(embedding[i:i + rows]))
                   for i in range(0, len(head), rows))

    def _validate(self) -> None:
        expected = expected_tensors(self.config, self.original, self.dense)
        embed, head = self._stored_name(EMBED), self._stored_name(LM_HEAD)
        expected[embed] = expected.pop(self._names[EMBED])  # LM_HEAD's, if read there
        if head in self._files:  # also where tie_word_embeddings would do without it (see ties_lm_head)
            expected.setdefault(head, expected[embed])
        for name, (shape, dtypes) in expected.items():
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
        """The tensor `name` (in OpenAI's format, EMBED, FINAL_NORM and LM_HEAD read their own names)."""
        name = self._stored_name(name)
        f = self._files[name]
        array = f.get(name)
        return array.astype(np.float32) if f.tensors[name].dtype == "F16" else array

    def layer(self, i: int) -> dict[str, np.ndarray]:
        """Layer i's tensors by short name (see LAYER_TENSORS)."""
        t = {short: self.tensor(layer_tensor_name(i, short, self.original))
             for short in _layer_shapes(self.config, self.original)
             if not (self.dense and short.endswith(("_blocks", "_scales")))}
        if self.dense:  # [E, inputs, outputs] -> MXFP4 of [E, outputs, inputs], an expert at a time
            for short in DENSE_EXPERTS:
                w = self.tensor(layer_tensor_name(i, short))
                packed = [mxfp4.quantize_rows(bf16.as_f32(w[e]).T) for e in range(w.shape[0])]
                t[f"{short}_blocks"], t[f"{short}_scales"] = (np.stack(part) for part in zip(*packed))
        if self.original:  # q, k, v: row ranges of the fused tensor (views of its memory map)
            c = self.config
            q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
            for suffix in ("", "_bias") if "qkv_bias" in t else ("",):
                fused = t.pop("qkv" + suffix)
                t["q" + suffix], t["k" + suffix], t["v" + suffix] = fused[:q], fused[q:q + kv], fused[q + kv:]
        return t


def _opened(path: Path, cache: dict[Path, SafetensorsFile]) -> SafetensorsFile:
    if path not in cache:
        try:
            cache[path] = SafetensorsFile(path)
        except FileNotFoundError:
            raise CheckpointError(f"{path}: safetensors file not found") from None
        except SafetensorsError as e:
            raise CheckpointError(str(e)) from None
    return cache[path]
