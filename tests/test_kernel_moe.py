"""Router top-k + softmax and the clamped SwiGLU: against transformers' GptOss modules."""

from __future__ import annotations

import types

import numpy as np
import pytest

from gptoss_np.kernels.moe import route_ref, swiglu_ref

torch = pytest.importorskip("torch")
gpt_oss = pytest.importorskip("transformers.models.gpt_oss.modeling_gpt_oss")


@pytest.mark.parametrize("E, k", [(8, 2), (32, 4), (5, 5), (6, 1)])
def test_route_matches_torch_topk_softmax(E, k):
    logits = np.random.default_rng(E * k).standard_normal((40, E), dtype=np.float32) * 3
    experts, weights = route_ref(logits, k)
    values, indices = torch.topk(torch.from_numpy(logits), k, dim=-1)
    np.testing.assert_array_equal(experts, indices.numpy())
    np.testing.assert_allclose(weights, torch.softmax(values, dim=-1).numpy(), rtol=1e-6)


@pytest.mark.parametrize("limit, alpha", [(7.0, 1.702), (5.0, 3.0)])  # gpt-oss's, and others
def test_swiglu_matches_transformers(limit, alpha):
    gate_up = np.random.default_rng(0).standard_normal((9, 20), dtype=np.float32) * 8  # past the clamp both ways
    experts = types.SimpleNamespace(limit=limit, alpha=alpha)
    want = gpt_oss.GptOssExperts._apply_gate(experts, torch.from_numpy(gate_up)).numpy()
    np.testing.assert_allclose(swiglu_ref(gate_up, limit, alpha), want, rtol=1e-6, atol=1e-6)
    assert (np.abs(gate_up) > limit).mean() > 0.2  # the clamps are exercised


@pytest.mark.parametrize("E, k", [(8, 2), (32, 4), (5, 5), (6, 1)])
def test_route_kernel_matches_reference(E, k):
    from gptoss_np.kernels.moe import route
    logits = np.random.default_rng(E + k).standard_normal((33, E), dtype=np.float32) * 3
    experts, weights = route(logits, k)
    ref_experts, ref_weights = route_ref(logits, k)
    np.testing.assert_array_equal(experts, ref_experts)
    np.testing.assert_allclose(weights, ref_weights, rtol=1e-6)


def test_route_ties_go_to_the_lower_expert():
    """As the CUDA router's (tests/cuda_sim/test_kernel_moe_cuda.py): equal logits rank the lower expert first."""
    from gptoss_np.kernels.moe import route
    logits = np.array([[1.0, 3.0, 1.0, 3.0, 0.0]], np.float32)
    for router in (route, route_ref):
        experts, weights = router(logits, 3)
        assert experts.tolist() == [[1, 3, 0]], router
        np.testing.assert_allclose(weights, [[0.4683, 0.4683, 0.0634]], atol=1e-4)


@pytest.mark.parametrize("E, k", [(8, 2), (32, 4), (32, 8), (5, 5)])
def test_route_ties_go_to_the_lower_expert_on_many_rows(E, k):
    """Logits of three values, so ties fall everywhere, at the k-th place too; the order of a stable sort
    of their negatives, done by hand in NumPy."""
    from gptoss_np.kernels.moe import route
    logits = np.random.default_rng(E * k).integers(0, 3, (200, E)).astype(np.float32)
    want = np.array([sorted(range(E), key=lambda e: (-row[e], e))[:k] for row in logits])
    for router in (route, route_ref):
        np.testing.assert_array_equal(router(logits, k)[0], want, err_msg=str(router))
