"""mxfp4.quantize: the inverse of dequantize, checked against a brute-force nearest search."""

from __future__ import annotations

import numpy as np
import pytest

from gptoss_np.kernels import mxfp4


def random_packed(rng, rows, groups, scale_range=(100, 150)):
    blocks = rng.integers(0, 256, (rows, groups, 16), dtype=np.uint8)
    scales = rng.integers(*scale_range, (rows, groups), dtype=np.uint8)
    return blocks, scales


def block_scales(scales) -> np.ndarray:
    """2**(s - 127) per block, float64."""
    return np.ldexp(1.0, scales.astype(np.int64) - 127)


def test_round_trip_is_exact_on_representable_values():
    rng = np.random.default_rng(0)
    blocks, scales = random_packed(rng, 16, 8)
    w = mxfp4.dequantize(blocks, scales)
    np.testing.assert_array_equal(mxfp4.dequantize(*mxfp4.quantize(w)), w)
    # where a block holds a +-6 its scale is the one it came with, so the bytes match too
    blocks[..., 0] = (blocks[..., 0] & 0xF0) | 0x07
    w = mxfp4.dequantize(blocks, scales)
    again_blocks, again_scales = mxfp4.quantize(w)
    np.testing.assert_array_equal(again_scales, scales)
    np.testing.assert_array_equal(again_blocks, blocks)  # -0 included: the sign bit is kept


@pytest.mark.parametrize("top", [0.5, 1.0, 1.5, 2.0, 3.0, 4.0])
def test_blocks_without_a_six_still_round_trip(top):
    # the scale shrinks (amax / 6 < 2**e) but every value stays representable
    w = np.ldexp(np.float32(top), 3) * np.linspace(-1, 1, 32, dtype=np.float32)
    w = mxfp4.dequantize(*mxfp4.quantize(w))  # representable values with amax = top * 8
    np.testing.assert_array_equal(mxfp4.dequantize(*mxfp4.quantize(w)), w)


def test_scale_is_the_smallest_power_of_two_that_fits():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((40, 64)) * np.exp(rng.uniform(-20, 20, (40, 1)))
    w[0, :32] = 6.0 * 2.0 ** -3  # amax exactly 6 * 2**e: e = -3, not -2
    w[1, :32] = np.nextafter(6.0 * 2.0 ** -3, np.inf)  # just above: e = -2
    _, scales = mxfp4.quantize(w)
    amax = np.abs(w.reshape(40, 2, 32)).max(axis=-1)
    s = block_scales(scales)
    assert (6 * s >= amax).all() and (6 * s / 2 < amax).all()
    assert scales[0, 0] == 127 - 3 and scales[1, 0] == 127 - 2


def test_matches_a_brute_force_nearest_search():
    rng = np.random.default_rng(2)
    w = (rng.standard_normal((64, 128)) * np.exp(rng.uniform(-3, 3, (64, 1)))).astype(np.float32)
    blocks, scales = mxfp4.quantize(w)
    got = mxfp4.dequantize(blocks, scales)
    s = np.repeat(block_scales(scales), 32, axis=-1)  # [64, 128]
    candidates = mxfp4.FP4_VALUES.astype(np.float64)[None, None, :] * s[..., None]  # every FP4 value
    best = np.abs(candidates - w[..., None].astype(np.float64)).min(axis=-1)
    np.testing.assert_array_equal(np.abs(got - w.astype(np.float64)), best)


