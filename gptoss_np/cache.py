"""The key/value cache of one sequence, on the host (NumPy) or the GPU (CuPy): `ops.xp` says which.

Per layer l, with G kv heads of size Dh:
  keys, values  float32 [S_l, G, Dh]
  positions     int64   [S_l]   (position of the token in each slot, -1 while empty)
Full-attention layers keep every token: slot = position; S_l starts at the requested capacity (the
context the caller asked for) and doubles if a sequence outgrows it.
Sliding-window layers keep only their last W tokens: a ring buffer of S_l = W slots, position p
in slot p % W. Attention masks by stored position, so slot order never matters.
Tokens arrive at consecutive positions from 0, so the filled slots are always the first
min(length, S_l): no mask is needed to find them.

With `static_shapes` (set by cuda_graph.GraphDecoder), a single new token is written at slot
position % S_l, and its query attends over the layer's whole buffer (empty slots hold position -1
and are never seen): no shape then depends on the position, so one recorded decode step serves
every position. That is exact for sliding layers too: the one key it evicts, at position p - W, is
outside the window of the query at p. The buffers must not grow then: the caller sizes the cache.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .config import GptOssConfig


class Snapshot(NamedTuple):
    """What KVCache.restore needs to rewind a cache: its length then, and copies of the sliding
    layers' (keys, values, positions) by layer."""
    length: int
    windows: dict


class KVCache:
    def __init__(self, config: GptOssConfig, capacity: int, ops):
        self.ops = ops  # the backend (backend.py): its arrays, and the static-shape write
        self.xp = xp = ops.xp
        self.length = 0  # tokens seen so far = position of the next token
        self.static_shapes = False  # one-token updates attend over whole buffers (see above)
        G, Dh = config.num_key_value_heads, config.head_dim
        self.windows = [config.window(i) for i in range(config.num_hidden_layers)]
        sizes = [w if w is not None else max(1, capacity) for w in self.windows]
        try:
            self.keys = [xp.zeros((s, G, Dh), np.float32) for s in sizes]
            self.values = [xp.zeros((s, G, Dh), np.float32) for s in sizes]
            self.positions = [xp.full(s, -1, np.int64) for s in sizes]
        except MemoryError as error:  # NumPy's, or CuPy's OutOfMemoryError
            need = sum(sizes) * (2 * G * Dh * 4 + 8)
            raise MemoryError(f"the KV cache for {capacity} tokens needs {need / 1e9:.2f} GB "
                              f"({ops.name}: {error})") from None

    @property
    def capacity(self) -> int | None:
        """Tokens the full-attention layers hold before they must grow (None if every layer slides)."""
        full = [keys.shape[0] for keys, window in zip(self.keys, self.windows) if window is None]
        return min(full) if full else None

    def snapshot(self) -> Snapshot:
        """The state to come back to with `restore`. Only the sliding layers are copied: a full layer
        keeps token p in slot p, so rewinding the length is enough there (later slots are written again
        before any query can see them)."""
        xp = self.xp
        return Snapshot(self.length, {i: (xp.copy(self.keys[i]), xp.copy(self.values[i]), xp.copy(self.positions[i]))
                                      for i, window in enumerate(self.windows) if window is not None})

    def restore(self, snapshot: Snapshot) -> None:
        """Rewind to `snapshot` (taken from this cache): the tokens written since are forgotten."""
        for i, (keys, values, positions) in snapshot.windows.items():
            self.keys[i][...], self.values[i][...], self.positions[i][...] = keys, values, positions
        self.length, self.static_shapes = snapshot.length, False

    def reserve(self, capacity: int) -> None:
        """Room for `capacity` tokens in the full-attention layers (grown as `update` grows them)."""
        for layer, window in enumerate(self.windows):
            if window is None:
                self._reserve(layer, capacity)

    def update(self, layer: int, k, v, positions):
        """Store the new tokens' k, v [T, G, Dh] at `positions` [T] (an xp array: self.length,
        self.length + 1, ...); return the keys, values and positions that the new queries may attend
        to (everything the layer keeps, plus the new ones). Slicing uses host integers only, so no
        value crosses from the GPU to the host."""
        xp, window = self.xp, self.windows[layer]
        start, end = self.length, self.length + len(positions)
        if self.static_shapes and len(positions) == 1:
            return self._write_one(layer, k, v, positions, end)
        if window is None:
            self._reserve(layer, end)
            self.keys[layer][start:end] = k
            self.values[layer][start:end] = v
            self.positions[layer][start:end] = positions
            return self.keys[layer][:end], self.values[layer][:end], self.positions[layer][:end]
        # sliding: the new queries also need old keys that the new ones will evict, so attend to
        # the ring's contents and the new tokens together, then keep the last W tokens
        kept = min(start, window)
        k_all = xp.concatenate([self.keys[layer][:kept], k])
        v_all = xp.concatenate([self.values[layer][:kept], v])
        pos_all = xp.concatenate([self.positions[layer][:kept], positions])
        last = slice(max(0, len(positions) - window), None)
        slots = positions[last] % window
        self.keys[layer][slots] = k[last]
        self.values[layer][slots] = v[last]
        self.positions[layer][slots] = positions[last]
        return k_all, v_all, pos_all

    def _write_one(self, layer: int, k, v, positions, end: int):
        """The static-shape update of one token at device position `positions` [1]."""
        if self.windows[layer] is None and end > self.keys[layer].shape[0]:
            raise ValueError(f"the KV cache holds {self.keys[layer].shape[0]} tokens and cannot grow "
                             "while its shapes are static (CUDA graph decode): make a larger one")
        return self.ops.cache_write_one(k, v, positions, self.keys[layer], self.values[layer], self.positions[layer])

    def _reserve(self, layer: int, size: int) -> None:
        have = self.keys[layer].shape[0]
        if size <= have:
            return
        new = max(size, 2 * have)
        grow = [(0, new - have), (0, 0), (0, 0)]
        self.keys[layer] = self.xp.pad(self.keys[layer], grow)
        self.values[layer] = self.xp.pad(self.values[layer], grow)
        self.positions[layer] = self.xp.pad(self.positions[layer], (0, new - have), constant_values=-1)
