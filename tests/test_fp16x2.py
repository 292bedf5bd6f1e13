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


FP4 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6])  # E2M1's 16 codes


@pytest.mark.parametrize("smax, low", [(130, 94), (12, 0)])  # a block 36 binades below; 2**(140 - 12) > float32's
def test_scaled_weights_put_the_largest_block_at_2_to_13_and_are_exact_36_binades_below(smax, low):
    """The docstring's scaling: FP4 x 2**(s - smax + 13), at most 6 x 2**13 = 49152, exact in fp16 for
    s >= smax - 36 (at smax - 36 the smallest FP4 value, 0.5, lands on fp16's smallest subnormal)."""
    w = np.stack([FP4 * 2.0 ** (smax - 127), FP4 * 2.0 ** (low - 127)]).astype(np.float32)  # exact in float32
    w16 = fp16x2.scaled_weights(w, smax)
    assert w16.dtype == np.float16 and np.abs(w16.astype(np.float64)).max() == 6 * 2.0 ** 13
    np.testing.assert_array_equal(w16.astype(np.float64) * 2.0 ** (smax - 140), w)


def test_sum_parts_scales_each_row_back_by_its_own_experts_largest_scale():
    """smax per row ([T], each row's expert's), as a group of several experts is summed at once: each row
    comes back to float32, at float32's accuracy, with its own expert's factor."""
    rng = np.random.default_rng(3)
    N, K, T = 48, 256, 6
    experts = np.array([0, 1, 1, 0, 1, 0])
    scales = [rng.integers(low, high, (N, K // 32), dtype=np.uint8) for low, high in [(100, 120), (125, 140)]]
    w = [mxfp4.dequantize(rng.integers(0, 256, (N, K // 32, 16), dtype=np.uint8), s) for s in scales]
    smax = np.array([int(s.max()) for s in scales])
    w16 = [fp16x2.scaled_weights(w_e, s).astype(np.float32) for w_e, s in zip(w, smax)]
    x = rng.standard_normal((T, K), dtype=np.float32)
    parts, r = fp16x2.interleaved_parts(x)
    products = np.stack([parts[2 * t + i].astype(np.float32) @ w16[experts[t]].T for t in range(T) for i in range(2)])
    two = fp16x2.sum_parts(products, r, smax[experts])
    assert two.dtype == np.float32 and two.shape == (T, N)
    for e in range(2):
        rows = experts == e
        truth = x[rows].astype(np.float64) @ w[e].astype(np.float64).T
        assert rel_err(two[rows], truth) <= 3 * rel_err(x[rows] @ w[e].T, truth) + 1e-7


def test_rows_far_below_float16s_range_keep_a_representable_exponent():
    """ROW_EXPONENT_LIMIT: a row whose largest magnitude is below 2**-112 would need 2**-r beyond float32's
    range; r stops at -ROW_EXPONENT_LIMIT, and the parts stay finite, within the split's bound."""
    x = np.array([[2.0 ** -120, -3 * 2.0 ** -125, 0.0], [1e-38, -(2.0 ** -149), 5e-39]], np.float32)
    x1, x2, r = fp16x2.split(x)
    np.testing.assert_array_equal(r, [-fp16x2.ROW_EXPONENT_LIMIT] * 2)
    assert np.isfinite(x1).all() and np.isfinite(x2).all()
    scaled = x.astype(np.float64) * np.exp2(-r.astype(np.float64))[:, None]
    missed = np.abs(x1.astype(np.float64) + x2.astype(np.float64) - scaled)
    assert (missed <= np.abs(scaled) * 2.0 ** -22 + 2.0 ** -25).all()
