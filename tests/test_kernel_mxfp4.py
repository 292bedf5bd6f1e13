"""MXFP4: the NumPy reference against transformers' dequantizer, the Numba kernels against the reference."""

from __future__ import annotations

import numpy as np
import pytest

from gptoss_np.kernels import mxfp4


def random_packed(rng, shape_rows, groups, scale_range=(110, 135)):
    blocks = rng.integers(0, 256, shape_rows + (groups, 16), dtype=np.uint8)
    scales = rng.integers(*scale_range, shape_rows + (groups,), dtype=np.uint8)
    return blocks, scales


def test_fp4_table_is_e2m1():
    for nibble, value in enumerate(mxfp4.FP4_VALUES):
        sign, exponent, mantissa = nibble >> 3, (nibble >> 1) & 3, nibble & 1
        magnitude = mantissa / 2 if exponent == 0 else (1 + mantissa / 2) * 2.0 ** (exponent - 1)
        assert value == (-magnitude if sign else magnitude)
        assert np.signbit(value) == bool(sign)


def test_dequantize_matches_transformers():
    torch = pytest.importorskip("torch")
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors
    rng = np.random.default_rng(0)
    blocks, scales = random_packed(rng, (3, 40), 4, scale_range=(0, 250))
    ours = mxfp4.dequantize(blocks, scales)  # [E, N, K]
    theirs = convert_moe_packed_tensors(torch.from_numpy(blocks), torch.from_numpy(scales), dtype=torch.float32)
    np.testing.assert_array_equal(ours, theirs.transpose(1, 2).numpy())  # theirs is [E, K, N]


def test_low_nibble_is_the_even_element():
    blocks = np.zeros((1, 1, 16), np.uint8)
    blocks[0, 0, 0] = 0x72  # low nibble 2 (1.0) is element 0, high nibble 7 (6.0) is element 1
    w = mxfp4.dequantize(blocks, np.full((1, 1), 127, np.uint8))
    assert w[0, :3].tolist() == [1.0, 6.0, 0.0]


@pytest.mark.parametrize("P, N, groups", [(1, 16, 1), (3, 37, 3), (4, 130, 2)])
def test_gemv_pairs_matches_reference(P, N, groups):
    rng = np.random.default_rng(P * N)
    E = 5
    blocks, scales = random_packed(rng, (E, N), groups, scale_range=(90, 160))
    x = rng.standard_normal((P, groups * 32), dtype=np.float32)
    experts = rng.integers(0, E, P)
    out = mxfp4.gemv_pairs(x, blocks, scales, experts)
    for p, e in enumerate(experts):
        ref = mxfp4.matmul_ref(x[p:p + 1].astype(np.float64), blocks[e], scales[e])[0]
        np.testing.assert_allclose(out[p], ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("T, N", [(1, 600), (2, 600), (3, 600), (6, 600), (9, 600), (40, 600), (96, 600),
                                  (97, 600), (40, 601)])
def test_matmul_paths(T, N):
    """GEMV up to GEMV_MAX_ROWS (1), the tile kernel up to TILED_MAX_ROWS (96; N a multiple of its rows,
    the last token tile partial or whole), else BLAS on dequantized tiles (600 rows: a full tile of 512
    and a partial one)."""
    rng = np.random.default_rng(T + N)
    groups = 3
    blocks, scales = random_packed(rng, (N,), groups)
    x = rng.standard_normal((T, groups * 32), dtype=np.float32)
    ref = mxfp4.matmul_ref(x.astype(np.float64), blocks, scales)
    out = mxfp4.matmul(x, blocks, scales)
    assert out.shape == (T, N) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_matmul_path_choice(monkeypatch):
    calls = []
    monkeypatch.setattr(mxfp4, "gemv_pairs", lambda *a: calls.append("gemv"))
    monkeypatch.setattr(mxfp4, "_tiled", lambda *a: calls.append("tiled"))
    monkeypatch.setattr(mxfp4, "_dequantize_kernel", lambda blocks, scales, out: (calls.append("blas"), out.fill(0)))
    blocks, scales = random_packed(np.random.default_rng(0), (64,), 1)
    for T in (mxfp4.GEMV_MAX_ROWS, mxfp4.GEMV_MAX_ROWS + 1, mxfp4.TILED_MAX_ROWS, mxfp4.TILED_MAX_ROWS + 1):
        mxfp4.matmul(np.zeros((T, 32), np.float32), blocks, scales)
    assert calls == ["gemv", "tiled", "tiled", "blas"]


def test_dequantize_kernel_is_exact():
    rng = np.random.default_rng(7)
    blocks, scales = random_packed(rng, (33,), 5, scale_range=(0, 250))
    out = np.full((33, 160), np.nan, np.float32)
    mxfp4._dequantize_kernel(blocks, scales, out)
    np.testing.assert_array_equal(out, mxfp4.dequantize(blocks, scales))


@pytest.mark.parametrize("T", [1, 20, 100])  # every path of matmul checks before any kernel reads
def test_shape_mismatch_is_an_error(T):
    blocks = np.zeros((2, 4, 2, 16), np.uint8)
    with pytest.raises(ValueError, match="do not fit"):
        mxfp4.gemv_pairs(np.zeros((1, 32), np.float32), blocks, np.zeros((2, 4, 2), np.uint8), np.zeros(1, int))
    with pytest.raises(ValueError, match="do not fit"):
        mxfp4.matmul(np.zeros((T, 32), np.float32), blocks[0], np.zeros((4, 2), np.uint8))
