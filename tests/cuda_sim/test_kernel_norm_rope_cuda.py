"""RMSNorm, RoPE tables and rotation (simulator) against norm_rope's references."""

from __future__ import annotations

import numpy as np
import pytest

from cuda_sim.sim import assert_close, poisoned
from gptoss_np.kernels import norm_rope, norm_rope_cuda


# 37: the 16 threads walk a partial pass; 13: a row shorter than the block, whose threads are still a power
# of two (16, 3 past the row) for the tree sum; scale 3e-3: a mean square of ~1e-5, of eps's order, so that eps shows;
# shipped: 256 threads walk gpt-oss's 2880
@pytest.mark.parametrize("D, scale", [(37, 3.0), (13, 3.0), (37, 3e-3),
                                      pytest.param(2880, 3.0, marks=pytest.mark.shipped_launches)])
def test_rmsnorm(D, scale):
    rng = np.random.default_rng(0)
    x = scale * rng.standard_normal((3, D), dtype=np.float32)
    w = rng.standard_normal(D, dtype=np.float32)
    out = poisoned((3, D))
    norm_rope_cuda.rmsnorm(x, w, 1e-5, out)
    assert_close(out, norm_rope.rmsnorm_ref(x, w, 1e-5))


# 4 x 8 table entries and 4 x 3 x 8 rotations fill the simulator's 16-thread blocks; 5 x 5 and 5 x 3 x 5 end
# in partial ones
@pytest.mark.parametrize("positions, heads, Dh", [([0, 5, 6, 4000], 3, 16), ([0, 5, 6, 4000, 131071], 3, 10)])
def test_rope_tables_and_rotation(positions, heads, Dh):
    rng = np.random.default_rng(1)
    inv_freq = (1.0 / 150000 ** (np.arange(0, Dh, 2) / Dh)).astype(np.float32)
    positions = np.array(positions, np.int64)
    T = len(positions)
    cos, sin = poisoned((T, Dh // 2)), poisoned((T, Dh // 2))
    norm_rope_cuda.rope_tables(inv_freq, 1.3466, positions, cos, sin)
    ref_cos, ref_sin = norm_rope.rope_tables(inv_freq, 1.3466, positions)
    assert_close(cos, ref_cos)
    assert_close(sin, ref_sin)
    x = rng.standard_normal((T, heads, Dh), dtype=np.float32)
    ref = norm_rope.rope_ref(x, ref_cos, ref_sin)
    out = poisoned(x.shape)  # into another array, as the engine calls it
    norm_rope_cuda.rope(x, cos, sin, out)
    assert_close(out, ref)
    norm_rope_cuda.rope(x, cos, sin, x)  # and in place
    assert_close(x, ref)
