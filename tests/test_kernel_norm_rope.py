"""RMSNorm, RoPE tables and rotation, YaRN frequencies: against transformers' own functions."""

from __future__ import annotations

import numpy as np
import pytest

from gptoss_np import synthetic
from gptoss_np.config import GptOssConfig
from gptoss_np.kernels.norm_rope import rmsnorm_ref, rope_ref, rope_tables
from gptoss_np.rope import inv_freq_and_scale

torch = pytest.importorskip("torch")
gpt_oss = pytest.importorskip("transformers.models.gpt_oss.modeling_gpt_oss")


@pytest.mark.parametrize("eps, scale", [(1e-5, 30.0), (0.3, 1.0)])  # gpt-oss's eps, and one that counts
def test_rmsnorm_matches_transformers(eps, scale):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 64), dtype=np.float32) * scale
    w = rng.standard_normal(64, dtype=np.float32)
    norm = gpt_oss.GptOssRMSNorm(64, eps=eps)
    norm.weight.data = torch.from_numpy(w)
    np.testing.assert_allclose(rmsnorm_ref(x, w, eps), norm(torch.from_numpy(x)).detach().numpy(), rtol=1e-6)


@pytest.mark.parametrize("overrides", [
    {},  # the real 20b settings
    {"rope_scaling": {"rope_type": "yarn", "factor": 8.0, "beta_fast": 16.0, "beta_slow": 2.0,
                      "original_max_position_embeddings": 256, "truncate": True}},
    {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024,
                      "truncate": False}, "head_dim": 128, "rope_theta": 10000.0},
    {"rope_scaling": {"rope_type": "default"}, "rope_theta": 500000.0},
    {"rope_scaling": {"rope_type": "yarn", "factor": 8.0, "attention_factor": 0.8,  # the scale given, not derived
                      "original_max_position_embeddings": 4096, "truncate": False}},
    {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 6,
                      "truncate": True}},  # the ramp's ends floored and ceiled to one dim: widened by 0.001
    {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256,
                      "truncate": False}, "rope_theta": 4.0},  # the ramp's upper end past the last dim: clamped
    {"rope_scaling": {"rope_type": "yarn", "factor": None, "original_max_position_embeddings": 4096,
                      "truncate": False}, "max_position_embeddings": 65536},  # factor: the contexts' ratio
])
def test_frequencies_match_transformers(overrides):
    from transformers import GptOssConfig as HFConfig
    d = synthetic.config_dict("gpt-oss-20b", **overrides)
    rotary = gpt_oss.GptOssRotaryEmbedding(HFConfig(**d))
    inv_freq, scale = inv_freq_and_scale(GptOssConfig.from_dict(d))
    # float32 pow differs by an ulp between NumPy and torch on some frequencies
    assert np.isfinite(inv_freq).all()
    np.testing.assert_allclose(inv_freq, rotary.inv_freq.numpy(), rtol=1e-6)
    assert scale == pytest.approx(rotary.attention_scaling, rel=1e-12)


def test_rotation_matches_transformers():
    """Same frequencies in, same cos / sin tables and rotated vectors out, far past the original context."""
    from transformers import GptOssConfig as HFConfig
    rotary = gpt_oss.GptOssRotaryEmbedding(HFConfig(**synthetic.config_dict("gpt-oss-20b")))
    positions = np.array([0, 1, 5, 4095, 4096, 30000, 131071])
    x = np.random.default_rng(1).standard_normal((len(positions), 3, 64), dtype=np.float32)
    hf_cos, hf_sin = rotary(torch.from_numpy(x), torch.from_numpy(positions)[None])
    cos, sin = rope_tables(rotary.inv_freq.numpy(), rotary.attention_scaling, positions)
    np.testing.assert_allclose(cos, hf_cos[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(sin, hf_sin[0].numpy(), atol=1e-6)
    want = gpt_oss._apply_rotary_emb(torch.from_numpy(x), hf_cos[0][:, None], hf_sin[0][:, None]).numpy()
    np.testing.assert_allclose(rope_ref(x, cos, sin), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("T", [1, 3, 70])
def test_cpu_kernels_match_references(T):
    from gptoss_np.kernels.norm_rope import rmsnorm, rope
    rng = np.random.default_rng(T)
    x = rng.standard_normal((T, 96), dtype=np.float32) * 20
    w = rng.standard_normal(96, dtype=np.float32)
    for x_, eps in ((x, 1e-5), (x / 20, 0.3)):  # gpt-oss's eps, and one that counts
        np.testing.assert_allclose(rmsnorm(x_, w, eps), rmsnorm_ref(x_, w, eps), rtol=1e-6, atol=1e-6)
    q = rng.standard_normal((T, 5, 32), dtype=np.float32)
    cos, sin = rope_tables(np.geomspace(1, 1e-4, 16).astype(np.float32), 1.3, np.arange(T) + 4000)
    np.testing.assert_array_equal(rope(q, cos, sin), rope_ref(q, cos, sin))
