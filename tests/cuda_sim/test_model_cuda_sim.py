"""The CUDA backend's whole composition in the simulator: CudaOps, with NumPy standing in for CuPy
(sim.DeviceArray: refusing what CuPy's arrays refuse), runs the tiny model through every CUDA kernel
(prefill, then generate()'s decode steps past the sliding window, recorded and replayed as a CUDA
graph) and must give the CPU engine's logits and sampled tokens, and transformers' logits."""

from __future__ import annotations

import importlib
import re
import sys
import types

import numpy as np
import pytest

from conftest import hf_logits, load_hf, rel_err
from cuda_sim import sim
from cuda_sim.sim import assert_close
import gptoss_np
from gptoss_np import GptOss, PromptCache, backend, synthetic
from gptoss_np.backend import CpuOps
from gptoss_np.checkpoint import Checkpoint
from gptoss_np.config import GptOssConfig
from gptoss_np.dispatch import Dispatch, DispatchRule
from gptoss_np.kernels import bf16, bf16_cuda, moe, moe_cuda, mxfp4, norm_rope_cuda


@pytest.fixture
def cuda_ops(monkeypatch):
    sim.cupy_on_the_simulator(monkeypatch)
    monkeypatch.setattr(bf16_cuda, "MAX_ROWS", 4)  # a 6-token prefill takes the widen + matmul path
    return importlib.import_module("gptoss_np.backend_cuda").CudaOps()


# smaller than "tiny" (the simulator runs each GPU thread as a Python thread), every feature kept
SMALL = dict(vocab_size=96, hidden_size=32, intermediate_size=32, head_dim=8, num_attention_heads=4,
             num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2)


def engines(cuda_ops, folder, rule: DispatchRule = DispatchRule(), **overrides):
    """The CPU engine and one on `cuda_ops`, on a synthetic checkpoint of SMALL with `overrides`."""
    checkpoint = Checkpoint(synthetic.write_checkpoint(folder, synthetic.config_dict("tiny", **{**SMALL, **overrides})))
    return GptOss(checkpoint, CpuOps(), dispatch_rule=rule), GptOss(checkpoint, cuda_ops, dispatch_rule=rule)


def test_tiny_model_prefill_and_decode(cuda_ops, tmp_path, monkeypatch):
    cpu, gpu = engines(cuda_ops, tmp_path, sliding_window=4)
    ids = np.random.default_rng(5).integers(0, cpu.config.vocab_size, 9)
    hf = hf_logits(load_hf(tmp_path), ids)  # [9, V]: the independent oracle, position by position
    caches = cpu.new_cache(9), gpu.new_cache(9)
    ours, ref = gpu.forward(ids[:6], caches[1]), cpu.forward(ids[:6], caches[0])  # prefill 6
    assert rel_err(cuda_ops.to_numpy(ours), ref) < 1e-5 and rel_err(cuda_ops.to_numpy(ours), hf[5:6]) < 1e-4
    # decode to position 8 (window 4) as generate() does: cuda_graph.GraphDecoder runs the first step
    # op by op with static shapes, records the second as a CUDA graph (stood in for: the recorded
    # step may not read anything on the host) and replays it for the rest: a replay that repeated
    # the recorded position would show. Its norms are done by the GEMVs that read them, its routing by
    # the experts' gate_up GEMV: no rmsnorm or route launch
    graphs = sim.stand_in_graphs(monkeypatch, sys.modules["gptoss_np.cuda_graph"])
    fused = []
    monkeypatch.setattr(norm_rope_cuda, "rmsnorm", lambda *args: fused.append(args))
    monkeypatch.setattr(moe_cuda, "route", lambda *args: fused.append(args))
    decode = cuda_ops.decoder(gpu, caches[1])
    for position, token in enumerate(ids[6:], start=6):
        ours, ref = decode(int(token)), cpu.forward(token[None], caches[0])
        assert rel_err(cuda_ops.to_numpy(ours), ref) < 1e-5
        assert rel_err(cuda_ops.to_numpy(ours), hf[position:position + 1]) < 1e-4
    assert caches[1].static_shapes and caches[1].length == 9 and not fused
    assert cuda_ops.graphs and len(graphs) == 1 and graphs[0].launches == 2
    sim.assert_launched_as_checked()
    logits = ours[0]
    assert cuda_ops.sample(logits) == cpu.ops.sample(ref[0])
    kwargs = dict(temperature=0.9, top_k=40, top_p=0.95)
    assert (cuda_ops.sample(logits, rng=np.random.default_rng(3), **kwargs)
            == cpu.ops.sample(ref[0], rng=np.random.default_rng(3), **kwargs))
    damaged = logits.copy()
    damaged[5] = np.nan  # as damaged weights give: refused, as by the CPU's sampler
    for settings in ({}, {"temperature": 0.9}, kwargs):
        with pytest.raises(ValueError, match="NaN or infinity"):
            cuda_ops.sample(damaged, rng=np.random.default_rng(3), **settings)


