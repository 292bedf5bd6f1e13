"""The CUDA engine on a real GPU: kernels at real launch shapes, then the whole model against the CPU
engine and transformers (both on synthetic checkpoints, transformers on the same GPU).

Every test is marked `gpu` and skipped, with the reason, when no GPU is usable (backend.cuda_unusable_reason).
bench/gpu_check.sh runs this file on the device machine.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import gptoss_np
from conftest import CHECKPOINTS, assert_greedy, hf_logits, load_hf, model_like_weights, random_checkpoint, rel_err
from gptoss_np import backend, fp16x2, sampling, synthetic
from gptoss_np.kernels import attention, bf16, moe, mxfp4, norm_rope

pytestmark = pytest.mark.gpu
TOL = 1e-4  # relative error on float32 logits: the project's target for float32 paths (every GPU path is one)


@pytest.fixture(scope="module", autouse=True)
def gpu():
    reason = backend.cuda_unusable_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def hf_cuda():
    """hf_cuda(folder) -> transformers' GptOssForCausalLM on the GPU in float32, eager attention (on the
    CPU where torch sees no GPU: the oracle still runs, rather than the tests skipping)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return lambda folder: load_hf(folder, "cuda" if torch.cuda.is_available() else "cpu")  # (a CPU build of torch)


def prompt(config, length: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, config.vocab_size, length)


# ---------------------------------------------------------------- kernels at real shapes

