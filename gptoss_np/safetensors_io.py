"""The safetensors file format, read lazily through a memory map and written without torch.

A file is: 8 bytes little-endian header length N, N bytes of JSON
`{name: {"dtype": "BF16", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}}`,
then the raw little-endian data; offsets count from the end of the header.

NumPy has no bfloat16, so BF16 tensors are read and written as their raw uint16 bits
(`gptoss_np.kernels.bf16` converts).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

INDEX_FILE = "model.safetensors.index.json"  # a checkpoint in several files: which file holds each tensor

# safetensors dtype name -> NumPy dtype of the stored bits
DTYPES = {
    "BF16": np.dtype("<u2"), "F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8"),
    "U8": np.dtype("u1"), "I8": np.dtype("i1"), "I16": np.dtype("<i2"), "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"), "BOOL": np.dtype("?"),
}
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsError(ValueError):
    """A file that is not valid safetensors; the message names the file (and tensor)."""


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # safetensors name, e.g. "BF16"
    shape: tuple[int, ...]
    begin: int  # absolute byte offsets in the file
    end: int


class SafetensorsFile:
    """One .safetensors file: the header is parsed at once, tensor data is mapped on first use."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tensors = _read_header(self.path)
        self._map: np.memmap | None = None

    def get(self, name: str) -> np.ndarray:
        """The tensor's stored bits as a read-only array view of the memory map (BF16 as uint16)."""
        info = self.tensors[name]
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        raw = np.asarray(self._map[info.begin:info.end])
        return raw.view(DTYPES[info.dtype]).reshape(info.shape)


def _read_header(path: Path) -> dict[str, TensorInfo]:
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise SafetensorsError(f"{path}: too short to be a safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > min(_MAX_HEADER, size - 8):
                raise SafetensorsError(f"{path}: header length {n} does not fit in a file of {size} bytes "
                                       "(truncated or not safetensors)")
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: safetensors file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{path}: header is not valid JSON ({e})") from None

    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: header is not a JSON object")
    start = 8 + n
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise SafetensorsError(f"{path}: tensor {name!r} has a malformed header entry") from None
        if not all(_count(x) for x in (*shape, begin, end)) or begin > end:
            raise SafetensorsError(f"{path}: tensor {name!r} has a malformed header entry (shape {entry['shape']}, "
                                   f"data_offsets {entry['data_offsets']})")
        if dtype not in DTYPES:
            raise SafetensorsError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
        nbytes = math.prod(shape) * DTYPES[dtype].itemsize  # Python ints: a huge shape cannot overflow
        if end - begin != nbytes:
            raise SafetensorsError(f"{path}: tensor {name!r} has {end - begin} bytes, "
                                   f"its dtype {dtype} and shape {list(shape)} need {nbytes}")
        if start + end > size:
            raise SafetensorsError(f"{path}: truncated: tensor {name!r} ends at byte {start + end}, "
                                   f"the file has {size}")
        tensors[name] = TensorInfo(dtype, shape, start + begin, start + end)
    return tensors


def _count(x) -> bool:
    """A header's sizes and offsets are non-negative integers (JSON's true and false are not)."""
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def write(path: str | Path, tensors: dict[str, tuple[str, np.ndarray]], metadata: dict | None = None) -> None:
    """Write `{name: (safetensors dtype, array of its stored bits)}` to `path`."""
    header, offset = {}, 0
    for name, (dtype, array) in tensors.items():
        if array.dtype != DTYPES[dtype]:
            raise TypeError(f"{name}: {dtype} is stored as {DTYPES[dtype]}, got {array.dtype}")
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    if metadata:
        header["__metadata__"] = metadata
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format aligns the data on 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for _, array in tensors.values():
            np.ascontiguousarray(array).tofile(f)


def write_shards(folder: Path, shards, metadata: dict | None = None) -> None:
    """Write each `(file name, {name: (safetensors dtype, bits)})` of the iterable `shards` into `folder`,
    in turn (a generator makes each file's tensors only when it is written), then, when there was more
    than one file, the index that maps every name to its file (INDEX_FILE), as the released checkpoints have."""
    weight_map, total, files = {}, 0, 0
    for file, tensors in shards:
        write(folder / file, tensors, metadata=metadata)
        files += 1
        weight_map.update(dict.fromkeys(tensors, file))
        total += sum(array.nbytes for _, array in tensors.values())
    if files > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / INDEX_FILE).write_text(json.dumps(index, indent=2))
