"""The KV cache's one-token write on the GPU (decode steps with static shapes, gptoss_np/cache.py).

  write_one  the token's key and value at slot position % S of a layer's buffers, and its position,
             in one launch (written with CuPy it takes four: a modulo and three scatters)
The NumPy reference is kv_cache.write_one.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from .common_cuda import check, stream_of

THREADS = 256


@cuda.jit(cache=True)
def _write_one_kernel(k, v, positions, keys, values, stored):
    """Thread i < G * Dh copies element i of the token's key and value; thread 0 also its position."""
    i = cuda.grid(1)
    Dh = k.shape[2]
    slot = positions[0] % keys.shape[0]
    if i < k.shape[1] * Dh:
        keys[slot, i // Dh, i % Dh] = k[0, i // Dh, i % Dh]
        values[slot, i // Dh, i % Dh] = v[0, i // Dh, i % Dh]
    if i == 0:
        stored[slot] = positions[0]


def write_one(k, v, positions, keys, values, stored):
    """As kv_cache.write_one: k, v [1, G, Dh] f32, positions [1] int64, keys, values [S, G, Dh] f32,
    stored [S] int64."""
    S, G, Dh = keys.shape
    check(k.shape == v.shape == (1, G, Dh) and values.shape == keys.shape and positions.shape == (1,)
          and stored.shape == (S,) and k.dtype == v.dtype == keys.dtype == values.dtype == np.float32
          and positions.dtype == stored.dtype == np.int64,
          "kv cache write_one", k=k, v=v, positions=positions, keys=keys, values=values, stored=stored)
    _write_one_kernel[-(-G * Dh // THREADS), THREADS, stream_of(keys)](k, v, positions, keys, values, stored)
    return keys, values, stored
