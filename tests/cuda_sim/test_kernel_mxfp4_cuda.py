"""MXFP4 expert GEMV, grouped matmul and dequantization (simulator) against mxfp4.matmul_ref per
pair and mxfp4.dequantize."""

from __future__ import annotations

import numpy as np
import pytest

from cuda_sim.sim import assert_close, poisoned
from gptoss_np import fp16x2
from gptoss_np.kernels import moe, moe_cuda, mxfp4, mxfp4_cuda


def random_experts(rng, E, N, groups):
    blocks = rng.integers(0, 256, (E, N, groups, 16), dtype=np.uint8)
    scales = rng.integers(100, 140, (E, N, groups), dtype=np.uint8)
    bias = rng.standard_normal((E, N), dtype=np.float32)
    return blocks, scales, bias


def reference(x, rows_per_x, experts, blocks, scales, bias):
    return np.stack([mxfp4.matmul_ref(x[p // rows_per_x].astype(np.float64)[None], blocks[e], scales[e])[0] + bias[e]
                     for p, e in enumerate(experts)])


SHIPPED = pytest.mark.shipped_launches  # the GPU's block shapes (tests/cuda_sim/conftest.py)


# (the simulator's 8 threads a block stage x 16 values a thread: 18 words of 9 blocks take three rounds;
# shipped: 16 rows a block of 256 threads, the second block's last warps past N)
@pytest.mark.parametrize("tokens, A, N, groups", [(1, 2, 5, 3), (2, 1, 3, 1), (1, 1, 3, 9),
                                                   pytest.param(2, 1, 26, 5, marks=SHIPPED)])
def test_gemv(tokens, A, N, groups):
    rng = np.random.default_rng(N)
    E = 4
    blocks, scales, bias = random_experts(rng, E, N, groups)
    x = rng.standard_normal((tokens, groups * 32), dtype=np.float32)
    experts = rng.choice(E, tokens * A, replace=False).astype(np.int32)
    out = poisoned((tokens * A, N))
    mxfp4_cuda.expert_gemv(x, A, experts, blocks, scales, bias, out)
    assert_close(out, reference(x, A, experts, blocks, scales, bias))


def test_gemv_with_swiglu():
    """Rows 2j (gate) and 2j + 1 (up) of one warp become SwiGLU column j."""
    rng = np.random.default_rng(3)
    E, N, groups, A = 3, 10, 2, 2  # 5 gate/up pairs: the second block's last warp has none
    blocks, scales, bias = random_experts(rng, E, N, groups)
    # gates of a few units: the simulator's math.exp raises where CUDA's overflows to inf
    scales = rng.integers(118, 125, scales.shape, dtype=np.uint8)
    x = rng.standard_normal((1, groups * 32), dtype=np.float32)
    experts = np.array([2, 0], np.int32)
    out = poisoned((A, N // 2))
    mxfp4_cuda.expert_gemv(x, A, experts, blocks, scales, bias, out, swiglu=(7.0, 1.702))
    assert_close(out, moe.swiglu_ref(reference(x, A, experts, blocks, scales, bias), 7.0, 1.702))


@pytest.mark.parametrize("tokens", [1, 2, pytest.param(2, marks=SHIPPED, id="shipped")])
def test_gemv_routes_its_pairs(tokens):
    """With route, the gate_up GEMV picks each pair's expert from the router's logits (ties to the
    lower expert) and writes the experts and their weights as the route kernel would."""
    rng = np.random.default_rng(10 + tokens)
    E, N, groups, A = 11, 6, 2, 3  # 11 experts: each of the 8 simulated threads ranks one or two
    blocks, scales, bias = random_experts(rng, E, N, groups)
    scales = rng.integers(118, 125, scales.shape, dtype=np.uint8)  # gates of a few units for SwiGLU
    x = rng.standard_normal((tokens, groups * 32), dtype=np.float32)
    logits = rng.standard_normal((tokens, E), dtype=np.float32)
    logits[0, [3, 7]] = logits[0].max() + 1  # a tie for the first place
    experts, weights, out = poisoned(tokens * A, np.int32), poisoned((tokens, A)), poisoned((tokens * A, N // 2))
    mxfp4_cuda.expert_gemv(x, A, experts, blocks, scales, bias, out, swiglu=(7.0, 1.702), route=(logits, weights))
    ref_experts, ref_weights = moe.route_ref(logits, A)
    assert ref_experts[0, :2].tolist() == [3, 7]
    np.testing.assert_array_equal(experts, ref_experts.ravel())
    assert_close(weights, ref_weights)
    assert_close(out, moe.swiglu_ref(reference(x, A, experts, blocks, scales, bias), 7.0, 1.702))


@SHIPPED
def test_gemv_routes_its_pairs_at_20b_widths():
    """The decode gate_up GEMV routing its own pairs at gpt-oss-20b's sizes: 32 experts, top 4, rows of 2880
    (90 blocks), against moe.route_ref, and mxfp4.matmul_ref per pair then moe.swiglu_ref."""
    rng = np.random.default_rng(1)
    E, N, groups, A = 32, 16, 90, 4
    blocks, _, bias = random_experts(rng, E, N, groups)
    scales = rng.integers(112, 118, (E, N, groups), dtype=np.uint8)  # gates of a few units over 2880 products
    x = rng.standard_normal((1, groups * 32), dtype=np.float32)
    logits = rng.standard_normal((1, E), dtype=np.float32)
    experts, weights, out = poisoned(A, np.int32), poisoned((1, A)), poisoned((A, N // 2))
    mxfp4_cuda.expert_gemv(x, A, experts, blocks, scales, bias, out, swiglu=(7.0, 1.702), route=(logits, weights))
    ref_experts, ref_weights = moe.route_ref(logits, A)
    np.testing.assert_array_equal(experts, ref_experts.ravel())
    assert_close(weights, ref_weights)
    assert_close(out, moe.swiglu_ref(reference(x, A, experts, blocks, scales, bias), 7.0, 1.702))


def test_gemv_reads_only_the_selected_experts():
    rng = np.random.default_rng(1)
    blocks, scales, bias = random_experts(rng, 3, 4, 2)
    scales[[0, 2]] = 255  # 2**128 * 6 overflows to inf: any read of experts 0 or 2 would show
    x = rng.standard_normal((1, 64), dtype=np.float32)
    out = poisoned((1, 4))
    mxfp4_cuda.expert_gemv(x, 1, np.array([1], np.int32), blocks, scales, bias, out)
    assert_close(out, reference(x, 1, [1], blocks, scales, bias))


@pytest.mark.parametrize("rows_per_x", [2, 1, pytest.param(2, marks=SHIPPED, id="shipped")])
def test_grouped_matmul(rows_per_x):
    rng = np.random.default_rng(rows_per_x)
    E, N, groups, tokens, A = 3, 19, 2, 10, 2  # 19 rows: one full 16-row tile and a partial one
    blocks, scales, bias = random_experts(rng, E, N, groups)
    experts = np.stack([rng.choice(E, A, replace=False) for _ in range(tokens)]).astype(np.int32).ravel()
    experts[experts == 2] = 0  # expert 2 gets no pair (its blocks must leave); expert 0 gets 10 (2 tiles)
    x = rng.standard_normal((tokens * A // rows_per_x, groups * 32), dtype=np.float32)
    order, offsets = moe_cuda.sort_pairs(experts, poisoned(experts.shape, np.int32), poisoned(E + 1, np.int32))
    out = poisoned((tokens * A, N))
    mxfp4_cuda.expert_matmul(x, rows_per_x, order, offsets, tokens, blocks, scales, bias, out)
    assert_close(out, reference(x, rows_per_x, experts, blocks, scales, bias))


def widened(bits):
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.uint16, pytest.param(np.float32, marks=SHIPPED, id="shipped")])
def test_dequantize_chosen_experts(dtype):
    """Experts 3 and 1 of 4 in one launch, as float32 or as bf16 bits (both exact)."""
    rng = np.random.default_rng(4)
    blocks, scales, _ = random_experts(rng, 4, 3, 2)
    chosen = np.array([3, 1], np.int32)
    out = poisoned((2, 3, 64), dtype)
    mxfp4_cuda.dequantize(blocks, scales, chosen, out)
    for x, e in enumerate(chosen):
        ref = mxfp4.dequantize(blocks[e], scales[e])
        np.testing.assert_array_equal(out[x] if dtype == np.float32 else widened(out[x]), ref)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # scale 255 makes inf, as it should
@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
def test_dequantize_every_byte_at_extreme_scales(dtype):
    """All 256 bytes (two FP4 nibbles each) under the smallest, middle and largest e8m0 scales, where
    values turn denormal or overflow to inf: exact, as the NumPy reference's ldexp, in bf16 too."""
    scales = np.array([0, 1, 2, 100, 126, 127, 128, 129, 200, 254, 255], np.uint8)
    blocks = np.tile(np.arange(256, dtype=np.uint8).reshape(16, 16), (len(scales), 1, 1))  # [N, 16 groups, 16]
    scales = np.repeat(scales[:, None], 16, axis=1)
    out = poisoned((1, len(scales), 16 * 32), dtype)
    mxfp4_cuda.dequantize(blocks[None], scales[None], np.zeros(1, np.int32), out)
    np.testing.assert_array_equal(out[0] if dtype == np.float32 else widened(out[0]), mxfp4.dequantize(blocks, scales))


def test_largest_scales_of_the_chosen_experts(monkeypatch):
    monkeypatch.setattr(mxfp4_cuda, "DEQUANT_THREADS", 4)
    monkeypatch.setattr(mxfp4_cuda, "LARGEST_BYTES", 2)  # 8 bytes a block: 5 blocks an expert, one atomic max each
    rng = np.random.default_rng(6)
    scales = rng.integers(0, 200, (4, 5, 7), dtype=np.uint8)
    scales[1, 4, 6], scales[3, 0, 0] = 250, 240  # the last byte of one expert, the first of another
    largest = mxfp4_cuda.largest_scales(scales, np.array([3, 1], np.int32), np.full(4, -1, np.int32))
    assert largest.tolist() == [0, 250, 0, 240]


def test_largest_scales_find_the_largest_byte_at_any_position(monkeypatch):
    """The largest byte planted at each of an expert's 35 positions in turn (each thread reads LARGEST_BYTES
    of them), against NumPy's max over the expert's scales."""
    monkeypatch.setattr(mxfp4_cuda, "DEQUANT_THREADS", 4)
    monkeypatch.setattr(mxfp4_cuda, "LARGEST_BYTES", 2)
    base = np.random.default_rng(6).integers(0, 100, (2, 5, 7), dtype=np.uint8)
    for i in range(base[1].size):
        scales = base.copy()
        scales[1].reshape(-1)[i] = 250
        largest = mxfp4_cuda.largest_scales(scales, np.array([1], np.int32), np.full(2, -1, np.int32))
        assert largest.tolist() == [0, scales[1].max()], i


# fp16 exact; blocks far below the largest round
@pytest.mark.parametrize("low, high", [(100, 140), (0, 200), pytest.param(0, 200, marks=SHIPPED, id="shipped")])
def test_dequantize_scaled_to_fp16(low, high):
    rng = np.random.default_rng(low)
    blocks = rng.integers(0, 256, (4, 3, 2, 16), dtype=np.uint8)
    scales = rng.integers(low, high, (4, 3, 2), dtype=np.uint8)
    chosen = np.array([3, 1], np.int32)
    largest = np.zeros(4, np.int32)  # as largest_scales gives it (tested above)
    largest[chosen] = scales[chosen].max(axis=(1, 2))
    out = poisoned((2, 3, 64), np.float16)
    mxfp4_cuda.dequantize(blocks, scales, chosen, out, largest=largest)
    for x, e in enumerate(chosen):
        np.testing.assert_array_equal(out[x], fp16x2.scaled_weights(mxfp4.dequantize(blocks[e], scales[e]), largest[e]))


def test_shapes_are_checked():
    blocks = np.zeros((2, 4, 2, 16), np.uint8)
    with pytest.raises(ValueError, match="do not fit"):
        mxfp4_cuda.expert_gemv(np.zeros((1, 32), np.float32), 1, np.zeros(1, np.int32), blocks,
                               np.zeros((2, 4, 2), np.uint8), np.zeros((2, 4), np.float32), poisoned((1, 4)))
