"""The glue of the fp16x2 products (simulator) against gptoss_np.fp16x2's NumPy functions."""

from __future__ import annotations

import numpy as np
import pytest

from cuda_sim.sim import poisoned
from gptoss_np import fp16x2
from gptoss_np.kernels import fp16x2_cuda


SHIPPED = pytest.mark.shipped_launches  # the GPU's block shapes (tests/cuda_sim/conftest.py): 256 threads


@pytest.mark.parametrize("K", [37, pytest.param(300, marks=SHIPPED)])
def test_split_rows_gathers_scales_and_splits_as_the_reference(K):
    rng = np.random.default_rng(0)
    rows_scale = np.exp2(rng.integers(-60, 60, (5, 1)))
    x = (rng.standard_normal((5, K)) * rows_scale * np.exp2(rng.integers(-20, 20, (5, K)))).astype(np.float32)
    x[2] = 0
    rows = np.array([4, 0, 0, 2, 3, 1, 4], np.int32)  # a pair order: rows repeat, any order
    parts, exponents = fp16x2_cuda.split_rows(x, rows, poisoned((14, K), np.float16), np.full(7, 999, np.int32))
    ref_parts, ref_exponents = fp16x2.interleaved_parts(x[rows])
    np.testing.assert_array_equal(exponents, ref_exponents)
    np.testing.assert_array_equal(parts, ref_parts)


@pytest.mark.parametrize("N", [41, pytest.param(300, marks=SHIPPED)])
def test_sum_rows_scales_back_biases_and_scatters(N):
    rng = np.random.default_rng(1)
    P, E = 6, 3
    dest = np.array([5, 0, 3, 1, 4, 2], np.int32)
    experts = rng.integers(0, E, P).astype(np.int32)
    exponents = rng.integers(-20, 20, P).astype(np.int32)
    y = rng.standard_normal((2 * P, N), dtype=np.float32)
    largest = np.array([120, 5, 250], np.int32)  # factors 2**-20, 2**-135 (a denormal), 2**110
    bias = rng.standard_normal((E, N), dtype=np.float32)
    out = fp16x2_cuda.sum_rows(y, dest, experts, exponents, largest, bias, poisoned((P + 1, N)))
    ref = np.full((P + 1, N), np.nan, np.float32)
    ref[dest] = fp16x2.sum_parts(y, exponents, largest[experts]) + bias[experts]
    np.testing.assert_array_equal(out, ref)  # the same float32 operations in the same order
