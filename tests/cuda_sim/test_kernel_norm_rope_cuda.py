"""RMSNorm, RoPE tables and rotation (simulator) against norm_rope's references."""

from __future__ import annotations

import numpy as np
import pytest

from cuda_sim.sim import assert_close, poisoned
from gptoss_np.kernels import norm_rope, norm_rope_cuda


# 37: the 16 threads walk a partial pass; shipped: 256 threads walk gpt-oss's 2880
@pytest.mark.parametrize("D", [37, pytest.param(2880, marks=pytest.mark.shipped_launches)])
def test_rmsnorm(D):
    rng = np.random.default_rng(0)
    x = 3 * rng.standard_normal((3, D), dtype=np.float32)
    w = rng.standard_normal(D, dtype=np.float32)
    out = poisoned((3, D))
    norm_rope_cuda.rmsnorm(x, w, 1e-5, out)
    assert_close(out, norm_rope.rmsnorm_ref(x, w, 1e-5))


def test_rope_tables_and_rotation_in_place():
    rng = np.random.default_rng(1)
    inv_freq = (1.0 / 150000 ** (np.arange(0, 16, 2) / 16)).astype(np.float32)
    positions = np.array([0, 5, 6, 4000], np.int64)
    cos, sin = poisoned((4, 8)), poisoned((4, 8))
    norm_rope_cuda.rope_tables(inv_freq, 1.3466, positions, cos, sin)
    ref_cos, ref_sin = norm_rope.rope_tables(inv_freq, 1.3466, positions)
    assert_close(cos, ref_cos)
    assert_close(sin, ref_sin)
    x = rng.standard_normal((4, 3, 16), dtype=np.float32)
    ref = norm_rope.rope_ref(x, ref_cos, ref_sin)
    norm_rope_cuda.rope(x, cos, sin, x)
    assert_close(x, ref)
