"""The model's hyper-parameters, with Hugging Face `config.json` names.

`GptOssConfig.from_dict` is the one place that renames fields and fills defaults:
- `experts_per_token` (the openai/gpt-oss name) is an alias of `num_experts_per_tok`, and `num_experts` of
  `num_local_experts` (as transformers' GptOssConfig maps it);
- RoPE comes either as `rope_theta` + `rope_scaling` (the released gpt-oss-20b file) or as
  `rope_parameters` with `rope_theta` inside (newer transformers); where a file has both, `rope_scaling`
  counts, and a top-level `original_max_position_embeddings` over rope_scaling's, as transformers reads them;
- a missing `layer_types` means alternating sliding / full attention, sliding first;
- missing RoPE scaling means gpt-oss's YaRN (factor 32 over 4096 positions), and a missing rope_theta
  gpt-oss's 150000, as in transformers;
- the config.json of OpenAI's original format (a Hugging Face repository's `original/` folder: `num_experts`,
  `rope_scaling_factor`, `rope_ntk_alpha`, `rope_ntk_beta`, `initial_context_length`) is translated as
  openai/gpt-oss's reference model reads it (`from_openai_format`).
Unknown keys are ignored.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

LAYER_TYPES = ("sliding_attention", "full_attention")
ROPE_TYPES = ("default", "yarn")
_MAX_LAYERS = 1 << 16  # a bound on the default layer_types list that a config.json makes us build


class ConfigError(ValueError):
    """A config.json that the engine cannot run; the message names the field."""


@dataclasses.dataclass(frozen=True)
class RopeParameters:
    """RoPE settings: plain RoPE (`rope_type` "default") or YaRN (Hugging Face semantics)."""

    rope_theta: float
    rope_type: str = "default"
    factor: float = 1.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    original_max_position_embeddings: int | None = None
    truncate: bool = True  # transformers' default when the key is absent
    attention_factor: float | None = None
    # DeepSeek's YaRN, where rope_scaling gives both: without an attention_factor, cos and sin are scaled
    # by the ratio of 0.1 * m * ln(factor) + 1 for m = mscale and m = mscale_all_dim
    mscale: float | None = None
    mscale_all_dim: float | None = None


@dataclasses.dataclass(frozen=True)
class GptOssConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    num_local_experts: int
    num_experts_per_tok: int
    sliding_window: int
    layer_types: tuple[str, ...]
    rope_parameters: RopeParameters
    max_position_embeddings: int = 131072
    rms_norm_eps: float = 1e-5
    swiglu_limit: float = 7.0
    swiglu_alpha: float = 1.702
    attention_bias: bool = True
    tie_word_embeddings: bool = False
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None

    def window(self, layer: int) -> int | None:
        """How many keys a query of `layer` sees (itself included), or None for full attention."""
        return self.sliding_window if self.layer_types[layer] == "sliding_attention" else None

    @classmethod
    def from_file(cls, path: str | Path) -> "GptOssConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path.parent} holds no {path.name}: it is not a checkpoint folder") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    @classmethod
    def from_dict(cls, d: dict) -> "GptOssConfig":
        if d.get("model_type", "gpt_oss") != "gpt_oss":  # another model's checkpoint: say so, not what it lacks
            raise ConfigError(f"model_type is {d['model_type']!r}: gptoss_np runs gpt-oss checkpoints "
                              f"(model_type 'gpt_oss')")
        d = from_openai_format(d) if is_openai_format(d) else dict(d)
        if "num_experts_per_tok" not in d and "experts_per_token" in d:
            d["num_experts_per_tok"] = d["experts_per_token"]
        if "num_local_experts" not in d and "num_experts" in d:
            d["num_local_experts"] = d["num_experts"]
        # as transformers' GptOssConfig reads them: left out, gpt-oss's 64 and 8; null, from the other fields
        d.setdefault("head_dim", 64)
        d.setdefault("num_key_value_heads", 8)
        if d["head_dim"] is None and "hidden_size" in d and "num_attention_heads" in d:
            d["head_dim"] = _int(d, "hidden_size") // max(_int(d, "num_attention_heads"), 1)
        if d["num_key_value_heads"] is None and "num_attention_heads" in d:
            d["num_key_value_heads"] = d["num_attention_heads"]
        if d.get("layer_types") is None and "num_hidden_layers" in d:
            if _int(d, "num_hidden_layers") > _MAX_LAYERS:
                raise ConfigError(f"num_hidden_layers = {d['num_hidden_layers']} is more than any checkpoint holds")
            d["layer_types"] = [LAYER_TYPES[i % 2] for i in range(d["num_hidden_layers"])]
        d["layer_types"] = tuple(d["layer_types"]) if isinstance(d.get("layer_types"), list) else d.get("layer_types")
        if isinstance(d.get("eos_token_id"), list):
            d["eos_token_id"] = tuple(d["eos_token_id"])
        d["rope_parameters"] = _rope_parameters(d)
        for name in ("rms_norm_eps", "swiglu_limit", "swiglu_alpha"):
            if d.get(name) is not None:
                d[name] = _real(d[name], name)

        fields = {f.name: f for f in dataclasses.fields(cls)}
        missing = [name for name, f in fields.items() if f.default is dataclasses.MISSING and d.get(name) is None]
        if missing:
            raise ConfigError(f"missing field(s) {', '.join(missing)}")
        config = cls(**{k: v for k, v in d.items() if k in fields and v is not None})  # null: the default
        config._validate()
        return config

    def _validate(self) -> None:
        """ConfigError naming the field unless every field has a type and value the engine can run."""
        for name in ("attention_bias", "tie_word_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        ids = self.eos_token_id if isinstance(self.eos_token_id, tuple) else (self.eos_token_id,)
        for name, values in (("eos_token_id", ids), ("pad_token_id", (self.pad_token_id,)),
                             ("bos_token_id", (self.bos_token_id,))):
            if not all(v is None or is_token_id(v) for v in values):
                raise ConfigError(f"{name} must be a token id (or a list of them for eos_token_id), "
                                  f"got {getattr(self, name)!r}")
        if not isinstance(self.layer_types, tuple) or not all(isinstance(t, str) for t in self.layer_types):
            raise ConfigError(f"layer_types must be a list of {' or '.join(LAYER_TYPES)}, got {self.layer_types!r}")
        positive = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "head_dim", "num_local_experts", "num_experts_per_tok",
                    "sliding_window", "max_position_embeddings"]
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("hidden_size", "intermediate_size"):
            if getattr(self, name) % 32:
                raise ConfigError(f"{name} = {getattr(self, name)} must be divisible by 32 (the MXFP4 block size)")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"num_attention_heads = {self.num_attention_heads} must be divisible by "
                              f"num_key_value_heads = {self.num_key_value_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim = {self.head_dim} must be even (RoPE rotates pairs)")
        if self.num_experts_per_tok > self.num_local_experts:
            raise ConfigError(f"num_experts_per_tok = {self.num_experts_per_tok} exceeds "
                              f"num_local_experts = {self.num_local_experts}")
        if len(self.layer_types) != self.num_hidden_layers:
            raise ConfigError(f"layer_types has {len(self.layer_types)} entries, "
                              f"num_hidden_layers is {self.num_hidden_layers}")
        unknown = sorted(set(self.layer_types) - set(LAYER_TYPES))
        if unknown:
            raise ConfigError(f"layer_types: unknown type(s) {unknown}; expected {list(LAYER_TYPES)}")
        if not self.rms_norm_eps > 0:
            raise ConfigError(f"rms_norm_eps must be positive, got {self.rms_norm_eps!r}")
        if not self.swiglu_limit > 0:
            raise ConfigError(f"swiglu_limit must be positive, got {self.swiglu_limit!r}")


def is_openai_format(d: dict) -> bool:
    """Whether config.json is OpenAI's original format rather than Hugging Face's."""
    return "num_experts" in d and "num_local_experts" not in d and "model_type" not in d


def from_openai_format(d: dict) -> dict:
    """OpenAI's original config.json with Hugging Face names, read as openai/gpt-oss's reference model
    reads it: YaRN from `rope_scaling_factor` (plain RoPE at 1 or less) over `initial_context_length`
    positions, its beta_fast = `rope_ntk_beta` and beta_slow = `rope_ntk_alpha`, no truncation; sliding
    attention on even layers. The file names no context length: `max_position_embeddings` is the
    stretched one, initial_context_length x factor (131072 for gpt-oss, transformers' value)."""
    d = dict(d)
    d["num_local_experts"] = d.pop("num_experts")
    initial = d.get("initial_context_length", 4096)
    factor = _real(d.pop("rope_scaling_factor", 1.0), "rope_scaling_factor")
    if factor > 1:
        d["rope_scaling"] = {"rope_type": "yarn", "factor": factor, "truncate": False,
                             "beta_fast": d.pop("rope_ntk_beta", 32.0), "beta_slow": d.pop("rope_ntk_alpha", 1.0),
                             "original_max_position_embeddings": initial}
    else:
        d["rope_scaling"] = {"rope_type": "default"}
    if d.get("max_position_embeddings") is None and isinstance(initial, int):
        d["max_position_embeddings"] = round(initial * max(factor, 1.0))
    return d


def is_token_id(value) -> bool:
    """A token id as JSON gives one: a non-negative integer (true and false are not)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _int(d: dict, name: str, prefix: str = "") -> int:
    """d[name], which must be an integer; ConfigError naming `prefix + name` if it is not."""
    value = d[name]
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{prefix}{name} must be an integer, got {value!r}")
    return value


def _real(value, name: str) -> float:
    """value as a float; ConfigError naming `name` unless it is a finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    return float(value)


# what transformers' GptOssConfig assumes when config.json has no rope_theta, and neither rope_scaling nor
# rope_parameters
DEFAULT_ROPE_THETA = 150000.0
DEFAULT_ROPE = {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                "truncate": False, "original_max_position_embeddings": 4096}


def _rope_parameters(d: dict) -> RopeParameters:
    """Merge `rope_theta` + `rope_scaling` (old style) or `rope_parameters` (new style) into one record."""
    given = d.get("rope_scaling") or d.get("rope_parameters") or DEFAULT_ROPE
    if not isinstance(given, dict):
        raise ConfigError(f"rope_scaling must be an object of RoPE settings, got {given!r}")
    params = dict(given)
    if params.get("rope_theta") is None:
        params["rope_theta"] = DEFAULT_ROPE_THETA if d.get("rope_theta") is None else d["rope_theta"]
    theta = _real(params["rope_theta"], "rope_theta")
    if not theta > 1:  # the base of the wavelengths' geometric series (YaRN divides by its log)
        raise ConfigError(f"rope_theta must be greater than 1, got {params['rope_theta']!r}")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise ConfigError(f"rope_scaling.rope_type {rope_type!r} is not supported; expected one of {ROPE_TYPES}")
    partial = params.get("partial_rotary_factor", d.get("partial_rotary_factor"))
    if partial not in (None, 1):
        raise ConfigError(f"partial_rotary_factor {partial!r} is not supported: gpt-oss rotates every "
                          "dimension of a head (1.0)")
    if rope_type == "default":
        return RopeParameters(rope_theta=theta)
    # the context trained at: a top-level key counts over rope_scaling's (transformers, for Phi-3's files),
    # and without either, max_position_embeddings does
    for source, prefix, key in ((d, "", "original_max_position_embeddings"),
                                (params, "rope_scaling.", "original_max_position_embeddings"),
                                (d, "", "max_position_embeddings")):
        if source.get(key) is not None:
            original = _int(source, key, prefix)
            if original <= 0:
                raise ConfigError(f"{prefix}{key} must be a positive integer, got {original!r}")
            break
    else:
        raise ConfigError("rope_scaling.original_max_position_embeddings is missing")
    factor = params.get("factor")
    if factor is None:  # the context it was stretched to over the one it was trained at
        if d.get("max_position_embeddings") is None:
            raise ConfigError("rope_scaling.factor is missing")
        factor = _int(d, "max_position_embeddings") / original
    if not _real(factor, "rope_scaling.factor") > 0:
        raise ConfigError(f"rope_scaling.factor must be positive, got {factor!r}")
    if not isinstance(params.get("truncate", True), bool):
        raise ConfigError(f"rope_scaling.truncate must be true or false, got {params['truncate']!r}")
    attention_factor = params.get("attention_factor")
    mscale = {key: _real(params[key], f"rope_scaling.{key}") for key in ("mscale", "mscale_all_dim") if params.get(key)}
    if len(mscale) < 2:
        mscale = {}  # as transformers: one of them alone (or 0) changes nothing
    elif not min(mscale.values()) > 0:
        raise ConfigError(f"rope_scaling's mscale and mscale_all_dim must be positive, got {mscale}")
    return RopeParameters(
        rope_theta=theta,
        rope_type="yarn",
        factor=float(factor),
        beta_fast=_real(params.get("beta_fast") or 32.0, "rope_scaling.beta_fast"),
        beta_slow=_real(params.get("beta_slow") or 1.0, "rope_scaling.beta_slow"),
        original_max_position_embeddings=original,
        truncate=params.get("truncate", True),
        attention_factor=None if attention_factor is None else _real(attention_factor, "rope_scaling.attention_factor"),
        **mscale,
    )
