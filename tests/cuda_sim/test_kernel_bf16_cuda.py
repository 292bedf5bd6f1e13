"""bf16 GEMV and row widening (simulator) against bf16.matmul_ref and bf16.bf16_to_f32."""

from __future__ import annotations

import numpy as np
import pytest

from cuda_sim.sim import assert_close, poisoned
from gptoss_np.kernels import bf16, bf16_cuda, norm_rope


# (the simulator's shapes, tests/cuda_sim/conftest.py: x staged 48 columns (12 words) at a time, 4 lanes
# of 2 words each a pass (8 words), 2 warps a block)
@pytest.mark.parametrize("T, N, K, warp_rows_from_n", [
    (1, 5, 104, 10**9),  # chunks of 48, 48 and 8 columns: passes of 8 + 4, 8 + 4, 2 words
    (3, 3, 4, 10**9),  # one word a row
    (2, 11, 68, 1),  # 4 rows a warp (the second block's warps have 1 and 4 rows past N); chunks of 48 and 20
    (4, 6, 24, 1),  # MAX_ROWS token rows, 4 rows a warp
    # the shipped launches: x staged in chunks of 2048 and 68 columns, 32 lanes of 2 words, 8 warps
    pytest.param(2, 3, 2116, 10**9, marks=pytest.mark.shipped_launches),
    pytest.param(1, 34, 136, 1, marks=pytest.mark.shipped_launches),  # 4 rows a warp: 32 a block, 2 blocks
])
@pytest.mark.parametrize("split", [False, True])  # a row's K over one warp, or over the block's 2 warps
def test_gemv(T, N, K, warp_rows_from_n, split, monkeypatch):
    monkeypatch.setattr(bf16_cuda, "WARP_ROWS_FROM_N", warp_rows_from_n)
    monkeypatch.setattr(bf16_cuda, "SPLIT_BELOW_N", 10**9 if split else 0)
    rng = np.random.default_rng(K)
    w = bf16.f32_to_bf16(rng.standard_normal((N, K), dtype=np.float32))
    x = rng.standard_normal((T, K), dtype=np.float32)
    bias = rng.standard_normal(N, dtype=np.float32)
    out = poisoned((T, N))
    bf16_cuda.gemv(x, w, bias, out)
    assert_close(out, bf16.matmul_ref(x.astype(np.float64), w) + bias)


def test_gemv_adds_a_residual():
    rng = np.random.default_rng(4)
    w = bf16.f32_to_bf16(rng.standard_normal((6, 24), dtype=np.float32))
    x = rng.standard_normal((2, 24), dtype=np.float32)
    bias, residual = rng.standard_normal(6, dtype=np.float32), rng.standard_normal((2, 6), dtype=np.float32)
    out = poisoned((2, 6))
    bf16_cuda.gemv(x, w, bias, out, residual=residual)
    assert_close(out, residual + (bf16.matmul_ref(x.astype(np.float64), w) + bias))


@pytest.mark.parametrize("T, N, K, split, scale", [
    (1, 5, 104, False, 3.0),  # x staged in chunks of 48, 48 and 8 columns, each thread's squares from all three
    (3, 6, 24, True, 3.0),
    (4, 11, 68, False, 3.0),
    (2, 5, 24, False, 3e-3),  # a mean square of ~1e-5, of eps's order, so that eps shows
    pytest.param(2, 3, 2116, True, 3.0, marks=pytest.mark.shipped_launches),  # 256 threads' squares, 2 chunks
])
def test_gemv_of_the_rmsnorm_of_x(T, N, K, split, scale, monkeypatch):
    """The GEMV of rmsnorm(x) with a residual, and the normed rows it writes, against norm_rope.rmsnorm_ref
    and bf16.matmul_ref."""
    monkeypatch.setattr(bf16_cuda, "SPLIT_BELOW_N", 10**9 if split else 0)
    rng = np.random.default_rng(T + K)
    w = bf16.f32_to_bf16(rng.standard_normal((N, K), dtype=np.float32))
    x = scale * rng.standard_normal((T, K), dtype=np.float32)
    weight, bias = rng.standard_normal(K, dtype=np.float32), rng.standard_normal(N, dtype=np.float32)
    residual = rng.standard_normal((T, N), dtype=np.float32)
    out, normed = poisoned((T, N)), poisoned((T, K))
    bf16_cuda.gemv(x, w, bias, out, residual=residual, norm=(weight, 1e-5, normed))
    h = norm_rope.rmsnorm_ref(x, weight, 1e-5)
    assert_close(normed, h)  # block 0 wrote them
    assert_close(out, residual + (bf16.matmul_ref(h.astype(np.float64), w) + bias))


def test_gemv_row_limit_and_row_length():
    with pytest.raises(ValueError, match="do not fit"):
        bf16_cuda.gemv(np.zeros((bf16_cuda.MAX_ROWS + 1, 4), np.float32), np.zeros((2, 4), np.uint16),
                       np.zeros(2, np.float32), poisoned((bf16_cuda.MAX_ROWS + 1, 2)))
    with pytest.raises(ValueError, match="do not fit"):  # rows are read as 8-byte words
        bf16_cuda.gemv(np.zeros((1, 6), np.float32), np.zeros((2, 6), np.uint16), np.zeros(2, np.float32),
                       poisoned((1, 2)))


def test_widen_rows_is_exact():
    rng = np.random.default_rng(2)
    w = rng.integers(0, 2 ** 16, (9, 20), dtype=np.uint16)
    w[(w & 0x7F80) == 0x7F80] = 0  # no inf / NaN patterns
    rows = np.array([4, 0, 8, 4], np.int64)
    out = poisoned((4, 20))
    bf16_cuda.widen_rows(w, rows, out)
    np.testing.assert_array_equal(out, bf16.bf16_to_f32(w[rows]))
