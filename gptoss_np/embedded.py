"""The embedded default model: a tiny gpt-oss with random weights and the real tokenizer.

`gptoss-generate` runs it when no `--model` is given, so the whole pipeline (harmony prompt,
o200k_harmony tokenizer, prefill, decode, streaming) works on a fresh machine within seconds.
The weights are random and untrained: the model writes gibberish.

The checkpoint is synthetic's "tiny" preset (hidden 64, 2 layers, 8 experts) with gpt-oss's
vocabulary of 201088 ids and its special ids, about 50 MB. It is written once, on first use,
to `<cache>/tiny-default-2` together with its `tokenizer.json` (shaped as gpt-oss's); `<cache>` is `$GPTOSS_NP_CACHE`
or `~/.cache/gptoss_np`. Delete the folder to rebuild it (and, from earlier versions, `tiny-default`
and `o200k_harmony.tokenizer.json` beside it, which nothing reads now).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from . import synthetic
from .tokenizer import HARMONY_SPECIALS, VOCAB_SIZE, Tokenizer, cache_dir_for, make_cache_dir

FOLDER_NAME = "tiny-default-2"  # a new name whenever what default_checkpoint writes changes
SEED = 0


def config() -> dict:
    """The embedded model's config.json: the "tiny" preset with o200k_harmony's ids."""
    return synthetic.config_dict("tiny", vocab_size=VOCAB_SIZE,
                                 eos_token_id=HARMONY_SPECIALS["<|return|>"],
                                 pad_token_id=HARMONY_SPECIALS["<|endoftext|>"])


def released_tokenizer_json(tokenizer: Tokenizer) -> str:
    """o200k_harmony's tokenizer.json as gpt-oss's checkpoints ship it: the special tokens end at
    <|endofprompt|> (200018) of the model's 201088 ids, so the embedded model's tokenizer loads as a real
    one does (Tokenizer.from_pretrained names the rest from config.json's vocab_size)."""
    data = json.loads(tokenizer.hf.to_str())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["id"] <= HARMONY_SPECIALS["<|endofprompt|>"]]
    return json.dumps(data, ensure_ascii=False)


def location(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the embedded checkpoint lives (whether or not it is written yet)."""
    return cache_dir_for(cache_dir) / FOLDER_NAME


def default_checkpoint(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder of the embedded checkpoint, written first if absent.

    The checkpoint is written into a temporary folder beside its place, then renamed there,
    so the folder is either absent or complete, even when several processes race to build it.
    """
    folder = location(cache_dir)
    if folder.is_dir():
        return folder
    make_cache_dir(folder.parent)
    partial = Path(tempfile.mkdtemp(prefix=f".{FOLDER_NAME}.", dir=folder.parent))
    try:
        synthetic.write_checkpoint(partial, config(), seed=SEED, progress=False)
        (partial / "tokenizer.json").write_text(released_tokenizer_json(Tokenizer.o200k_harmony(cache_dir)))
        os.rename(partial, folder)
    except OSError:
        if not folder.is_dir():  # a concurrent build that won the rename is fine
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder
