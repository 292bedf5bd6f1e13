"""tf32.py: the rounding to TF32 against a float64 reference, and the two-product split against the
float64 truth, with TF32 products emulated in NumPy as the tensor cores make them (operands rounded to
TF32, products exact, sums in float32). tests/test_gpu.py checks cuBLAS's own TF32 mode."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import model_like_weights, rel_err
from gptoss_np import tf32


def tf32_reference(x: np.ndarray) -> np.ndarray:
    """Round to 11 significant bits, ties to even (np.round), in float64."""
    m, e = np.frexp(x.astype(np.float64))  # x = m * 2**e, 0.5 <= |m| < 1
    return np.ldexp(np.round(m * 2.0 ** 11), e - 11).astype(np.float32)


def tf32_product(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """a @ w.T as a TF32 tensor core makes it."""
    return tf32.round_to_tf32(a) @ tf32.round_to_tf32(w).T


def test_rounding_keeps_ten_mantissa_bits_to_nearest_even():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(100_000) * np.exp2(rng.integers(-60, 60, 100_000))).astype(np.float32)
    bits = x.view(np.uint32)
    ties = ((bits & ~np.uint32(0x1FFF)) | np.uint32(0x1000)).view(np.float32)  # exactly halfway
    for values in (x, ties, np.array([0.0, -0.0, 1.0, 3.0e38], np.float32)):
        rounded = tf32.round_to_tf32(values)
        assert (rounded.view(np.uint32) & np.uint32(0x1FFF) == 0).all()
        np.testing.assert_array_equal(rounded, tf32_reference(values))


def test_split_is_exact():
    x = np.random.default_rng(1).standard_normal((64, 300)).astype(np.float32) * 100
    hi, lo = tf32.split(x)
    np.testing.assert_array_equal(hi + lo, x)
    assert (np.abs(lo) <= np.abs(x) * 2.0 ** -11).all()
    halves = tf32.interleaved_halves(x)  # [2T, K]: each token's two halves side by side
    np.testing.assert_array_equal(halves[0::2], hi)
    np.testing.assert_array_equal(halves[1::2], lo)
    np.testing.assert_array_equal(tf32.sum_halves(halves), x)


@pytest.mark.parametrize("weights", ["mxfp4", "bf16"])
def test_two_tf32_products_are_as_exact_as_float32(weights):
    rng = np.random.default_rng(2)
    N, K, T = 256, 2880, 16
    w = model_like_weights(weights, rng, N, K)
    assert (tf32.round_to_tf32(w) == w).all()  # the precondition: these weights are exact in TF32
    x = rng.standard_normal((T, K), dtype=np.float32)
    truth = x.astype(np.float64) @ w.astype(np.float64).T
    hi, lo = tf32.split(x)
    two = tf32_product(hi, w) + tf32_product(lo, w)
    one = tf32_product(x, w)
    float32 = x @ w.T
    assert rel_err(two, truth) <= 3 * rel_err(float32, truth) + 1e-7  # float32's accuracy
    assert rel_err(one, truth) > 30 * rel_err(two, truth)  # what one TF32 product would lose