@pytest.mark.parametrize("seed", range(3))
def test_random_small_models(cuda_ops, tmp_path, monkeypatch, seed):
    """SMALL with heads, experts, top-k, window, layer types, bias, tying, dispatch, RMSNorm's epsilon,
    SwiGLU's limit and alpha and plain RoPE or YaRN (with DeepSeek's mscale pair) drawn at random
    (within the simulator's launch shapes): a prefill, then decode steps replayed from a (stood-in)
    CUDA graph, as the CPU engine computes them."""
    rng = np.random.default_rng(seed)
    G, E, L = int(rng.choice([1, 2])), int(rng.integers(1, 7)), int(rng.integers(1, 3))
    k = int(rng.integers(1, E + 1))
    rule = DispatchRule(str(rng.choice(["exact", "expert_choice"])), float(rng.choice([0.5, 2.0])))
    cpu, gpu = engines(cuda_ops, tmp_path, rule, num_attention_heads=G * int(rng.integers(1, 4)), num_key_value_heads=G,
                       head_dim=int(rng.choice([8, 16])), hidden_size=int(rng.choice([32, 64])),
                       intermediate_size=int(rng.choice([32, 64])), num_local_experts=E, num_experts_per_tok=k,
                       experts_per_token=k, num_hidden_layers=L, sliding_window=int(rng.integers(1, 7)),
                       layer_types=[str(rng.choice(["sliding_attention", "full_attention"])) for _ in range(L)],
                       attention_bias=bool(rng.integers(0, 2)), tie_word_embeddings=bool(rng.integers(0, 2)),
                       rms_norm_eps=float(10 ** rng.uniform(-6, -0.5)), swiglu_alpha=float(rng.uniform(0.5, 3)),
                       swiglu_limit=float(rng.uniform(1, 8)),
                       rope_scaling=[{"rope_type": "default"}, {**synthetic.PRESETS["tiny"]["rope_scaling"],
                                     "original_max_position_embeddings": 4, "mscale": 0.5,
                                     "mscale_all_dim": 1.25}][int(rng.integers(0, 2))])
    T = int(rng.integers(1, 20))
    ids = rng.integers(0, cpu.config.vocab_size, T + 3)
    caches = cpu.new_cache(T + 3), gpu.new_cache(T + 3)
    ours, ref = gpu.forward(ids[:T], caches[1], all_logits=True), cpu.forward(ids[:T], caches[0], all_logits=True)
    assert rel_err(cuda_ops.to_numpy(ours), ref) < 1e-5
    sim.stand_in_graphs(monkeypatch, sys.modules["gptoss_np.cuda_graph"])
    decode = cuda_ops.decoder(gpu, caches[1])
    for token in ids[T:]:
        ours, ref = decode(int(token)), cpu.forward(token[None], caches[0])
        assert rel_err(cuda_ops.to_numpy(ours), ref) < 1e-5


def test_prompt_cache_rewinds_a_static_shape_cache(cuda_ops, tmp_path):
    """Two turns through one PromptCache: the second rewinds the cache that the first one's decode left
    with static shapes and a sliding window overwritten by the reply, and runs only its new tokens."""
    cpu, gpu = engines(cuda_ops, tmp_path, sliding_window=4)
    cuda_ops.graphs = False  # decode op by op, with the static shapes a recorded step has
    ids = np.random.default_rng(7).integers(0, cpu.config.vocab_size, 8)
    cache = PromptCache()
    assert list(gpu.generate(ids[:5], 3, prompt_cache=cache)) == list(cpu.generate(ids[:5], 3))
    assert list(gpu.generate(ids, 2, prompt_cache=cache)) == list(cpu.generate(ids, 2))
    assert cache.reused == 4
    sim.assert_launched_as_checked()


