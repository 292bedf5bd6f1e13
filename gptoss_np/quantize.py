"""Save a checkpoint with dense experts (a fine-tuned gpt-oss) in the released MXFP4 layout, once.

Loading dense experts with `quantize_experts=True` rounds them to MXFP4 at every load (about 1.5
minutes for gpt-oss-20b on two cores). `quantize_checkpoint(source, target)`, or

    python -m gptoss_np.quantize SOURCE TARGET

does it once and writes what the released checkpoints hold: config.json with the released
`quantization_config`, `*_blocks` and `*_scales` for the experts, every other tensor as it was, in one
safetensors file a layer with `model.safetensors.index.json`; the source's other files (tokenizer.json,
generation_config.json, ...) are copied. gptoss_np and transformers load the result as they load
openai/gpt-oss-20b. The MXFP4 values are the same as `quantize_experts=True` gives.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from tqdm import tqdm

from . import hub, user_warnings
from .checkpoint import EMBED, FINAL_NORM, INDEX_FILE, LM_HEAD, Checkpoint, CheckpointError, layer_tensor_name
from .safetensors_io import write_shards

# what the released checkpoints' config.json says of their quantization
QUANTIZATION_CONFIG = {"quant_method": "mxfp4", "modules_to_not_convert": [
    "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
_DTYPES = {"uint8": "U8", "uint16": "BF16", "float32": "F32"}  # Checkpoint's arrays -> safetensors dtypes


def quantize_checkpoint(source: str | Path, target: str | Path, progress: bool | None = None) -> Path:
    """Write the checkpoint `source` (a folder or hub id; experts dense) to the folder `target` with
    its experts in MXFP4; returns `target`. progress: a bar over the layers (None: on a terminal)."""
    checkpoint = Checkpoint(hub.resolve(source), quantize_experts=True)
    if not checkpoint.dense:
        raise CheckpointError(f"{checkpoint.folder}: the experts are already MXFP4; nothing to quantize")
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"the target {target} is a file: give a new or empty folder")
    if target.resolve() == checkpoint.folder.resolve():
        raise ValueError("the target folder must not be the source folder")
    if any(target.glob("*.safetensors")):
        raise ValueError(f"{target} holds a checkpoint already: give a new or empty folder (its old weights "
                         f"would lie beside the new ones)")
    target.mkdir(parents=True, exist_ok=True)
    c = checkpoint.config
    L = c.num_hidden_layers
    files = [f"model-{i:05d}-of-{L + 1:05d}.safetensors" for i in range(1, L + 2)]

    def stored(tensors: dict) -> dict:
        return {name: (_DTYPES[a.dtype.name], a) for name, a in tensors.items()}

    def shards():  # one file a layer (read, quantized and written in turn), then the embedding, norm and head
        show = progress if progress is not None else sys.stderr.isatty()
        for i in tqdm(range(L), desc=f"quantizing {checkpoint.folder.name}", unit="layer", disable=not show):
            yield files[i], stored({layer_tensor_name(i, short): a for short, a in checkpoint.layer(i).items()})
        names = [EMBED, FINAL_NORM] + ([] if checkpoint.ties_lm_head else [LM_HEAD])
        yield files[L], stored({name: checkpoint.tensor(name) for name in names})

    write_shards(target, shards(), metadata={"format": "pt"})
    config = json.loads((checkpoint.folder / "config.json").read_text())
    config["quantization_config"] = QUANTIZATION_CONFIG
    if c.tie_word_embeddings and not checkpoint.ties_lm_head:
        config["tie_word_embeddings"] = False  # its lm_head.weight is its own (see Checkpoint.ties_lm_head)
    (target / "config.json").write_text(json.dumps(config, indent=2))
    for path in checkpoint.folder.iterdir():  # tokenizer, generation config, chat template, ...
        if path.is_file() and path.suffix != ".safetensors" and path.name not in ("config.json", INDEX_FILE):
            shutil.copy2(path, target / path.name)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gptoss_np.quantize", description=__doc__.split("\n")[0])
    parser.add_argument("source", help="checkpoint folder (or hub id) whose experts are dense")
    parser.add_argument("target", help="folder to write the MXFP4 checkpoint to")
    args = parser.parse_args(argv)
    try:
        with user_warnings.shown_as_notes(parser.prog):
            print(quantize_checkpoint(args.source, args.target))
    except (OSError, ValueError) as error:  # CheckpointError and ConfigError are ValueErrors
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
