"""bfloat16: conversions against torch, the GEMV and tiled matmul against the NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest

from gptoss_np.kernels import bf16


def test_conversions_match_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(10000).astype(np.float32) * 10.0 ** rng.integers(-30, 30, 10000),
                        np.array([0.0, -0.0, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, 3.4e38, 1e-40], np.float32)])
    ours = bf16.f32_to_bf16(x)
    theirs = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(ours, theirs)  # round to nearest, ties to even
    back = torch.from_numpy(theirs.view(np.int16)).view(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(bf16.bf16_to_f32(ours), back)


@pytest.mark.parametrize("T", [1, 3, 8, 9, 33])
def test_matmul_matches_reference(T):
    rng = np.random.default_rng(T)
    N, K = 1100, 72  # 1100 rows: a full tile of 1024 and a partial one
    w = bf16.f32_to_bf16(rng.standard_normal((N, K), dtype=np.float32))
    x = rng.standard_normal((T, K), dtype=np.float32)
    ref = bf16.matmul_ref(x.astype(np.float64), w)
    out = bf16.matmul(x, w)
    assert out.shape == (T, N) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_widen_kernel_is_exact():
    rng = np.random.default_rng(1)
    w = rng.integers(0, 2 ** 16, (17, 40), dtype=np.uint16)
    w[(w & 0x7F80) == 0x7F80] = 0  # no inf / NaN patterns
    out = np.full((17, 40), np.nan, np.float32)
    bf16._widen_kernel(w, out)
    np.testing.assert_array_equal(out, bf16.bf16_to_f32(w))
