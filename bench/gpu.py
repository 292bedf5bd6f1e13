"""GPU benchmark of the CUDA engine on gpt-oss-shaped random weights built on the GPU (no disk).

    python3 bench/gpu.py --json out.json [--tests gpu_tests.xml] [--preset gpt-oss-20b] [--set KEY=VALUE ...]
                         [--contexts 128,4096,32768] [--prompts 128,2048,8192] [--decode 32]
                         [--prefill-budget 60] [--transformers] [--profile] [--variants]

Sections, each added to the JSON as soon as it is measured (a timeout keeps what was done):
  copy        device-to-device copy bandwidth (bytes read + written), the memory ceiling
  launch      host microseconds per launch of an empty Numba kernel given 3 CuPy arrays, the same
              arrays as Numba device arrays, and per CuPy elementwise launch (a decode step makes
              hundreds of launches: this says what graphs or fewer launches can save); and GPU
              microseconds per node of a replayed graph of such launches (graph_node_*_us: what
              each kernel of a replayed decode step costs however little it does)
  memory      GPU memory of the weights and of the KV cache (CuPy's pool); the GPU's memory in use by
              the driver's count (gpu_used_gb: the CUDA context and the pool's cached blocks too) once
              the weights are loaded, after the decode runs, and at each prefill length after its
              first run by the engine's own path; peak_gpu_gb, the largest of these
  kernels     each weight-reading op of a decode step alone (20 calls replayed from a CUDA graph, the
              median of 10 replays timed by CUDA events; each call another layer's weights, so they
              stream from memory as in a decode step; attention at the longest decode context):
              microseconds a call, GB/s of the bytes it must read, and % of the copy bandwidth
  kernel_variants  with --variants: the same for the decode GEMVs compiled with other launch
              constants (KERNEL_VARIANTS: words in flight, x chunk, warps a block), in the same run
  decode      tok/s of greedy steps (argmax on the device, one id to the host a step) at each context,
              the median of 3 runs of --decode steps (tok_s_runs: each run's),
              through generate()'s decoder (steps replayed from a CUDA graph; graph_replayed says
              whether the capture worked) and op by op (eager_*); the cache is filled with random keys
              and values first (a step's cost depends only on what the cache holds), plus the bytes a
              step must read and the % of the copy-bandwidth floor; at the first context also with a
              draw on the device (sampled_*: temperature 1, the command line's default; sampled_top_p_*:
              with top-p 0.9), whose cost beside argmax is the sort of the vocabulary and the draw
  profile     one decode step's time per op, op by op (the eager step, not the graph's fixed-shape
              one), each op synchronized (slower than the free-running step: the shares are what
              count), the host's part of it (launch overhead), and the op calls;
              prefill_profile the same for one prefill of the measured length nearest 2k tokens
  prefill     tok/s of a prefill of each prompt length as generate() runs it (passes of 4096 tokens,
              a fresh cache), after one untimed run, the median of 3 (over 2k tokens: 1), with the MoE
              experts by the tiled Numba kernel and by cuBLAS on dequantized experts (tiled_tok_s,
              blas_tok_s; tok_s is the path backend_cuda's rule takes), cuBLAS's products as the backend
              chooses them (`products`: three bf16 products where the GPU has bf16 tensor cores, and
              the experts' two fp16 products where `fp16_experts`), with the experts' products as
              `products` instead (blas_bf16x3_tok_s), and with all of cuBLAS's products as two TF32
              products (blas_tf32x2_tok_s);
              the path backend_cuda takes at each length always runs; where the predicted time of
              all paths (quadratic in length, from the last) would exceed --prefill-budget the others
              are skipped and say so
  transformers  with --transformers: transformers' GptOssForCausalLM in bf16 on the same GPU (random
              weights built there), greedy decode tok/s through generate(), and our ratio to it (run
              before the kernel variants)
  targets     the issues' targets for the preset (TARGETS), each with what was measured and whether
              it is met
With --tests, the pass/fail counts and relative errors from a pytest junit XML of tests/test_gpu.py.
Prints a table last.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import itertools
import json
import os
import time
import traceback
import xml.etree.ElementTree as ET
from collections import defaultdict

import cupy as cp
import numpy as np

from gptoss_np import GptOss, synthetic
from gptoss_np import generate as generation
from gptoss_np.backend import eager_decoder, select
from gptoss_np.cache import KVCache
from gptoss_np.checkpoint import FINAL_NORM, _layer_shapes, layer_tensor_name
from gptoss_np.config import GptOssConfig
from gptoss_np.cuda_graph import capture
from gptoss_np.kernels.bf16 import f32_to_bf16
from provenance import commit

PROFILED_OPS = ["embed", "linear", "rmsnorm", "rope_tables", "rope", "cache_write_one", "attention", "route", "swiglu",
                "pair_plan", "mxfp4_experts", "combine", "sample"]


class DeviceCheckpoint:
    """A Checkpoint look-alike whose tensors are random CuPy arrays made on the GPU, drawn as
    synthetic.py draws them (its `weight_stats` and `scale_exponent`), so activations stay unit-scale."""

    def __init__(self, config: GptOssConfig, seed: int = 0):
        self.config = config
        self.nbytes = 0
        self.ties_lm_head = config.tie_word_embeddings
        self.rs = cp.random.RandomState(seed)

    def _tensor(self, name: str, shape):
        if name.endswith(("_blocks", "_scales")):
            # [E, ...] uint8, drawn an expert at a time: int32 draws of a whole 120b layer take 4 GB
            out = cp.empty(shape, cp.uint8)
            low, high = (0, 256) if name.endswith("_blocks") else (-1, 2)
            offset = 0 if name.endswith("_blocks") else synthetic.scale_exponent(name, shape)
            for e in range(shape[0]):
                out[e] = offset + self.rs.randint(low, high, shape[1:], dtype=cp.int32)
            return out
        mean, std = synthetic.weight_stats(name, shape, self.config)
        x = self.rs.standard_normal(shape, dtype=cp.float32) * cp.float32(std) + cp.float32(mean)
        return f32_to_bf16(x)

    def layer(self, i: int) -> dict:
        return {short: self._tensor(layer_tensor_name(i, short), shape)
                for short, shape in _layer_shapes(self.config).items()}

    def tensor(self, name: str):
        V, D = self.config.vocab_size, self.config.hidden_size
        return self._tensor(name, (D,) if name == FINAL_NORM else (V, D))


def synchronize():
    cp.cuda.Device().synchronize()


def timed(fn):
    """fn's result and its seconds by the host's clock, the GPU synchronized around it: for work that
    the host drives (a decode step's token crosses to it), and long enough that the sync is noise."""
    synchronize()
    start = time.perf_counter()
    result = fn()
    synchronize()
    return result, time.perf_counter() - start


def gpu_seconds(fn, repeats: int) -> float:
    """Median GPU seconds of fn's work over `repeats` calls, each between two CUDA events on the
    current stream: for short work that the host only launches, which a host clock would overstate."""
    times = []
    for _ in range(repeats):
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end) / 1e3)
    return float(np.median(times))