def routed_experts(rng, E, N, G, T, A):
    """Random MXFP4 experts [E, N, G * 32] with biases, T token rows of x and their A experts each, on the
    GPU as a dict (blocks, scales, bias, x, experts); and the pairs' products by the NumPy reference."""
    import cupy as cp
    blocks = rng.integers(0, 256, (E, N, G, 16), dtype=np.uint8)
    scales = rng.integers(115, 125, (E, N, G), dtype=np.uint8)
    bias = rng.standard_normal((E, N), dtype=np.float32)
    x = rng.standard_normal((T, G * 32), dtype=np.float32)
    experts = np.stack([rng.choice(E, A, replace=False) for _ in range(T)]).astype(np.int32).ravel()
    ref = np.stack([mxfp4.matmul_ref(x[p // A][None], blocks[e], scales[e])[0] + bias[e] for p, e in enumerate(experts)])
    d = {name: cp.asarray(a) for name, a in dict(blocks=blocks, scales=scales, bias=bias, x=x, experts=experts).items()}
    return d, ref


def test_kernels_at_gpt_oss_20b_shapes():
    import cupy as cp
    from gptoss_np.kernels import attention_cuda, bf16_cuda, moe_cuda, mxfp4_cuda
    rng = np.random.default_rng(0)
    E, N, G, T, A = 4, 2880, 90, 37, 4
    d, ref = routed_experts(rng, E, N, G, T, A)
    out = cp.full((T * A, N), cp.nan, cp.float32)
    mxfp4_cuda.expert_gemv(d["x"], A, d["experts"], d["blocks"], d["scales"], d["bias"], out)
    assert rel_err(out.get(), ref) < 1e-5
    order, offsets = moe_cuda.sort_pairs(d["experts"], cp.full(T * A, -1, cp.int32), cp.full(E + 1, -1, cp.int32))
    out[:] = cp.nan
    mxfp4_cuda.expert_matmul(d["x"], A, order, offsets, T, d["blocks"], d["scales"], d["bias"], out)
    assert rel_err(out.get(), ref) < 1e-5

    # decode's gate_up GEMV routing its pairs (32 experts: 20b's, 128: 120b's), and the route kernel
    for E in (32, 128):
        d, _ = routed_experts(rng, E, 64, G, 1, A)
        logits = rng.standard_normal((1, E), dtype=np.float32)
        chosen, weights = cp.full(A, -1, cp.int32), cp.full((1, A), cp.nan, cp.float32)
        out = cp.full((A, 64), cp.nan, cp.float32)
        mxfp4_cuda.expert_gemv(d["x"], A, chosen, d["blocks"], d["scales"], d["bias"], out,
                               route=(cp.asarray(logits), weights))
        ref_experts, ref_weights = moe.route_ref(logits, A)
        assert chosen.get().tolist() == ref_experts[0].tolist() and rel_err(weights.get(), ref_weights) < 1e-6
        blocks, scales, bias = (d[name].get() for name in ("blocks", "scales", "bias"))
        x = d["x"].get()
        ref = np.stack([mxfp4.matmul_ref(x, blocks[e], scales[e])[0] + bias[e] for e in ref_experts[0]])
        assert rel_err(out.get(), ref) < 1e-5
        many = rng.standard_normal((300, E), dtype=np.float32)
        chosen, weights = moe_cuda.route(cp.asarray(many), cp.full((300, A), -1, cp.int32),
                                         cp.full((300, A), cp.nan, cp.float32))
        ref_experts, ref_weights = moe.route_ref(many, A)
        assert (chosen.get() == ref_experts).all() and rel_err(weights.get(), ref_weights) < 1e-6

    # a row over the block's warps (router), one row a warp (q), 4 rows a warp with a ragged end (lm_head-like);
    # of x, and of rmsnorm(x) as decode runs them
    norm = rng.standard_normal(2880, dtype=np.float32)
    for T, N in ((1, 32), (3, 4096), (1, 20001)):
        w = bf16.f32_to_bf16(rng.standard_normal((N, 2880), dtype=np.float32))
        xs = rng.standard_normal((T, 2880), dtype=np.float32)
        y = cp.full((T, N), cp.nan, cp.float32)
        bf16_cuda.gemv(cp.asarray(xs), cp.asarray(w), cp.zeros(N, cp.float32), y)
        assert rel_err(y.get(), bf16.matmul_ref(xs, w)) < 1e-5
        y[:], normed = cp.nan, cp.full((T, 2880), cp.nan, cp.float32)
        bf16_cuda.gemv(cp.asarray(xs), cp.asarray(w), cp.zeros(N, cp.float32), y, norm=(cp.asarray(norm), 1e-5, normed))
        h = norm_rope.rmsnorm_ref(xs, norm, 1e-5)
        assert rel_err(normed.get(), h) < 1e-6 and rel_err(y.get(), bf16.matmul_ref(h, w)) < 1e-5

    S, H, Gk, Dh = 1000, 64, 8, 64
    q = rng.standard_normal((1, H, Dh), dtype=np.float32)
    k, v = rng.standard_normal((2, S, Gk, Dh), dtype=np.float32)
    sinks = rng.standard_normal(H, dtype=np.float32)
    q_pos, k_pos = np.array([S - 1]), np.arange(S)
    for window in (None, 128):
        o = cp.full((1, H, Dh), cp.nan, cp.float32)
        attention_cuda.attention(cp.asarray(q), cp.asarray(k), cp.asarray(v), cp.asarray(q_pos), cp.asarray(k_pos),
                                 cp.asarray(sinks), window, 0.125, o)
        assert rel_err(o.get(), attention.attention_ref(q, k, v, q_pos, k_pos, sinks, window, 0.125)) < 1e-5


def test_prefill_kernels_at_gpt_oss_20b_shapes():
    """The kernels of a prompt at the real launch shapes (the simulator runs smaller blocks): attention
    with full 64-row tiles and a partial one after a cached prefix, the tiled experts' matmul with
    16-row tiles, the experts dequantized for cuBLAS."""
    import cupy as cp
    from gptoss_np.kernels import attention_cuda, moe_cuda, mxfp4_cuda
    rng = np.random.default_rng(1)
    T, cached, H, Gk, Dh = 77, 50, 64, 8, 64
    S = cached + T
    q = rng.standard_normal((T, H, Dh), dtype=np.float32)
    k, v = rng.standard_normal((2, S, Gk, Dh), dtype=np.float32)
    sinks = rng.standard_normal(H, dtype=np.float32)
    q_pos, k_pos = np.arange(cached, S), rng.permutation(S)
    for window in (None, 16):
        o = cp.full((T, H, Dh), cp.nan, cp.float32)
        attention_cuda.attention(cp.asarray(q), cp.asarray(k), cp.asarray(v), cp.asarray(q_pos), cp.asarray(k_pos),
                                 cp.asarray(sinks), window, 0.125, o)
        assert rel_err(o.get(), attention.attention_ref(q, k, v, q_pos, k_pos, sinks, window, 0.125)) < 1e-5

    E, N, G, T, A = 4, 2880, 90, 9, 4  # 36 pairs, 9 an expert: 16-row tiles
    d, ref = routed_experts(rng, E, N, G, T, A)
    order, offsets = moe_cuda.sort_pairs(d["experts"], cp.full(T * A, -1, cp.int32), cp.full(E + 1, -1, cp.int32))
    out = cp.full((T * A, N), cp.nan, cp.float32)
    mxfp4_cuda.expert_matmul(d["x"], A, order, offsets, T, d["blocks"], d["scales"], d["bias"], out)
    assert rel_err(out.get(), ref) < 1e-5

    chosen = np.array([3, 1], np.int32)
    for dtype in (np.float32, np.uint16):
        w = cp.full((2, N, G * 32), np.nan if dtype == np.float32 else 0xFFFF, dtype)  # NaN (bf16 bits: 0xFFFF)
        mxfp4_cuda.dequantize(d["blocks"], d["scales"], cp.asarray(chosen), w)
        got = w.get() if dtype == np.float32 else (w.get().astype(np.uint32) << np.uint32(16)).view(np.float32)
        for i, e in enumerate(chosen):
            np.testing.assert_array_equal(got[i], mxfp4.dequantize(d["blocks"][e].get(), d["scales"][e].get()))
    largest = mxfp4_cuda.largest_scales(d["scales"], cp.asarray(chosen), cp.full(E, -1, cp.int32)).get()  # fp16x2's
    w = cp.full((2, N, G * 32), np.nan, cp.float16)
    mxfp4_cuda.dequantize(d["blocks"], d["scales"], cp.asarray(chosen), w, largest=cp.asarray(largest))
    for i, e in enumerate(chosen):
        assert largest[e] == d["scales"][e].get().max()
        ref = mxfp4.dequantize(d["blocks"][e].get(), d["scales"][e].get())
        np.testing.assert_array_equal(w[i].get(), fp16x2.scaled_weights(ref, int(largest[e])))


def test_cublas_products_are_as_exact_as_float32(record_property):
    """Each of CudaOps' cuBLAS products keeps float32's accuracy for MXFP4 and bf16 weights: three bf16
    products through gemmEx (the default; one bf16 product of x would lose ~3e-3), two TF32 products
    (cuBLAS's TF32 mode engages: one TF32 product loses ~1e-4), float32 products; and for MXFP4
    weights the experts' two fp16 products (one would lose ~2e-4)."""
    import cupy as cp
    from gptoss_np import bf16x3
    from gptoss_np.backend_cuda import CudaOps
    from gptoss_np.kernels import fp16x2_cuda
    ops = CudaOps()
    assert ops.products == "bf16x3", "an H100 has bf16 tensor cores"
    rng = np.random.default_rng(5)
    N, K, T = 2880, 2880, 300
    x = rng.standard_normal((T, K), dtype=np.float32)
    xd = cp.asarray(x)
    for name in ("mxfp4", "bf16"):
        w = model_like_weights(name, rng, N, K)
        truth = x.astype(np.float64) @ w.astype(np.float64).T
        wd, w_bits = cp.asarray(w), cp.asarray(bf16.f32_to_bf16(w))  # both exact
        errors = {}
        for products in ("float32", "tf32x2", "bf16x3"):
            ops.products = products
            errors[products] = rel_err(ops.matmul_t(xd, w_bits if products == "bf16x3" else wd).get(), truth)
        ops.products = "tf32x2"
        with ops.cublas_mode():  # TF32 mode, as tf32x2 sets it, for one product of x as it is
            errors["tf32x1"] = rel_err((xd @ wd.T).get(), truth)
        ops.products = "bf16x3"
        one_part = (bf16x3.truncate_to_bf16(xd).view(cp.uint32) >> 16).astype(cp.uint16)
        errors["bf16x1"] = rel_err(ops._product(one_part, w_bits, cp.empty((T, N), cp.float32)).get(), truth)
        if name == "mxfp4":  # model_like_weights draws scale bytes 110 .. 129: 129 bounds the largest
            parts, r = fp16x2_cuda.split_rows(xd, cp.arange(T, dtype=cp.int32), cp.empty((2 * T, K), cp.float16),
                                              cp.empty(T, cp.int32))
            y = ops._product(parts, cp.asarray(fp16x2.scaled_weights(w, 129)), cp.empty((2 * T, N), cp.float32)).get()
            errors["fp16x2"] = rel_err(fp16x2.sum_parts(y, r.get(), 129), truth)
            y[1::2] = 0
            errors["fp16x1"] = rel_err(fp16x2.sum_parts(y, r.get(), 129), truth)
        for key, value in errors.items():
            record_property(f"rel_err_{name}_{key}", value)
        assert errors["tf32x1"] > 30 * errors["tf32x2"], errors
        assert errors["bf16x1"] > 300 * errors["bf16x3"], errors
        assert errors.get("fp16x1", 1) > 100 * errors.get("fp16x2", 0), errors
        assert max(errors["tf32x2"], errors["bf16x3"], errors.get("fp16x2", 0)) <= 3 * errors["float32"] + 1e-7, errors


@pytest.mark.parametrize("products, fp16_experts", [("bf16x3", True), ("bf16x3", False), ("tf32x2", False)])
def test_prefill_with_experts_by_cublas_matches_transformers(products, fp16_experts, checkpoint_dir, hf_cuda,
                                                             monkeypatch, record_property):
    """The prefill path of long prompts (experts dequantized, cuBLAS products), forced on."""
    from gptoss_np import backend_cuda
    monkeypatch.setattr(backend_cuda, "EXPERT_BLAS_MIN_TOKENS", 2)
    folder = checkpoint_dir("tiny")
    ids = prompt(gptoss_np.load(folder).config, 100, seed=7)
    model = gptoss_np.load(folder, device="cuda")
    model.ops.products, model.ops.fp16_experts = products, fp16_experts
    err = rel_err(model.logits(ids), hf_logits(hf_cuda(folder), ids))
    record_property("rel_err_hf", err)
    assert err <= TOL


def test_device_sampling_draws_as_the_cpu():
    ops = backend.select("cuda")
    rng = np.random.default_rng(0)
    logits = (3 * rng.standard_normal(201088)).astype(np.float32)
    assert ops.sample(ops.xp.asarray(logits)) == int(np.argmax(logits))
    for seed in range(64):
        kwargs = dict(temperature=0.8, top_k=50 if seed % 2 else None, top_p=0.9, min_p=0.01 if seed % 3 else None)
        ours = ops.sample(ops.xp.asarray(logits), rng=np.random.default_rng(seed), **kwargs)
        assert ours == sampling.sample(logits, rng=np.random.default_rng(seed), **kwargs)


# ---------------------------------------------------------------- the whole model

@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_logits_match_cpu_and_transformers(name, checkpoint_dir, hf_cuda, record_property):
    folder = checkpoint_dir(name)
    cpu, gpu = gptoss_np.load(folder), gptoss_np.load(folder, device="cuda")
    assert gpu.ops.name == "cuda"
    ids = prompt(cpu.config, 100)
    ours = gpu.logits(ids)
    assert ours.dtype == np.float32 and ours.shape == (100, cpu.config.vocab_size)
    errors = {"rel_err_cpu": rel_err(ours, cpu.logits(ids)), "rel_err_hf": rel_err(ours, hf_logits(hf_cuda(folder), ids))}
    for key, value in errors.items():
        record_property(key, value)
    assert max(errors.values()) <= TOL, errors


@pytest.mark.parametrize("name", ["tiny", "gqa4_sharded"])
def test_prefill_then_decode_equals_full_sequence(name, checkpoint_dir):
    model = gptoss_np.load(checkpoint_dir(name), device="cuda")
    ids = prompt(model.config, 60, seed=2)
    full = gptoss_np.load(checkpoint_dir(name)).logits(ids)  # the CPU engine's
    cache = model.new_cache(8)  # smaller than the sequence: full layers grow on the GPU too
    parts = [model.forward(ids[:20], cache, all_logits=True), model.forward(ids[20:45], cache, all_logits=True)]
    parts += [model.forward(ids[t:t + 1], cache) for t in range(45, 60)]
    assert rel_err(np.concatenate([model.ops.to_numpy(p) for p in parts]), full) <= TOL


@pytest.mark.parametrize("name", ["tiny", "mha_tied"])
def test_greedy_continuation_matches_cpu(name, checkpoint_dir):
    folder = checkpoint_dir(name)
    ids = prompt(gptoss_np.load(folder).config, 12, seed=3)
    cpu = list(gptoss_np.load(folder).generate(ids, max_new_tokens=24))
    gpu = gptoss_np.load(folder, device="cuda")
    assert list(gpu.generate(ids, max_new_tokens=24)) == cpu
    assert gpu.ops.graphs  # the decode steps were replayed from a graph: no capture failed
    assert list(gptoss_np.load(folder, device="cuda", cuda_graphs=False).generate(ids, max_new_tokens=24)) == cpu


def test_prompt_cache_turns_match_cpu(checkpoint_dir):
    """Chat turns through one PromptCache: each rewinds the cache that the last reply's graph-replayed
    decode ran past the sliding window."""
    folder = checkpoint_dir("tiny")
    cpu, gpu = gptoss_np.load(folder), gptoss_np.load(folder, device="cuda")
    ids = prompt(cpu.config, 40, seed=7)
    caches = gptoss_np.PromptCache(), gptoss_np.PromptCache()
    for length in (12, 30, 40):
        ours = list(gpu.generate(ids[:length], 10, prompt_cache=caches[1]))
        assert ours == list(cpu.generate(ids[:length], 10, prompt_cache=caches[0])), length
    assert caches[1].reused == 29 and gpu.ops.graphs


@pytest.mark.parametrize("name", ["tiny", "gqa4_sharded"])
def test_graph_decode_matches_transformers(name, checkpoint_dir, hf_cuda, record_property):
    """Decode steps replayed from one CUDA graph (cuda_graph.py), past the sliding window, against
    transformers over the whole sequence and against one op-by-op prefill of it."""
    from gptoss_np.cuda_graph import GraphDecoder
    folder = checkpoint_dir(name)
    model = gptoss_np.load(folder, device="cuda")
    ids = prompt(model.config, 60, seed=6)
    cache = model.new_cache(60)
    parts = [model.ops.to_numpy(model.forward(ids[:20], cache, all_logits=True))]
    decode = GraphDecoder(model, cache)
    parts += [model.ops.to_numpy(decode(int(t))) for t in ids[20:]]  # a copy: the next replay overwrites
    assert decode.graph is not None and cache.length == 60
    ours = np.concatenate(parts)
    errors = {"rel_err_graph_vs_prefill": rel_err(ours, model.logits(ids)),
              "rel_err_graph_hf": rel_err(ours, hf_logits(hf_cuda(folder), ids))}
    for key, value in errors.items():
        record_property(key, value)
    assert max(errors.values()) <= TOL, errors


@pytest.fixture(scope="module")
def two_layer_20b(tmp_path_factory):
    """A 2-layer checkpoint with gpt-oss-20b's real dimensions (3.2 GB on disk)."""
    config = synthetic.config_dict("gpt-oss-20b", num_hidden_layers=2)
    return synthetic.write_checkpoint(tmp_path_factory.mktemp("two_layer_20b"), config, progress=False)


def test_two_layers_of_20b(two_layer_20b, hf_cuda, record_property):
    cpu, gpu = gptoss_np.load(two_layer_20b), gptoss_np.load(two_layer_20b, device="cuda")
    ids = prompt(cpu.config, 40, seed=4)
    ours = gpu.logits(ids)
    err_cpu = rel_err(ours, cpu.logits(ids))
    record_property("rel_err_cpu", err_cpu)
    assert err_cpu <= TOL
    assert list(gpu.generate(ids[:8], max_new_tokens=6)) == list(cpu.generate(ids[:8], max_new_tokens=6))
    del cpu, gpu
    err_hf = rel_err(ours, hf_logits(hf_cuda(two_layer_20b), ids))
    record_property("rel_err_hf", err_hf)
    assert err_hf <= TOL


@pytest.mark.parametrize("seed", range(12))
def test_random_models_match_cpu_and_transformers(seed, tmp_path, hf_cuda, record_property):
    """Random small models (conftest.random_checkpoint): of those the kernels take (seeds 1, 2, 4, 5, 8),
    the logits of a random prompt of 1 to 299 tokens (a prefill path by its length: the experts' GEMV, the
    tiled matmul, from 256 tokens cuBLAS) are the CPU engine's and transformers', and a greedy continuation
    replayed from a CUDA graph takes their argmax at each step; the others (a head dim of 2, 12, 20 or
    128) are refused at load, and "auto" takes the CPU, saying why."""
    folder = random_checkpoint(tmp_path, seed)
    cpu = gptoss_np.load(folder)
    from gptoss_np.backend_cuda import CudaOps
    reason = CudaOps.unsupported(cpu.config)
    assert (reason is not None) == (seed in (0, 3, 6, 7, 9, 10, 11)), reason  # the kernels' reach unchanged
    if reason:
        with pytest.raises(gptoss_np.DeviceUnavailableError, match=re.escape(reason)):
            gptoss_np.load(folder, device="cuda")
        assert gptoss_np.load(folder, device="auto").ops.reason == reason
        return
    gpu, hf = gptoss_np.load(folder, device="cuda"), hf_cuda(folder)
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, cpu.config.vocab_size, int(rng.integers(1, 300)))
    ours = gpu.logits(ids)
    errors = {"rel_err_cpu": rel_err(ours, cpu.logits(ids)), "rel_err_hf": rel_err(ours, hf_logits(hf, ids))}
    for key, value in errors.items():
        record_property(key, value)
    assert max(errors.values()) <= TOL, errors
    start = ids[:20]
    new = list(gpu.generate(start, 8))
    assert gpu.ops.graphs
    for oracle in (cpu.logits, lambda tokens: hf_logits(hf, tokens)):
        assert_greedy(new, oracle(np.concatenate([start, new]))[len(start) - 1:-1], TOL)
