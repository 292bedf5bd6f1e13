"""The KV cache's one-token write (simulator) against kv_cache.write_one."""

from __future__ import annotations

import numpy as np
import pytest

from gptoss_np.kernels import kv_cache, kv_cache_cuda


# a ring that wrapped, then a slot = the position: 2 x 8 values, two blocks of the simulator's 8 threads;
# 3 x 6 values, the last of three blocks partial; shipped: gpt-oss's 8 x 64 values, two blocks of 256 threads
@pytest.mark.parametrize("position, S, G, Dh", [(13, 5, 2, 8), (2, 40, 2, 8), (13, 5, 3, 6),
                                                pytest.param(70, 128, 8, 64, marks=pytest.mark.shipped_launches)])
def test_write_one(position, S, G, Dh):
    rng = np.random.default_rng(S)
    keys, values = rng.standard_normal((2, S, G, Dh), dtype=np.float32)
    stored = rng.integers(-1, 50, S)
    k, v = rng.standard_normal((2, 1, G, Dh), dtype=np.float32)
    positions = np.array([position])
    ref = kv_cache.write_one(k, v, positions, keys.copy(), values.copy(), stored.copy())
    out = kv_cache_cuda.write_one(k, v, positions, keys, values, stored)
    for ours, theirs in zip(out, ref):
        np.testing.assert_array_equal(ours, theirs)
    assert stored[position % S] == position and (keys[position % S] == k[0]).all()
    assert (values[position % S] == v[0]).all()
