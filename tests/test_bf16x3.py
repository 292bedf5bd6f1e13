"""bf16x3.py: the three-part split of float32 activations, and three bf16 products against the float64
truth, with bf16 products emulated in NumPy as tensor cores make them (bf16 operands, exact products,
sums in float32). tests/cuda_sim emulates cuBLAS's gemmEx call itself; tests/test_gpu.py runs it."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import model_like_weights, rel_err
from gptoss_np import bf16x3


def widened(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def test_split_is_exact_in_three_bf16_parts():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 300)) * np.exp2(rng.integers(-60, 60, (64, 300)))).astype(np.float32)
    parts = bf16x3.split(x)
    for part in parts:
        assert (part.view(np.uint32) & np.uint32(0xFFFF) == 0).all()  # exact in bf16
    np.testing.assert_array_equal((parts[0] + parts[1]) + parts[2], x)
    assert (np.abs(parts[1]) <= np.abs(x) * 2.0 ** -7).all() and (np.abs(parts[2]) <= np.abs(x) * 2.0 ** -15).all()
    rows = bf16x3.interleaved_parts(x)  # [3T, K] bf16 bits: each token's parts side by side
    assert rows.dtype == np.uint16 and rows.shape == (3 * 64, 300)
    for i, part in enumerate(parts):
        np.testing.assert_array_equal(widened(rows[i::3]), part)
    np.testing.assert_array_equal(bf16x3.sum_parts(widened(rows)), x)


@pytest.mark.parametrize("weights", ["mxfp4", "bf16"])
def test_three_bf16_products_are_as_exact_as_float32(weights):
    rng = np.random.default_rng(2)
    N, K, T = 256, 2880, 16
    w = model_like_weights(weights, rng, N, K)
    assert (bf16x3.truncate_to_bf16(w) == w).all()  # the precondition: these weights are exact in bf16
    x = rng.standard_normal((T, K), dtype=np.float32)
    truth = x.astype(np.float64) @ w.astype(np.float64).T
    products = widened(bf16x3.interleaved_parts(x)) @ w.T  # [3T, N]: exact products, float32 sums
    three = bf16x3.sum_parts(products)
    one = bf16x3.truncate_to_bf16(x) @ w.T
    float32 = x @ w.T
    assert rel_err(three, truth) <= 3 * rel_err(float32, truth) + 1e-7  # float32's accuracy
    assert rel_err(one, truth) > 300 * rel_err(three, truth)  # what one bf16 product would lose


def test_sum_parts_adds_the_smallest_parts_first():
    """The docstring's order, (x3 + x2) + x1: two small products that only together reach the last bit of
    the largest are kept, where adding each to the largest alone would round it away (ties to even)."""
    y = np.array([[1.0, -4.0], [2.0 ** -24, -2.0 ** -22], [2.0 ** -24, -2.0 ** -22]], np.float32)  # one token
    exact = y.astype(np.float64).sum(axis=0)  # 1 + 2**-23 and -(4 + 2**-21): float32 values
    assert (exact.astype(np.float32) == exact).all()
    np.testing.assert_array_equal(bf16x3.sum_parts(y)[0], exact)