@pytest.mark.shipped_launches
def test_tiny_model_at_the_shipped_launch_shapes(cuda_ops, tmp_path, monkeypatch):
    """A prefill and a decode step of every layer type with the GPU's block shapes, op by op (the CUDA
    graph does not depend on them; test_tiny_model_prefill_and_decode replays it): the kernels as they
    compose in the model, race-checked, against the CPU engine. The bf16 GEMVs' rows are not split (a
    block of 256 threads a row otherwise, slow here)."""
    monkeypatch.setattr(bf16_cuda, "SPLIT_BELOW_N", 0)
    cpu, gpu = engines(cuda_ops, tmp_path, vocab_size=64, sliding_window=4)
    ids = np.random.default_rng(7).integers(0, cpu.config.vocab_size, 6)
    caches = cpu.new_cache(6), gpu.new_cache(6)
    for step in (ids[:5], ids[5:]):  # prefill 5, decode 1 (past the window)
        ours, ref = gpu.forward(step, caches[1]), cpu.forward(step, caches[0])
        assert rel_err(cuda_ops.to_numpy(ours), ref) < 1e-5
    sim.assert_launched_as_checked()


def test_trace_of_one_token(cuda_ops, tmp_path):
    """A one-token trace reads the routing before the experts run (backend_cuda.Routed, from the route
    kernel then) and must show the CPU engine's router logits and choices (the second layer's logits
    follow from the first layer's experts)."""
    cpu, gpu = engines(cuda_ops, tmp_path, vocab_size=64, num_attention_heads=2, num_key_value_heads=1,
                       num_hidden_layers=2)
    ours, ref = gpu.trace([5], attention=False), cpu.trace([5], attention=False)
    assert len(ours) == len(ref) == 2
    for a, b in zip(ours, ref):
        assert rel_err(a.router_logits, b.router_logits) < 1e-5
        np.testing.assert_array_equal(a.experts, b.experts)
        np.testing.assert_array_equal(a.tokens_per_expert, b.tokens_per_expert)


def test_trace_of_a_prompt_with_attention(cuda_ops, tmp_path):
    """What the notebooks show, on the GPU (gpu_check.sh runs them there): per layer, a sliding and a
    full one, the attention maps, sink shares and routing of a prompt longer than the window."""
    cpu, gpu = engines(cuda_ops, tmp_path, vocab_size=64, num_hidden_layers=2, sliding_window=4)
    ids = [5, 9, 2, 40, 7, 7, 1]
    ours, ref = gpu.trace(ids), cpu.trace(ids)
    assert [layer.window for layer in ours] == [layer.window for layer in ref] == [4, None]
    for a, b in zip(ours, ref):
        assert a.attention.shape == b.attention.shape == (4, 7, 7)
        assert rel_err(a.attention, b.attention) < 1e-5 and rel_err(a.sink, b.sink) < 1e-5
        np.testing.assert_array_equal(a.key_positions, b.key_positions)
        assert rel_err(a.router_logits, b.router_logits) < 1e-5
        np.testing.assert_array_equal(a.experts, b.experts)
        np.testing.assert_array_equal(a.tokens_per_expert, b.tokens_per_expert)