def gpu_used_gb() -> float:
    """GB of the GPU's memory in use by the driver's count (total - free): the CUDA context, cuBLAS's
    workspace, the kernels' modules and all that CuPy's pool holds, its cached blocks too."""
    free, total = cp.cuda.runtime.memGetInfo()
    return round((total - free) / 1e9, 3)


COPY_BYTES = 1 << 30


def copy_bandwidth(repeats: int = 20) -> float:
    """GB/s of a device-to-device copy of COPY_BYTES, counting bytes read and written (median)."""
    src = cp.random.RandomState(1).randint(0, 255, COPY_BYTES // 4, dtype=cp.int32)
    dst = cp.empty_like(src)
    cp.copyto(dst, src)
    return 2 * src.nbytes / gpu_seconds(lambda: cp.copyto(dst, src), repeats) / 1e9


def launch_overhead(launches: int = 300) -> dict:
    """Host microseconds per launch, measured over `launches` back-to-back launches and a sync; and
    GPU microseconds per node of a CUDA graph of `launches` such launches in a chain (what a decode
    step pays for each of its kernels however little it does, hence what fusing two saves)."""
    from numba import config, cuda
    if config.ENABLE_CUDASIM:
        return {"skipped": "Numba's CUDA simulator"}

    from gptoss_np.kernels.common_cuda import stream_of

    @cuda.jit
    def touch(a, b, c):
        i = cuda.grid(1)
        if i < c.shape[0]:
            c[i] = a[i] + b[i]

    a, b, c = (cp.ones(256, cp.float32) for _ in range(3))
    views = [cuda.as_cuda_array(x) for x in (a, b, c)]
    cases = {"numba_kernel_cupy_args": lambda: touch[1, 256](a, b, c),
             "numba_kernel_numba_args": lambda: touch[1, 256](*views),
             "cupy_elementwise": lambda: cp.add(a, b, out=c)}
    result = {}
    for name, launch in cases.items():
        launch()
        synchronize()
        _, seconds = timed(lambda: [launch() for _ in range(launches)])
        result[name + "_us"] = round(seconds / launches * 1e6, 2)
    nodes = {"graph_node_numba_us": lambda: touch[1, 256, stream_of(c)](a, b, c),
             "graph_node_cupy_us": lambda: cp.add(a, b, out=c)}
    for name, launch in nodes.items():
        seconds, how = replayed_seconds(launch, launches)
        result[name] = round(seconds * 1e6, 2) if how == "graph" else f"not recorded ({how})"
    return result


def expert_bytes(rows: int, cols: int) -> int:
    """Bytes of one MXFP4 expert matrix [rows, cols] with its bias: 16 bytes of nibbles and 1 scale
    byte per 32 values, 4 bytes of float32 bias per row."""
    return rows * cols // 32 * 17 + 4 * rows


KERNEL_LAUNCHES = 20
REPLAYS = 10


def replayed_seconds(fn, launches: int) -> tuple[float, str]:
    """Seconds per call of fn, from `launches` calls recorded in one CUDA graph and replayed (GPU time
    only, the median of REPLAYS); when recording fails, from calls launched one by one (host time
    included), which it says."""
    fn()  # compiles
    synchronize()
    try:
        graph, _, kept = capture(lambda: [fn() for _ in range(launches)])
        stream = cp.cuda.get_current_stream()
        graph.launch(stream)
        return gpu_seconds(lambda: graph.launch(stream), REPLAYS) / launches, "graph"
    except Exception:  # noqa: BLE001 (the simulator, or an op that cannot be captured)
        _, seconds = timed(lambda: [fn() for _ in range(launches)])
        return seconds / launches, "op by op"


def kernel_cases(model: GptOss, context: int) -> dict:
    """Each weight-reading op of a decode step alone, at the model's shapes: name -> (a call, the bytes
    one call must read). Successive calls take the next layer's weights, and the MoE calls the next
    experts, as a decode step does: calls replayed back to back then stream their weights from memory
    instead of finding them in the L2 cache (50 MB on an H100, where one layer's qkv is 30 MB). The
    router's weights (0.18 MB a layer, 4.4 MB in all for gpt-oss-20b) stay in L2 all the same."""
    c, ops, layers = model.config, model.ops, model.layers
    D, I, A, E = c.hidden_size, c.intermediate_size, c.num_experts_per_tok, c.num_local_experts
    H, G, Dh = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    rs = cp.random.RandomState(3)
    x = rs.standard_normal((1, D), dtype=cp.float32)
    h = rs.standard_normal((A, I), dtype=cp.float32)
    # one token's A experts, other ones at each layer
    plans = [ops.pair_plan(cp.asarray([[(A * i + j) % E for j in range(A)]], dtype=cp.int32), E)
             for i in range(len(layers))]
    router_logits = rs.standard_normal((1, E), dtype=cp.float32)
    q = rs.standard_normal((1, H, Dh), dtype=cp.float32)
    k, v = (rs.standard_normal((context, G, Dh), dtype=cp.float32) for _ in range(2))
    q_pos, k_pos = cp.full(1, context - 1, cp.int64), cp.arange(context, dtype=cp.int64)
    swiglu = (c.swiglu_limit, c.swiglu_alpha)

    def normed(weight):  # the GEMVs that read a norm's rows normalize x as decode runs them
        return ops.rmsnorm(x, weight, c.rms_norm_eps)

    def routed():  # decode's gate_up GEMV ranks the router's logits for its pairs' experts (backend_cuda.Routed)
        return ops.pair_plan(ops.route(router_logits, A)[0], E)

    def by_layer(call):
        """call(i, layer) -> one op on layer i's weights; each call of the result takes the next layer."""
        turn = itertools.count()

        def next_layer():
            i = next(turn) % len(layers)
            return call(i, layers[i])
        return next_layer

    return {
        "mxfp4_gate_up": (by_layer(lambda i, layer: ops.mxfp4_experts(
            x, A, layer.moe.gate_up_blocks, layer.moe.gate_up_scales, layer.moe.gate_up_bias, plans[i],
            swiglu=swiglu)), A * expert_bytes(2 * I, D)),
        "mxfp4_gate_up_routed": (by_layer(lambda i, layer: ops.mxfp4_experts(
            x, A, layer.moe.gate_up_blocks, layer.moe.gate_up_scales, layer.moe.gate_up_bias, routed(),
            swiglu=swiglu)), A * expert_bytes(2 * I, D)),
        "mxfp4_down": (by_layer(lambda i, layer: ops.mxfp4_experts(
            h, 1, layer.moe.down_blocks, layer.moe.down_scales, layer.moe.down_bias, plans[i])),
            A * expert_bytes(D, I)),
        "bf16_qkv": (by_layer(lambda i, layer: ops.linear(normed(layer.attn_norm), layer.attn.qkv,
                                                           layer.attn.qkv_bias)), 2 * (H + 2 * G) * Dh * D),
        "bf16_o": (by_layer(lambda i, layer: ops.linear(q.reshape(1, H * Dh), layer.attn.o, layer.attn.o_bias,
                                                         residual=x)), 2 * D * H * Dh),
        "bf16_router": (by_layer(lambda i, layer: ops.linear(normed(layer.mlp_norm), layer.moe.router,
                                                              layer.moe.router_bias)), 2 * E * D),
        "bf16_lm_head": (lambda: ops.linear(normed(model.norm), model.lm_head), 2 * c.vocab_size * D),
        f"attention_{context}": (lambda: ops.attention(q, k, v, q_pos, k_pos, layers[0].attn.sinks, None, Dh ** -0.5),
                                 2 * 4 * context * G * Dh),
    }


def kernel_bandwidth(cases: dict, copy_gb_s: float) -> dict:
    """Each case of kernel_cases replayed KERNEL_LAUNCHES times: microseconds a call and GB/s of the
    bytes it must read, against the copy bandwidth."""
    result = {}
    for name, (fn, nbytes) in cases.items():
        seconds, how = replayed_seconds(fn, KERNEL_LAUNCHES)
        result[name] = {"us": round(seconds * 1e6, 2), "gb_s": round(nbytes / seconds / 1e9, 1),
                        "pct_of_copy": round(100 * nbytes / seconds / 1e9 / copy_gb_s, 1), "timed": how}
    return result


# Launch constants of the decode GEMVs tried against the defaults in the same run, so that one GPU
# session settles them: name -> (kernel module, its kernel recompiled, constants, the cases timed).
# Constants derived from others at import are set with them (bf16's _WORDS = WARP_ROWS * UNROLL sizes
# the words array: left at 8, lm_head's 4 rows a warp would write past it with UNROLL 4).
KERNEL_VARIANTS = {
    "bf16_unroll1": ("bf16_cuda", "_gemv_kernel", {"UNROLL": 1, "_WORDS": 4}, "bf16_"),
    "bf16_unroll4": ("bf16_cuda", "_gemv_kernel", {"UNROLL": 4, "_WORDS": 16}, "bf16_"),
    "bf16_chunk1024": ("bf16_cuda", "_gemv_kernel", {"K_CHUNK": 1024}, "bf16_"),
    "bf16_no_split": ("bf16_cuda", "_gemv_kernel", {"SPLIT_BELOW_N": 0}, "bf16_router"),
    "mxfp4_warps4": ("mxfp4_cuda", "_gemv_kernel", {"GEMV_WARPS": 4}, "mxfp4_"),
    "mxfp4_warps16": ("mxfp4_cuda", "_gemv_kernel", {"GEMV_WARPS": 16}, "mxfp4_"),
}


@contextlib.contextmanager
def kernel_variant(module_name: str, kernel: str, constants: dict):
    """Within: the module's launch constants set to `constants` and its kernel compiled afresh from
    its Python source (which reads them as globals), not cached on disk; both put back after."""
    from numba import cuda
    module = importlib.import_module(f"gptoss_np.kernels.{module_name}")
    saved = {name: getattr(module, name) for name in [kernel, *constants]}
    try:
        for name, value in constants.items():
            setattr(module, name, value)
        setattr(module, kernel, cuda.jit(saved[kernel].py_func))
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


def kernel_variants(cases: dict, copy_gb_s: float) -> dict:
    """kernel_bandwidth of each KERNEL_VARIANTS entry's cases (the defaults' figures are `kernels`)."""
    result = {}
    for name, (module, kernel, constants, prefix) in KERNEL_VARIANTS.items():
        chosen = {case: entry for case, entry in cases.items() if case.startswith(prefix)}
        try:
            with kernel_variant(module, kernel, constants):
                result[name] = {"constants": constants, **kernel_bandwidth(chosen, copy_gb_s)}
        except Exception as e:  # noqa: BLE001 (a variant that does not compile or launch says so)
            result[name] = {"constants": constants, "error": f"{type(e).__name__}: {e}"}
    return result


def decode_bytes(c: GptOssConfig, context: int) -> dict:
    """The fewest bytes one decode step reads at `context` tokens: each weight it uses once (MXFP4
    experts packed, dense weights bf16, biases, sinks and norms float32) and the cached keys and values;
    not the embedding's row and the final norm (6 D bytes)."""
    D, I, L, A = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_experts_per_tok
    H, G, Dh, E, V = c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.num_local_experts, c.vocab_size
    experts = L * A * (expert_bytes(2 * I, D) + expert_bytes(D, I))
    qkv, o = (H + 2 * G) * Dh, H * Dh
    attention = L * (2 * (qkv * D + D * o) + 4 * (qkv + D + H + 2 * D))  # biases, sinks, the layer's two norms
    router = L * (2 * E * D + 4 * E)
    kv = sum(2 * 4 * G * Dh * min(context, c.window(i) or context) for i in range(L))
    return {"experts": experts, "attention": attention, "router": router, "lm_head": 2 * V * D,
            "kv_cache": kv, "total": experts + attention + router + 2 * V * D + kv}


def filled_cache(model: GptOss, context: int, room: int, seed: int = 2) -> KVCache:
    """A KV cache holding `context` tokens of random keys and values, as a prefill would leave it."""
    rs = cp.random.RandomState(seed)
    cache = model.new_cache(context + room)
    G, Dh = model.config.num_key_value_heads, model.config.head_dim
    for i, window in enumerate(cache.windows):
        kept = context if window is None else min(context, window)
        positions = np.arange(context - kept, context)
        slots = cp.asarray(positions if window is None else positions % window)
        cache.keys[i][slots] = rs.standard_normal((kept, G, Dh), dtype=cp.float32)
        cache.values[i][slots] = rs.standard_normal((kept, G, Dh), dtype=cp.float32)
        cache.positions[i][slots] = cp.asarray(positions)
    cache.length = context
    return cache


def decode_steps(model: GptOss, decode, token: int, steps: int, rng=None, **sampling) -> int:
    """`steps` tokens through decode(token) -> logits [1, V], as generate() runs them: greedy, or drawn
    from `rng` with `sampling`'s temperature and filters."""
    for _ in range(steps):
        token = model.ops.sample(decode(token)[0], rng=rng, **sampling)
    return token


# Decode with a draw on the device, timed at the first context beside greedy decode: the command
# line's default (temperature 1, no filter), and with top-p (the draw sorts the vocabulary then).
SAMPLED = {"sampled": dict(temperature=1.0), "sampled_top_p": dict(temperature=1.0, top_p=0.9)}


PROFILE_STEPS = 3
DECODE_RUNS = 3  # runs of --decode steps at each context and path: tok/s is their median
PREFILL_RUNS = 3  # timed prefills of a length up to 2k tokens after the untimed one (longer: 1)


def prefill_seconds(model: GptOss, ids: np.ndarray) -> float:
    """Seconds of a prompt's prefill as generate() runs it (passes of generate.PREFILL_CHUNK tokens),
    into a cache made before the clock starts."""
    cache = model.new_cache(len(ids))
    return timed(lambda: generation._prefill(model, ids, cache))[1]


def profile_ops(model: GptOss, run, repeats: int) -> dict:
    """Where the time of `run()` goes, per run over `repeats` runs: ms in each op with the GPU
    synchronized around every call (slower than free-running: the shares are what count), of which
    host ms (until the op returned, before the wait: launch overhead where it is most of the op's
    time), and the op's calls."""
    ops, spent, host, calls = model.ops, defaultdict(float), defaultdict(float), defaultdict(int)

    def wrap(name, fn):
        def timed_op(*args, **kwargs):
            synchronize()
            start = time.perf_counter()
            result = fn(*args, **kwargs)
            returned = time.perf_counter()
            synchronize()
            spent[name] += time.perf_counter() - start
            host[name] += returned - start
            calls[name] += 1
            return result
        return timed_op

    for name in PROFILED_OPS:
        setattr(ops, name, wrap(name, getattr(ops, name)))
    try:
        _, total = timed(lambda: [run() for _ in range(repeats)])
    finally:
        for name in PROFILED_OPS:
            delattr(ops, name)
    names = sorted(spent, key=spent.get, reverse=True)
    return {"total_ms": round(total / repeats * 1e3, 3),
            "ops_ms": {name: round(spent[name] / repeats * 1e3, 3) for name in names},
            "host_ms": {name: round(host[name] / repeats * 1e3, 3) for name in names},
            "other_ms": round((total - sum(spent.values())) / repeats * 1e3, 3),
            "calls": {name: calls[name] // repeats for name in names}}


def prefill_paths(ops) -> dict:
    """The prefill paths worth comparing on this GPU: name -> (blas_from, products, fp16_experts) for
    prefill_path, blas_from None for the tiled kernel at any length."""
    default = (ops.products, ops.fp16_experts)
    paths = {"tiled": (None, *default), "blas": (1, *default)}  # experts by the tiled kernel, by cuBLAS
    if ops.fp16_experts:
        paths["blas_bf16x3"] = (1, ops.products, False)  # the experts' three bf16 products, not two fp16 ones
    if ops.products == "bf16x3":
        paths["blas_tf32x2"] = (1, "tf32x2", False)  # two TF32 products instead (all of cuBLAS's)
    return paths


@contextlib.contextmanager
def prefill_path(ops, blas_from: int, products: str, fp16_experts: bool):
    """Within: the CUDA backend multiplies the MoE experts of prompts from `blas_from` tokens by
    cuBLAS (backend_cuda.EXPERT_BLAS_MIN_TOKENS), below by the tiled kernel, its cuBLAS products are
    `products` (backend_cuda.PRODUCTS), the experts' fp16x2 where `fp16_experts`; all restored after."""
    backend_cuda = importlib.import_module("gptoss_np.backend_cuda")
    before = backend_cuda.EXPERT_BLAS_MIN_TOKENS, ops.products, ops.fp16_experts
    backend_cuda.EXPERT_BLAS_MIN_TOKENS, ops.products, ops.fp16_experts = blas_from, products, fp16_experts
    try:
        yield
    finally:
        backend_cuda.EXPERT_BLAS_MIN_TOKENS, ops.products, ops.fp16_experts = before


def transformers_decode(config: dict, prompt: np.ndarray, steps: int, device: str = "cuda") -> dict:
    """transformers' GptOssForCausalLM in bf16 with random weights made on `device`: greedy decode
    tok/s through generate() (the median time of 1 + steps new tokens minus that of 1, 3 runs each),
    and how it ran its experts and attention."""
    import torch
    import transformers
    transformers.logging.set_verbosity_error()
    hf_config = transformers.AutoConfig.for_model(
        "gpt_oss", **{k: v for k, v in config.items() if k not in ("quantization_config", "model_type")})
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(hf_config, dtype=torch.bfloat16,
                                                               attn_implementation="eager").eval()
    ids = torch.tensor(prompt, device=device)[None]

    def run(new):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    run(2)  # warm-up
    first, whole = (float(np.median([run(new) for _ in range(3)])) for new in (1, 1 + steps))
    result = {"version": transformers.__version__, "decode_tok_s": round(steps / (whole - first), 2),
              "experts": getattr(model.config, "_experts_implementation", None),
              "attention": model.config._attn_implementation, "dtype": "bfloat16"}
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def test_results(path: str, exit_code: int | None = None) -> dict:
    """passed / failed / skipped counts and the recorded rel_err properties of a junit XML, and pytest's
    exit code (124: gpu_check.sh's time limit stopped it; the test it stopped, a nameless testcase in
    the XML, counts as cut_off)."""
    root = ET.parse(path).getroot()
    counts = dict(passed=0, failed=0, skipped=0, cut_off=0)
    errors = {}
    for case in root.iter("testcase"):
        outcome = "failed" if case.find("failure") is not None or case.find("error") is not None else (
            "skipped" if case.find("skipped") is not None else "cut_off" if case.get("name") is None else "passed")
        counts[outcome] += 1
        for prop in case.iter("property"):
            errors[f"{case.get('name')}:{prop.get('name')}"] = float(prop.get("value"))
    return {**counts, "rel_errors": errors, "pytest_exit": exit_code}


@contextlib.contextmanager
def section(report: dict, name: str, save):
    """Measure one part: if it fails, its error (the last line, and the traceback on stderr) goes
    into report[name]["error"] and the run goes on with the next part; the JSON is saved either way."""
    try:
        yield
    except Exception as e:
        traceback.print_exc()
        entry = report.get(name)
        report[name] = {**(entry if isinstance(entry, dict) else {}), "error": f"{type(e).__name__}: {e}"}
    save()


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ints = lambda s: [int(v) for v in s.split(",") if v]  # noqa: E731
    parser.add_argument("--json", required=True)
    parser.add_argument("--tests", help="junit XML of tests/test_gpu.py to fold into the JSON")
    parser.add_argument("--tests-exit", type=int, help="pytest's exit code in that run (124: cut off)")
    parser.add_argument("--preset", default="gpt-oss-20b", choices=sorted(synthetic.PRESETS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config.json field (VALUE as JSON), e.g. num_hidden_layers=4")
    parser.add_argument("--contexts", type=ints, default=[128, 4096, 32768], help="decode contexts")
    parser.add_argument("--prompts", type=ints, default=[128, 2048, 8192], help="prefill lengths")
    parser.add_argument("--decode", type=int, default=32, help="decode steps timed at each context")
    parser.add_argument("--prefill-budget", type=float, default=60, metavar="SECONDS",
                        help="skip the other paths (not the backend's own) at prompt lengths whose predicted prefill "
                             "time would exceed this in total")
    parser.add_argument("--transformers", action="store_true", help="also time transformers (bf16)")
    parser.add_argument("--profile", action="store_true", help="time each op of a decode step")
    parser.add_argument("--variants", action="store_true",
                        help="also time the decode GEMVs with other launch constants (KERNEL_VARIANTS)")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    config_dict = synthetic.config_dict(args.preset, **overrides)
    config = GptOssConfig.from_dict(config_dict)
    report = {"device": None, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "commit": commit(), "preset": args.preset, "overrides": overrides, "layers": config.num_hidden_layers}

    def save():  # whole or not at all, should the time limit stop the run mid-write
        partial = f"{args.json}.partial"
        with open(partial, "w") as f:
            json.dump(report, f, indent=2)
        os.replace(partial, args.json)

    if args.tests:
        with section(report, "gpu_tests", save):
            report["gpu_tests"] = test_results(args.tests, args.tests_exit)
    ops = select("cuda")
    report["device"], report["products"], report["fp16_experts"] = ops.device_name, ops.products, ops.fp16_experts
    report["copy_gb_s"] = round(copy_bandwidth(), 1)
    with section(report, "launch", save):
        report["launch"] = launch_overhead()

    pool = cp.get_default_memory_pool()
    pool.free_all_blocks()
    model, load_s = timed(lambda: GptOss(DeviceCheckpoint(config), ops, progress=False))
    pool.free_all_blocks()
    weights = pool.used_bytes()
    context_kv = max(args.contexts + args.prompts)
    cache = model.new_cache(context_kv)
    report.update(load_s=round(load_s, 2), weights_gb=round(weights / 1e9, 3),
                  kv_context=context_kv, kv_cache_gb=round((pool.used_bytes() - weights) / 1e9, 3))
    del cache
    pool.free_all_blocks()  # (the pool would keep the cache's memory, which the driver counts)
    report["gpu_used_gb"] = {"weights_loaded": gpu_used_gb()}
    save()

    cases = {}
    with section(report, "kernels", save):
        cases = kernel_cases(model, context=max(args.contexts))
        report["kernels"] = kernel_bandwidth(cases, report["copy_gb_s"])
    ids = np.random.default_rng(0).integers(0, config.vocab_size, max(args.prompts + [8]))
    with section(report, "warm_up", save):  # compile every kernel (prefill and decode paths)
        model.forward(ids[:8], model.new_cache(64))
        model.forward(ids[:1], model.new_cache(64))
    report["decode"] = {}
    token = int(ids[0])
    for context in args.contexts:
        need = decode_bytes(config, context)
        floor_s = need["total"] / (report["copy_gb_s"] * 1e9)
        row = report["decode"][context] = {"bytes_per_token": need, "floor_ms": round(floor_s * 1e3, 3)}
        paths = ["generate", "eager"] + (list(SAMPLED) if context == args.contexts[0] else [])
        for path in paths:  # generate()'s decoder (CUDA graphs), op by op, and graphs with a draw
            with section(row, path, save):
                cache = filled_cache(model, context, room=DECODE_RUNS * args.decode + PROFILE_STEPS + 4)
                decode = eager_decoder(model, cache) if path == "eager" else ops.decoder(model, cache)
                rng, sampling = np.random.default_rng(0), SAMPLED.get(path, {})
                decode_steps(model, decode, token, 1 if path == "eager" else 2, rng, **sampling)  # (the capture)
                runs = [timed(lambda: decode_steps(model, decode, token, args.decode, rng, **sampling))[1]
                        for _ in range(DECODE_RUNS)]
                seconds = float(np.median(runs))
                prefix = {"generate": "", "eager": "eager_"}.get(path, path + "_")
                row.update({prefix + "tok_s": round(args.decode / seconds, 2),
                            prefix + "tok_s_runs": [round(args.decode / s, 2) for s in runs],
                            prefix + "ms_per_token": round(seconds / args.decode * 1e3, 3),
                            prefix + "pct_of_floor": round(100 * floor_s / (seconds / args.decode), 1)})
                if path == "generate":
                    row["graph_replayed"] = getattr(decode, "graph", None) is not None
                elif path == "eager" and args.profile and context == args.contexts[0]:
                    with section(report, "profile", save):  # one decode step, op by op
                        report["profile"] = {"step": "eager (shapes grow with the cache; not the graph's step)",
                                             **profile_ops(model, lambda: decode_steps(
                                                 model, eager_decoder(model, cache), token, 1), PROFILE_STEPS)}
                del cache, decode
    report["gpu_used_gb"]["decoded"] = gpu_used_gb()
    report["prefill"] = {}
    rule = importlib.import_module("gptoss_np.backend_cuda").EXPERT_BLAS_MIN_TOKENS
    paths = prefill_paths(ops)
    with section(report, "prefill_warm_up", save):  # (a path that fails here fails again in its own row)
        for products, fp16_experts in {path[1:] for path in paths.values()}:  # compile each cuBLAS experts' path
            with prefill_path(ops, 1, products, fp16_experts):
                model.forward(ids[:2], model.new_cache(2))
    spent, last = 0.0, None  # prefill seconds so far; (tokens, seconds of one prefill by each path) of the last length
    for n in sorted(args.prompts):
        row = report["prefill"][n] = {"experts_by": "blas" if n >= rule else "tiled"}
        timed_runs = PREFILL_RUNS if n <= 2048 else 1
        # attention grows with the square of the length; each path runs once untimed, then timed_runs times
        predicted = (1 + timed_runs) * last[1] * (n / last[0]) ** 2 if last else 0.0
        over = spent + predicted > args.prefill_budget
        # the path the backend takes at n always, first; the others within the budget
        for path in sorted(paths, key=lambda name: name != row["experts_by"]):
            if over and path != row["experts_by"]:
                row[path] = {"skipped": f"predicted {predicted:.0f} s for the lengths' paths, over --prefill-budget"}
                continue
            with section(row, path, save):
                blas_from, products, fp16_experts = paths[path]
                with prefill_path(ops, blas_from or n + 1, products, fp16_experts):
                    pool.free_all_blocks()
                    untimed = prefill_seconds(model, ids[:n])  # new memory, cuBLAS's kernels for these shapes
                    if path == row["experts_by"]:  # the engine's own peak at n: the pool keeps its high-water
                        row["gpu_used_gb"] = gpu_used_gb()
                    runs = [prefill_seconds(model, ids[:n]) for _ in range(timed_runs)]
                spent += untimed + sum(runs)
                seconds = float(np.median(runs))
                row[path + "_tok_s"] = round(n / seconds, 1)
                if path == row["experts_by"]:
                    row.update(tok_s=round(n / seconds, 1), ms=round(seconds * 1e3, 2),
                               tok_s_runs=[round(n / s, 1) for s in runs])
        if all(path + "_tok_s" in row for path in paths):
            last = (n, sum(n / row[path + "_tok_s"] for path in paths))

    measured = [n for n, row in report["prefill"].items() if "tok_s" in row]
    if args.profile and measured:
        n = min(measured, key=lambda m: abs(m - 2048))  # the prompt length nearest the 2k
        with section(report, "prefill_profile", save):
            report["prefill_profile"] = {"tokens": n, **profile_ops(
                model, lambda: model.forward(ids[:n], model.new_cache(n)), 1)}
    report["peak_gpu_gb"] = max([*report["gpu_used_gb"].values(),
                                 *(row["gpu_used_gb"] for row in report["prefill"].values() if "gpu_used_gb" in row)])
    save()
    if args.transformers:  # before the variants, which compile kernels afresh: the issue asks for this one
        pool.free_all_blocks()  # (our weights stay: with transformers' 20b in bf16, 56 GB)
        with section(report, "transformers", save):  # the baseline must not cost us the measurements above
            report["transformers"] = transformers_decode(config_dict, ids[:args.contexts[0]], args.decode)
            ours = report["decode"][args.contexts[0]].get("tok_s")
            if ours:
                report["transformers"]["our_decode_ratio"] = round(ours / report["transformers"]["decode_tok_s"], 2)
    if args.variants:
        with section(report, "kernel_variants", save):
            report["kernel_variants"] = kernel_variants(cases, report["copy_gb_s"])
    report["targets"] = targets(report)
    save()
    print_table(report)
    return report


# The issues' targets by preset (issue 6: speed; issue 4: the 20b weights' GPU memory): the figure,
# and whether it is a floor or a ceiling.
TARGETS = {
    "gpt-oss-20b": {"decode_tok_s_up_to_1k": (400, "min"), "prefill_tok_s_at_2k": (20000, "min"),
                    "decode_vs_transformers": (10, "min"), "weights_gb": (14, "max")},
    "gpt-oss-120b": {"decode_tok_s_up_to_1k": (250, "min")},
}


def targets(report: dict) -> dict:
    """Each target of the report's preset: the target, what was measured (None if it was not), met."""
    def row(table: dict, key: int) -> dict:  # keys are ints while running, strings once read from JSON
        return table.get(key) or table.get(str(key)) or {}

    decode = [r.get("tok_s") for n, r in report.get("decode", {}).items() if int(n) <= 1024]
    measured = {
        "decode_tok_s_up_to_1k": min(decode) if decode and None not in decode else None,
        "prefill_tok_s_at_2k": row(report.get("prefill", {}), 2048).get("tok_s"),
        "decode_vs_transformers": report.get("transformers", {}).get("our_decode_ratio"),
        "weights_gb": report.get("weights_gb"),
    }
    result = {}
    for name, (goal, kind) in TARGETS.get(report["preset"], {}).items():
        value = measured[name]
        met = None if value is None else (value >= goal if kind == "min" else value <= goal)
        result[name] = {"target": goal, "kind": kind, "measured": value, "met": met}
    return result


def print_table(report: dict) -> None:
    print(f"\n{report['device']}, {report['preset']} ({report['layers']} layers), commit {report['commit']}")
    print(f"launch overhead (host us): {report['launch']}")
    print(f"copy {report['copy_gb_s']} GB/s; weights {report['weights_gb']} GB, KV cache "
          f"{report['kv_cache_gb']} GB at {report['kv_context']} tokens, peak {report['peak_gpu_gb']} GB in use "
          f"{report['gpu_used_gb']}")
    print(f"{'prefill tokens':>15}{'tok/s':>12}{'tiled tok/s':>13}{'blas tok/s':>12}{'blas bf16x3 tok/s':>19}"
          f"{'blas tf32x2 tok/s':>19}")
    for n, r in report["prefill"].items():
        print(f"{n:>15}{r.get('tok_s', '-'):>12}{r.get('tiled_tok_s', '-'):>13}{r.get('blas_tok_s', '-'):>12}"
              f"{r.get('blas_bf16x3_tok_s', '-'):>19}{r.get('blas_tf32x2_tok_s', '-'):>19}")
        print_errors(r, ("tiled", "blas", "blas_bf16x3", "blas_tf32x2"))
    print(f"{'decode context':>15}{'tok/s':>12}{'ms/token':>10}{'floor ms':>10}{'% floor':>9}{'graph':>7}"
          f"{'eager tok/s':>13}{'sampled':>9}{'top-p':>8}")
    for n, r in report["decode"].items():
        print(f"{n:>15}{r.get('tok_s', '-'):>12}{r.get('ms_per_token', '-'):>10}{r['floor_ms']:>10}"
              f"{r.get('pct_of_floor', '-'):>9}{str(r.get('graph_replayed', '-')):>7}{r.get('eager_tok_s', '-'):>13}"
              f"{r.get('sampled_tok_s', '-'):>9}{r.get('sampled_top_p_tok_s', '-'):>8}")
        print_errors(r, ("generate", "eager", *SAMPLED))
    print_errors(report, ("launch", "kernels", "warm_up", "prefill_warm_up", "profile", "prefill_profile", "transformers"))
    if "kernels" in report and "error" not in report["kernels"]:
        print(f"{'kernel':>22}{'us':>10}{'GB/s':>9}{'% copy':>8}  timed")
        for name, r in report["kernels"].items():
            print(f"{name:>22}{r['us']:>10}{r['gb_s']:>9}{r['pct_of_copy']:>8}  {r['timed']}")
        for variant, cases in report.get("kernel_variants", {}).items():
            if variant == "error" or "error" in cases:
                print(f"  variant {variant} failed: {cases if variant == 'error' else cases['error']}")
                continue
            for name, r in cases.items():
                if name != "constants":
                    print(f"{name:>22}{r['us']:>10}{r['gb_s']:>9}{r['pct_of_copy']:>8}  {variant} {cases['constants']}")
    for key, what in (("profile", "decode step"), ("prefill_profile", "prefill")):
        p = report.get(key, {})
        if "ops_ms" in p:
            tokens = f" of {p['tokens']} tokens" if "tokens" in p else ""
            print(f"{what}{tokens}, ops synchronized: {p['total_ms']} ms; per op (ms, of which host ms, calls):")
            for name, ms in p["ops_ms"].items():
                print(f"  {name:<16}{ms:>9}{p['host_ms'][name]:>9}{p['calls'][name]:>6}")
            print(f"  {'(outside ops)':<16}{p['other_ms']:>9}")
    if "transformers" in report:
        print(f"transformers: {report['transformers']}")
    for name, t in report.get("targets", {}).items():
        verdict = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        print(f"target {name}: {'>=' if t['kind'] == 'min' else '<='} {t['target']}, measured {t['measured']}: {verdict}")
    if "gpu_tests" in report:
        print_gpu_tests(report["gpu_tests"])


def print_gpu_tests(t: dict) -> None:
    """The gpu tests' counts and relative errors (test_results), or why their XML could not be read."""
    if "error" in t:
        print(f"gpu tests: their JUnit XML could not be read: {t['error']}")
        return
    cut = f", cut off by the time limit ({t['cut_off']} test stopped)" if t.get("pytest_exit") == 124 else ""
    print(f"gpu tests: {t['passed']} passed, {t['failed']} failed, {t['skipped']} skipped{cut}")
    for name, err in t["rel_errors"].items():
        print(f"  {name:<60} {err:.2e}")


def print_errors(report: dict, names) -> None:
    """The errors that `section` recorded under these names, a line each."""
    for name in names:
        if isinstance(report.get(name), dict) and "error" in report[name]:
            print(f"  {name} failed: {report[name]['error']}")


if __name__ == "__main__":
    main()
