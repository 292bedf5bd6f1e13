"""Router top-k, pair sorting, SwiGLU and the weighted combine (simulator) against moe's references."""

from __future__ import annotations

import numpy as np
import pytest

from cuda_sim.sim import assert_close, poisoned
from gptoss_np.kernels import moe, moe_cuda

SHIPPED = pytest.mark.shipped_launches  # the GPU's block shapes (tests/cuda_sim/conftest.py)


@pytest.mark.parametrize("T, E, k, shift", [
    (10, 7, 3, 0.0), (10, 7, 6, 0.0),
    (1, 17, moe_cuda.MAX_K, 0.0),  # k at its limit: the rank < k test keeps the shared arrays' last slot
    (2, 7, 3, 100.0), (2, 7, 3, -100.0),  # logits beyond exp's float32 range: the softmax is shift invariant
    pytest.param(2, 32, 4, 0.0, marks=SHIPPED), pytest.param(2, 128, 4, 0.0, marks=SHIPPED)])
def test_route(T, E, k, shift):
    """A block of 4 threads a token (conftest): 7 experts to rank, and 6 slots to write, take two rounds;
    shipped: 64 threads rank gpt-oss-20b's 32 experts or 120b's 128. Against moe.route_ref."""
    rng = np.random.default_rng(E)
    logits = rng.standard_normal((T, E), dtype=np.float32) + np.float32(shift)
    experts, weights = poisoned((T, k), np.int32), poisoned((T, k))
    moe_cuda.route(logits, experts, weights)
    ref_experts, ref_weights = moe.route_ref(logits, k)
    np.testing.assert_array_equal(experts, ref_experts)
    assert_close(weights, ref_weights)


def test_route_ties_go_to_the_lower_expert():
    logits = np.array([[1.0, 3.0, 1.0, 3.0, 0.0]], np.float32)
    experts, weights = poisoned((1, 3), np.int32), poisoned((1, 3))
    moe_cuda.route(logits, experts, weights)
    assert experts.tolist() == [[1, 3, 0]]


def test_route_ranks_nan_last():
    """NaN logits rank below every number, so every slot gets an expert (one GEMV block a pair reads it)."""
    logits = np.array([[np.nan, 1.0, 2.0, np.nan, 0.0], [np.nan] * 5], np.float32)
    experts, weights = poisoned((2, 3), np.int32), poisoned((2, 3))
    moe_cuda.route(logits, experts, weights)
    assert experts.tolist() == [[2, 1, 4], [0, 1, 2]]
    assert_close(weights[:1], moe.route_ref(logits[:1, [1, 2, 4]], 3)[1])


@pytest.mark.parametrize("P", [37, pytest.param(1500, marks=SHIPPED)])  # shipped: one block of 1024 threads
def test_sort_pairs_groups_by_expert(P):
    rng = np.random.default_rng(1)
    experts = rng.integers(0, 6, P).astype(np.int32)
    experts[experts == 4] = 5  # expert 4 has no pair
    order, offsets = moe_cuda.sort_pairs(experts, poisoned(P, np.int32), poisoned(7, np.int32))
    np.testing.assert_array_equal(offsets, np.r_[0, np.cumsum(np.bincount(experts, minlength=6))])
    assert sorted(order.tolist()) == list(range(P))
    for e in range(6):
        assert (experts[order[offsets[e]:offsets[e + 1]]] == e).all()


@pytest.mark.filterwarnings("ignore:overflow")  # the simulator's float32 exp overflows to inf, as on the GPU
def test_swiglu_clamps():
    rng = np.random.default_rng(2)
    gate_up = 6 * rng.standard_normal((3, 22), dtype=np.float32)  # |values| beyond the limit 7 too
    gate_up[0, :4] = [-200.0, 200.0, 200.0, -200.0]
    out = poisoned((3, 11))
    moe_cuda.swiglu(gate_up, 7.0, 1.702, out)
    assert_close(out, moe.swiglu_ref(gate_up, 7.0, 1.702))


@pytest.mark.filterwarnings("ignore:overflow")
def test_swiglu_does_not_clamp_gates_from_below():
    """gpt-oss clamps the gate from above only: a gate of -200 gives ~0 (not the -7 * sigmoid(-11.9) of a
    gate clamped to -limit), against moe.swiglu_ref to an absolute 1e-9."""
    gate_up = np.array([[-200.0, 5.0, -7.5, -3.0]], np.float32)
    out = poisoned((1, 2))
    moe_cuda.swiglu(gate_up, 7.0, 1.702, out)
    np.testing.assert_allclose(out, moe.swiglu_ref(gate_up, 7.0, 1.702), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("D", [9, pytest.param(300, marks=SHIPPED)])
def test_combine(D):
    rng = np.random.default_rng(3)
    y = rng.standard_normal((5 * 3, D), dtype=np.float32)
    weights = rng.random((5, 3), dtype=np.float32)
    out = poisoned((5, D))
    moe_cuda.combine(y, weights, out)
    assert_close(out, np.einsum("ta,tad->td", weights, y.reshape(5, 3, D)))
    residual = rng.standard_normal((5, D), dtype=np.float32)
    out = poisoned((5, D))
    moe_cuda.combine(y, weights, out, residual=residual)
    assert_close(out, residual + np.einsum("ta,tad->td", weights, y.reshape(5, 3, D)))
