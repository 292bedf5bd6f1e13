"""The KV cache's one-token write for decode steps with static shapes (gptoss_np/cache.py).

write_one is written against the array module of its arguments: the NumPy reference (and the CPU
backend's write, which only a cache with static shapes takes: the GPU's CUDA graphs and tests);
kv_cache_cuda.write_one does it in one CUDA launch.
"""

from __future__ import annotations


def write_one(k, v, positions, keys, values, stored):
    """keys[s], values[s] = k[0], v[0] and stored[s] = positions[0] for the slot s = positions[0] % S.

    k, v [1, G, Dh], positions [1] (the token's position, where the arrays are), keys, values
    [S, G, Dh], stored [S] (each slot's position); returns keys, values, stored."""
    slots = positions % keys.shape[0]  # [1], computed where the position is
    keys[slots] = k
    values[slots] = v
    stored[slots] = positions
    return keys, values, stored
