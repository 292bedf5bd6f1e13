"""Where a checkpoint named by the user lies: a folder, or a Hugging Face hub id in the local cache.

`gptoss_np.load`, `Tokenizer.from_pretrained` and `gptoss-generate --model` take either
`path/to/gpt-oss-20b` or `openai/gpt-oss-20b`. A hub id is looked up where huggingface_hub keeps its
downloads (`hf download openai/gpt-oss-20b`); nothing is ever downloaded here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")  # org/name


def cache_folder() -> Path:
    """The local Hugging Face hub cache, found as huggingface_hub finds it: `$HF_HUB_CACHE`, else the
    older `$HUGGINGFACE_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
    `~/.cache/huggingface/hub` (a variable set, even empty, counts; `~` and `$VAR` in them expand)."""
    def expanded(path: str) -> str:
        return os.path.expandvars(os.path.expanduser(path))
    cache = os.getenv("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    home = expanded(os.getenv("HF_HOME", os.path.join(cache, "huggingface")))
    return Path(expanded(os.getenv("HF_HUB_CACHE", os.getenv("HUGGINGFACE_HUB_CACHE", os.path.join(home, "hub")))))


def resolve(spec: str | os.PathLike) -> Path:
    """The checkpoint folder that `spec` names: a folder as it is, or for a hub id `org/name` that
    is not a folder here, its snapshot in `cache_folder()`: `models--org--name/snapshots/<rev>`, `<rev>`
    read from `refs/main` (or the only snapshot). A folder that holds only OpenAI's original format in
    `original/` (`hf download openai/gpt-oss-20b --include "original/*"`) resolves to that subfolder.
    FileNotFoundError, saying where it looked, if neither exists; NotADirectoryError if `spec` is a file."""
    folder = _folder(spec)
    if not (folder / "config.json").is_file() and (folder / "original" / "config.json").is_file():
        return folder / "original"
    return folder


def _folder(spec: str | os.PathLike) -> Path:
    """The folder `spec` names: itself, or a hub id's snapshot (see resolve)."""
    if not str(spec):
        raise FileNotFoundError("the checkpoint folder is an empty path")
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"{spec} is a file, not a folder: give the checkpoint folder")
    if not _HUB_ID.fullmatch(str(spec)):
        raise FileNotFoundError(f"checkpoint folder {spec} does not exist")
    hub = cache_folder()
    repo = hub / f"models--{str(spec).replace('/', '--')}"
    refs_main = repo / "refs" / "main"
    if refs_main.is_file():
        candidates = [repo / "snapshots" / refs_main.read_text().strip()]
        if not candidates[0].is_dir():
            raise FileNotFoundError(f"{refs_main} names the snapshot {candidates[0].name}, which is not in "
                                    f"{repo / 'snapshots'}: download the model again, or give a snapshot folder")
    else:
        candidates = sorted((repo / "snapshots").glob("*/"))
    found = [folder for folder in candidates if folder.is_dir()]
    if len(found) == 1:
        return found[0]
    if found:
        raise FileNotFoundError(f"{repo} holds {len(found)} snapshots and no refs/main to choose one: "
                                f"give the snapshot folder itself")
    raise FileNotFoundError(f"no folder {spec}, and no snapshot of {spec} in the local Hugging Face cache "
                            f"{hub} (only the local cache is searched; download the model first: `hf download "
                            f"{spec} --exclude 'original/*' --exclude 'metal/*'`, the Hugging Face files without "
                            f"OpenAI's own formats beside them)")
