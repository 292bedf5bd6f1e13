"""The fused glue of the bf16x3 products (simulator) against gptoss_np.bf16x3's NumPy functions."""

from __future__ import annotations

import numpy as np
import pytest

from cuda_sim.sim import poisoned
from gptoss_np import bf16x3
from gptoss_np.kernels import bf16x3_cuda


SHIPPED = pytest.mark.shipped_launches  # the GPU's block shapes (tests/cuda_sim/conftest.py): 256 threads


@pytest.mark.parametrize("K", [37, pytest.param(300, marks=SHIPPED)])
def test_split_rows_gathers_and_splits_exactly(K):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((5, K)) * np.exp2(rng.integers(-40, 40, (5, K)))).astype(np.float32)
    rows = np.array([4, 0, 0, 2, 3, 1, 4], np.int32)  # a pair order: rows repeat, any order
    parts = bf16x3_cuda.split_rows(x, rows, poisoned((21, K), np.uint16))
    np.testing.assert_array_equal(parts, bf16x3.interleaved_parts(x[rows]))


@pytest.mark.parametrize("N", [41, pytest.param(300, marks=SHIPPED)])
def test_sum_rows_sums_biases_and_scatters(N):
    rng = np.random.default_rng(1)
    P, E = 6, 3
    y = rng.standard_normal((3 * P, N), dtype=np.float32)
    dest = np.array([5, 0, 3, 1, 4, 2], np.int32)
    bias_rows = rng.integers(0, E, P).astype(np.int32)
    bias = rng.standard_normal((E, N), dtype=np.float32)
    out = bf16x3_cuda.sum_rows(y, dest, bias_rows, bias, poisoned((P + 1, N)))
    ref = np.full((P + 1, N), np.nan, np.float32)
    ref[dest] = bf16x3.sum_parts(y) + bias[bias_rows]
    np.testing.assert_array_equal(out, ref)  # the same float32 sums in the same order


def test_sum_rows_adds_the_residual_of_each_destination_row():
    rng = np.random.default_rng(2)
    P, N = 4, 19
    y = rng.standard_normal((3 * P, N), dtype=np.float32)
    dest = np.array([2, 0, 3, 1], np.int32)
    bias = rng.standard_normal((1, N), dtype=np.float32)
    residual = rng.standard_normal((P, N), dtype=np.float32)
    out = bf16x3_cuda.sum_rows(y, dest, np.zeros(P, np.int32), bias, poisoned((P, N)), residual=residual)
    ref = np.empty((P, N), np.float32)
    ref[dest] = residual[dest] + (bf16x3.sum_parts(y) + bias[0])
    np.testing.assert_array_equal(out, ref)