def test_values_bytes_and_scales_are_ml_dtypes_float4_e2m1fn_and_float8_e8m0fnu():
    """An oracle that is not this file's own arithmetic: given the block's scale (the engine's rule, see
    mxfp4.quantize), each value is ml_dtypes' float4_e2m1fn rounding of w / scale (ties to even, a
    negative that rounds to zero kept as -0), its 4 bits are the nibble (the even element in the low
    one, as transformers unpacks them: test_kernel_mxfp4), and the scale byte is the scale's
    float8_e8m0fnu. Random rows of magnitudes 2**-6 .. 2**6, exact ties planted, a zero block."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((64, 256)) * np.exp2(rng.uniform(-6, 6, (64, 1)))).astype(np.float32)
    w[:, 3::32] = rng.choice([0.25, 0.75, 1.25, 2.5, 3.5, 5.0], (64, 8)) * np.exp2(rng.integers(-8, 3, (64, 1)))
    w[:, 7::32] = -w[:, 3::32] / 8  # negatives, some of which round to -0
    w[0, :32] = 0.0
    blocks, scales = mxfp4.quantize(w)
    scale = block_scales(scales)[..., None]  # [64, 8, 1]
    fp4 = (w.reshape(64, 8, 32) / scale).astype(np.float32).astype(ml_dtypes.float4_e2m1fn)
    np.testing.assert_array_equal(mxfp4.dequantize(blocks, scales).reshape(64, 8, 32) / scale, fp4.astype(np.float64))
    codes = fp4.view(np.uint8) & 0xF
    np.testing.assert_array_equal(blocks, codes[..., 0::2] | codes[..., 1::2] << 4)
    np.testing.assert_array_equal(scales, scale[..., 0].astype(ml_dtypes.float8_e8m0fnu).view(np.uint8))


def test_error_is_at_most_half_a_step():
    rng = np.random.default_rng(3)
    w = rng.standard_t(3, (128, 256)).astype(np.float32)  # heavy tails: some blocks have outliers
    blocks, scales = mxfp4.quantize(w)
    s = np.repeat(block_scales(scales), 32, axis=-1)
    magnitudes = mxfp4.FP4_VALUES[:8].astype(np.float64)
    step = np.diff(magnitudes)  # .5 up to 2, then 1, 1, 2
    interval = np.clip(np.searchsorted(magnitudes, np.abs(w) / s) - 1, 0, 6)
    err = np.abs(mxfp4.dequantize(blocks, scales) - w.astype(np.float64))
    assert (err <= step[interval] / 2 * s).all()
    assert (err <= s).all()  # the widest step (4 to 6) bounds every error by one scale unit


def test_ties_go_to_the_even_code():
    w = np.zeros(32)
    w[0] = 6.0  # fixes the scale at 2**0
    w[1:8] = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]
    w[8:15] = -w[1:8]
    got = mxfp4.dequantize(*mxfp4.quantize(w))
    expected = [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0]
    np.testing.assert_array_equal(got[1:8], expected)
    np.testing.assert_array_equal(got[8:15], -np.array(expected))


def test_packing_zero_blocks_and_extremes():
    w = np.zeros((2, 32))
    w[0, 0], w[0, 1] = 1.0, 6.0  # low nibble = element 0 (code 2), high nibble = element 1 (code 7)
    w[0, 2] = -0.0
    blocks, scales = mxfp4.quantize(w)
    assert blocks[0, 0, 0] == 0x72 and blocks[0, 0, 1] == 0x08  # element 2 is -0
    assert scales[0, 0] == 127 and scales[1, 0] == 0 and not blocks[1].any()  # all-zero block: byte 0
    huge = np.full(32, 1e300)
    blocks, scales = mxfp4.quantize(huge)
    assert scales[0] == 254 and (blocks == 0x77).all()  # saturates at 6 * 2**127
    tiny = np.full(32, 1e-300)
    blocks, scales = mxfp4.quantize(tiny)
    assert scales[0] == 0 and not blocks.any()  # flushes to zero


def test_shapes_and_bad_input():
    w = np.random.default_rng(4).standard_normal((3, 5, 96)).astype(np.float32)
    blocks, scales = mxfp4.quantize(w)
    assert blocks.shape == (3, 5, 3, 16) and scales.shape == (3, 5, 3)
    assert blocks.dtype == scales.dtype == np.uint8
    assert mxfp4.dequantize(blocks, scales).shape == w.shape
    with pytest.raises(ValueError, match="multiple of 32"):
        mxfp4.quantize(np.zeros((4, 40)))
    with pytest.raises(ValueError, match="NaN"):
        mxfp4.quantize(np.full(32, np.nan))


def test_quantize_rows_is_quantize_on_every_core():
    """The Numba kernel that quantizes dense checkpoints gives quantize's bytes: random magnitudes from
    denormal to near the float32 maximum, representable values, exact ties, zero blocks and -0."""
    rng = np.random.default_rng(7)
    mids = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], np.float32)
    for trial in range(40):
        rows, cols = int(rng.integers(1, 40)), 32 * int(rng.integers(1, 5))
        w = (rng.standard_normal((rows, cols)) * 2.0 ** rng.integers(-140, 120)).astype(np.float32)
        if trial % 4 == 1:  # representable values, a third of them replaced by ties
            w = mxfp4.dequantize(*random_packed(rng, rows, cols // 32, (0, 250)))
            ties = rng.choice(mids, w[:, ::3].shape) * rng.choice([-1, 1], w[:, ::3].shape)
            w[:, ::3] = (ties * 2.0 ** rng.integers(-120, 100)).astype(np.float32)
        if trial % 4 == 2:
            w[:, :32], w[0, 32 % cols] = 0.0, -0.0
        if trial % 4 == 3:
            w = np.clip(rng.standard_normal((rows, cols)) * 3e38, -3.4e38, 3.4e38).astype(np.float32)
        assert np.isfinite(w).all()
        for a in (w, w.T.copy().T):  # C-ordered, and a transposed view (as dense experts are read)
            blocks, scales = mxfp4.quantize_rows(a)
            ref_blocks, ref_scales = mxfp4.quantize(a)
            np.testing.assert_array_equal(scales, ref_scales)
            np.testing.assert_array_equal(blocks, ref_blocks)
    with pytest.raises(ValueError, match="NaN"):
        mxfp4.quantize_rows(np.full((1, 32), np.nan, np.float32))