@pytest.mark.parametrize("tokens", [1, 5])
@pytest.mark.parametrize("swiglu", [None, (7.0, 1.702)])
def test_expert_paths(cuda_ops, monkeypatch, tokens, swiglu):
    """CudaOps.mxfp4_experts by its GEMV (one token), its grouped matmul, and cuBLAS on dequantized
    experts (from EXPERT_BLAS_MIN_TOKENS tokens; lowered here), against mxfp4.matmul_ref per pair;
    with SwiGLU after it (fused into the GEMV), against moe.swiglu_ref."""
    backend_cuda = sys.modules["gptoss_np.backend_cuda"]
    rng = np.random.default_rng(tokens)
    E, N, G, A = 4, 6, 2, 2
    blocks = rng.integers(0, 256, (E, N, G, 16), dtype=np.uint8)
    scales = rng.integers(116, 124, (E, N, G), dtype=np.uint8)  # gates of a few units for SwiGLU
    bias = rng.standard_normal((E, N), dtype=np.float32)
    x = rng.standard_normal((tokens, G * 32), dtype=np.float32)
    experts = np.stack([rng.choice(E - 1, A, replace=False) for _ in range(tokens)]).astype(np.int32)  # E-1 unused
    ref = np.stack([mxfp4.matmul_ref(x[p // A][None], blocks[e], scales[e])[0] + bias[e]
                    for p, e in enumerate(experts.ravel())])
    if swiglu is not None:
        ref = moe.swiglu_ref(ref, *swiglu)
    device = [sys.modules["cupy"].asarray(a) for a in (x, blocks, scales, bias, experts)]
    x, blocks, scales, bias, experts = device
    for blas_from in ((2, 10**9) if tokens > 1 else (10**9,)):
        monkeypatch.setattr(backend_cuda, "EXPERT_BLAS_MIN_TOKENS", blas_from)
        out = cuda_ops.mxfp4_experts(x, A, blocks, scales, bias, cuda_ops.pair_plan(experts, E), swiglu=swiglu)
        assert out.shape == ref.shape and rel_err(cuda_ops.to_numpy(out), ref) < 1e-6


def test_expert_choice_dispatch(cuda_ops, tmp_path):
    """The budgeted expert-choice dispatch (decided on the host) through the grouped CUDA matmul."""
    rule = DispatchRule("expert_choice", tokens_per_expert_ratio=0.5)  # 4 tokens per expert for 16 tokens
    cpu, gpu = engines(cuda_ops, tmp_path, rule, vocab_size=64, num_attention_heads=2, num_key_value_heads=1,
                       num_hidden_layers=1, layer_types=["full_attention"])
    ids = np.random.default_rng(6).integers(0, cpu.config.vocab_size, 16)
    assert sum(layer.dropped for layer in cpu.trace(ids, attention=False)) > 0
    ours, ref = gpu.forward(ids, gpu.new_cache(16), all_logits=True), cpu.forward(ids, cpu.new_cache(16), all_logits=True)
    assert rel_err(cuda_ops.to_numpy(ours), ref) < 1e-5
    sim.assert_launched_as_checked()


def test_dispatched_experts_with_the_busiest_expert_one_pair_past_a_tile(cuda_ops):
    """CudaOps.dispatched_experts when expert 0 takes 5 pairs, a second tile of the simulator's 4-pair tiles
    (conftest), against CpuOps.dispatched_experts."""
    cp = sys.modules["cupy"]
    rng = np.random.default_rng(11)
    E, D, I = 2, 32, 32
    host = dict(gate_up_blocks=rng.integers(0, 256, (E, 2 * I, D // 32, 16), dtype=np.uint8),
                gate_up_scales=rng.integers(118, 124, (E, 2 * I, D // 32), dtype=np.uint8),
                gate_up_bias=rng.standard_normal((E, 2 * I), dtype=np.float32),
                down_blocks=rng.integers(0, 256, (E, D, I // 32, 16), dtype=np.uint8),
                down_scales=rng.integers(118, 124, (E, D, I // 32), dtype=np.uint8),
                down_bias=rng.standard_normal((E, D), dtype=np.float32))
    d = Dispatch(tokens=np.array([0, 1, 2, 3, 4, 2]), weights=rng.random(6, dtype=np.float32),
                 starts=np.array([0, 5, 6]), dropped=0, unrouted=0)
    x = rng.standard_normal((5, D), dtype=np.float32)
    ref = CpuOps().dispatched_experts(types.SimpleNamespace(**host), x, d, 7.0, 1.702)
    w = types.SimpleNamespace(**{k: cp.asarray(v) for k, v in host.items()})
    ours = cuda_ops.to_numpy(cuda_ops.dispatched_experts(w, cp.asarray(x), d, 7.0, 1.702))
    assert_close(ours, ref, rtol=1e-5)


def test_sample_breaks_logit_ties_as_the_cpu(cuda_ops):
    """Tied logits with top-k: the lower ids are kept first, so CudaOps.sample draws what CpuOps.sample
    draws from the same seeds."""
    cp = sys.modules["cupy"]
    logits = np.zeros(8, np.float32)
    logits[5] = -1
    for seed in range(4):
        assert (cuda_ops.sample(cp.asarray(logits), rng=np.random.default_rng(seed), temperature=1.0, top_k=3)
                == CpuOps().sample(logits, rng=np.random.default_rng(seed), temperature=1.0, top_k=3)), seed


def test_gpus_with_tensor_cores_default_to_bf16_products(cuda_ops):
    assert cuda_ops.products == "bf16x3"  # the simulated GPU reports compute capability 9


@pytest.mark.parametrize("products", ["bf16x3", "tf32x2", "float32"])
def test_cublas_products_keep_float32_accuracy(cuda_ops, monkeypatch, products):
    """CudaOps.matmul_t in each `products` mode: float32's accuracy for weights exact in bf16, with
    cuBLAS's TF32 mode set only for tf32x2's call and put back after (the shim's matmul rounds to TF32
    in that mode, its gemmEx runs bf16 operands)."""
    cp = sys.modules["cupy"]
    modes, matmul = [], cp.matmul
    monkeypatch.setattr(cp, "matmul", lambda a, b, out=None: modes.append(cp._core.get_compute_type(np.float32))
                        or matmul(a, b, out=out))
    cuda_ops.products = products
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 64), dtype=np.float32)
    w_bits = bf16.f32_to_bf16(rng.standard_normal((3, 64), dtype=np.float32))
    w = w_bits if products == "bf16x3" else bf16.bf16_to_f32(w_bits)
    before = cp._core.get_compute_type(np.float32)
    truth = x.astype(np.float64) @ bf16.bf16_to_f32(w_bits).T
    assert rel_err(cuda_ops.to_numpy(cuda_ops.matmul_t(cp.asarray(x), cp.asarray(w))), truth) < 1e-6
    tf32_mode = cp._core._routines_linalg.COMPUTE_TYPE_TF32
    assert modes == {"bf16x3": [], "tf32x2": [tf32_mode], "float32": [before]}[products]
    assert cp._core.get_compute_type(np.float32) == before


def _first_part_only(n):
    """A split_rows of n parts a row (bf16x3_cuda's 3, fp16x2_cuda's 2) keeping only each row's first
    part: one bf16 or fp16 product of x."""
    def wrap(split_rows):
        def split(x, rows, parts, *more):
            result = split_rows(x, rows, parts, *more)
            for i in range(1, n):
                parts[i::n] = 0
            return result
        return split
    return wrap


@pytest.mark.parametrize("products, fp16_experts, one_part", [
    ("bf16x3", False, ("gptoss_np.kernels.bf16x3_cuda", "split_rows", _first_part_only(3))),
    ("bf16x3", True, ("gptoss_np.kernels.fp16x2_cuda", "split_rows", _first_part_only(2))),
    ("tf32x2", False, ("gptoss_np.tf32", "split", lambda split: lambda x: (x, np.zeros_like(x))))])
def test_cublas_prefill_keeps_float32_accuracy(cuda_ops, monkeypatch, tmp_path, products, fp16_experts, one_part):
    """A prefill whose projections and experts all take cuBLAS, its products emulated (sim.py): the
    parts of x keep the CPU engine's float32 logits, where one bf16, fp16 (the experts') or TF32
    product of x would not. The experts are dequantized one a launch here (DEQUANT_BYTES), all in one
    launch elsewhere."""
    monkeypatch.setattr(sys.modules["gptoss_np.backend_cuda"], "EXPERT_BLAS_MIN_TOKENS", 2)
    monkeypatch.setattr(sys.modules["gptoss_np.backend_cuda"], "DEQUANT_BYTES", 1)
    cpu, gpu = engines(cuda_ops, tmp_path, num_hidden_layers=1, layer_types=["full_attention"])
    cuda_ops.products, cuda_ops.fp16_experts = products, fp16_experts
    ids = np.random.default_rng(8).integers(0, cpu.config.vocab_size, 8)
    ref = cpu.forward(ids, cpu.new_cache(8), all_logits=True)
    assert rel_err(cuda_ops.to_numpy(gpu.forward(ids, gpu.new_cache(8), all_logits=True)), ref) < 1e-5
    sim.assert_launched_as_checked()
    module, name, one_product = one_part
    module = sys.modules[module]
    monkeypatch.setattr(module, name, one_product(getattr(module, name)))  # x as it is: one product rounds it
    assert rel_err(cuda_ops.to_numpy(gpu.forward(ids, gpu.new_cache(8), all_logits=True)), ref) > 1e-5


def test_weights_that_cannot_fit_are_refused_before_loading(cuda_ops, monkeypatch, tmp_path):
    checkpoint = Checkpoint(synthetic.write_checkpoint(tmp_path, synthetic.config_dict("tiny")))
    monkeypatch.setattr(sim, "FREE_BYTES", checkpoint.nbytes - 1)
    with pytest.raises(MemoryError, match=r"weights need \d+\.\d\d GB of GPU memory; Numba CUDA simulator has "
                                          r"\d+\.\d\d GB free of \d+\.\d\d GB"):
        GptOss(checkpoint, cuda_ops)
    monkeypatch.setattr(sim, "FREE_BYTES", checkpoint.nbytes)
    GptOss(checkpoint, cuda_ops)


def test_auto_takes_the_cpu_when_the_weights_do_not_fit_the_gpu(cuda_ops, monkeypatch, tmp_path):
    """device="auto" with a usable GPU too small for the weights: the CPU, saying why; "cuda" refuses."""
    folder = synthetic.write_checkpoint(tmp_path, synthetic.config_dict("tiny", **SMALL))
    monkeypatch.setattr(backend, "cuda_unusable_reason", lambda: None)  # the simulator stands in for a GPU
    monkeypatch.setattr(sim, "FREE_BYTES", Checkpoint(folder).nbytes - 1)
    model = gptoss_np.load(folder, device="auto")
    assert model.ops.name == "cpu"
    assert re.fullmatch(r"the checkpoint's weights need \d+\.\d\d GB of GPU memory; Numba CUDA simulator has "
                        r"\d+\.\d\d GB free of \d+\.\d\d GB", model.ops.reason)
    with pytest.raises(MemoryError, match="weights need"):
        gptoss_np.load(folder, device="cuda")
    monkeypatch.setattr(sim, "FREE_BYTES", Checkpoint(folder).nbytes)
    model = gptoss_np.load(folder, device="auto")
    assert model.ops.name == "cuda" and model.ops.reason is None


@pytest.mark.shipped_launches
def test_models_the_kernels_cannot_run_are_refused_at_load(cuda_ops, monkeypatch, tmp_path):
    """Every gpt-oss model fits the kernels. A model that does not (a head dim over 64, more experts a
    token than the routing takes, rows longer than the experts' GEMV stages): "cuda" refuses it at
    load, naming what does not fit, and "auto" takes the CPU, saying why. Before, it loaded and the
    first forward pass failed in a kernel's shape check."""
    for preset in ("gpt-oss-20b", "gpt-oss-120b", "tiny"):
        assert cuda_ops.unsupported(GptOssConfig.from_dict(synthetic.config_dict(preset))) is None
    misfits = {"query heads a key/value head with head_dim 128": dict(head_dim=128),
               "8 query heads a key/value head with head_dim 48": dict(head_dim=48, num_attention_heads=8,
                                                                        num_key_value_heads=1),
               "17 of 32 experts a token": dict(num_local_experts=32, num_experts_per_tok=17),
               "hidden_size 4128 and intermediate_size 64": dict(hidden_size=4128)}
    for words, overrides in misfits.items():
        reason = cuda_ops.unsupported(GptOssConfig.from_dict(synthetic.config_dict("tiny", **overrides)))
        assert reason is not None and words in reason
    monkeypatch.setattr(backend, "cuda_unusable_reason", lambda: None)  # the simulator stands in for a GPU
    folder = synthetic.write_checkpoint(tmp_path, synthetic.config_dict("tiny", **{**SMALL, "head_dim": 128}))
    with pytest.raises(gptoss_np.DeviceUnavailableError,
                       match=r"device='cuda' cannot run: the CUDA kernels cannot run this model: 2 query heads a "
                             r"key/value head with head_dim 128 \(the attention kernel takes up to 64 query heads a "
                             r"key/value head, and head dims from 4 to 64 that divide 128\)$"):
        gptoss_np.load(folder, device="cuda")
    model = gptoss_np.load(folder, device="auto")
    assert model.ops.name == "cpu" and model.ops.reason.startswith("the CUDA kernels cannot run this model: 2 query")
