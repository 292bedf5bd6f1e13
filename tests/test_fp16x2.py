"""fp16x2.py: the two-part fp16 split of float32 activations and the scaled MXFP4 weights, and two fp16
products against the float64 truth, with fp16 products emulated in NumPy as tensor cores make them
(fp16 operands, exact products, sums in float32). tests/cuda_sim runs the kernels and cuBLAS's call
emulated; tests/test_gpu.py runs them on a GPU."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import rel_err
from gptoss_np import fp16x2
from gptoss_np.kernels import mxfp4


def test_split_keeps_22_bits_of_every_value_in_range():
    rng = np.random.default_rng(0)
    rows = np.exp2(rng.integers(-60, 60, (64, 1)))  # rows of any magnitude, values spread 2**-12 .. 2**12 within
    x = (rng.standard_normal((64, 300)) * rows * np.exp2(rng.integers(-12, 12, (64, 300)))).astype(np.float32)
    x[5] = 0
    x1, x2, r = fp16x2.split(x)
    assert x1.dtype == x2.dtype == np.float16 and r.dtype == np.int32
    scaled = x.astype(np.float64) * np.exp2(-r.astype(np.float64))[:, None]
    largest = np.abs(scaled).max(axis=1)
    assert ((2.0 ** 14 <= largest) & (largest < 2.0 ** 15) | (largest == 0)).all() and r[5] == 0
    missed = np.abs(x1.astype(np.float64) + x2.astype(np.float64) - scaled)
    assert (missed <= np.abs(scaled) * 2.0 ** -22 + 2.0 ** -25).all()
    parts, r2 = fp16x2.interleaved_parts(x)
    np.testing.assert_array_equal(parts[0::2], x1)
    np.testing.assert_array_equal(parts[1::2], x2)
    np.testing.assert_array_equal(r2, r)


@pytest.mark.parametrize("scale_bytes", [(110, 130), (40, 140)])  # model-like; and blocks far below the largest
def test_two_fp16_products_are_as_exact_as_float32(scale_bytes):
    rng = np.random.default_rng(2)
    N, K, T = 256, 2880, 16
    scales = rng.integers(*scale_bytes, (N, K // 32), dtype=np.uint8)
    w = mxfp4.dequantize(rng.integers(0, 256, (N, K // 32, 16), dtype=np.uint8), scales)
    smax = int(scales.max())
    w16 = fp16x2.scaled_weights(w, smax)
    if scale_bytes == (110, 130):  # within 36 binades of the largest: exact
        np.testing.assert_array_equal(w16.astype(np.float64) * 2.0 ** (smax - fp16x2.LARGEST_AT), w)
    x = rng.standard_normal((T, K), dtype=np.float32) * np.float32(3)
    truth = x.astype(np.float64) @ w.astype(np.float64).T
    parts, r = fp16x2.interleaved_parts(x)
    products = parts.astype(np.float32) @ w16.astype(np.float32).T  # [2T, N]: exact products, float32 sums
    two = fp16x2.sum_parts(products, r, smax)
    one = fp16x2.sum_parts(np.repeat(products[0::2], 2, axis=0) * np.float32(0.5), r, smax)  # x1 alone
    float32 = x @ w.T
    assert rel_err(two, truth) <= 3 * rel_err(float32, truth) + 1e-7  # float32's accuracy
    assert rel_err(one, truth) > 100 * rel_err(two, truth)  # what one fp16 product would lose
