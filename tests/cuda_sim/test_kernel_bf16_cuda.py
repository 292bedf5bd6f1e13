"""bf16 GEMV and row widening (simulator) against bf16.matmul_ref and bf16.bf16_to_f32."""

from __future__ import annotations

import numpy as np
import pytest

from cuda_sim.sim import assert_close, poisoned
from gptoss_np.kernels import bf16, bf16_cuda


@pytest.mark.parametrize("T, N, K", [(1, 5, 40), (3, 3, 18)])  # K = 18: 9 words, two 4-word pieces and a tail
def test_gemv(T, N, K):
    rng = np.random.default_rng(K)
    w = bf16.f32_to_bf16(rng.standard_normal((N, K), dtype=np.float32))
    x = rng.standard_normal((T, K), dtype=np.float32)
    bias = rng.standard_normal(N, dtype=np.float32)
    out = poisoned((T, N))
    bf16_cuda.gemv(x, w, bias, out)
    assert_close(out, bf16.matmul_ref(x.astype(np.float64), w) + bias)


def test_gemv_row_limit():
    with pytest.raises(ValueError, match="do not fit"):
        bf16_cuda.gemv(np.zeros((bf16_cuda.MAX_ROWS + 1, 4), np.float32), np.zeros((2, 4), np.uint16),
                       np.zeros(2, np.float32), poisoned((bf16_cuda.MAX_ROWS + 1, 2)))


def test_widen_rows_is_exact():
    rng = np.random.default_rng(2)
    w = rng.integers(0, 2 ** 16, (9, 20), dtype=np.uint16)
    w[(w & 0x7F80) == 0x7F80] = 0  # no inf / NaN patterns
    rows = np.array([4, 0, 8, 4], np.int64)
    out = poisoned((4, 20))
    bf16_cuda.widen_rows(w, rows, out)
    np.testing.assert_array_equal(out, bf16.bf16_to_f32(w[rows]))
