"""The CUDA backend: CuPy arrays on one NVIDIA GPU, Numba CUDA kernels (kernels/*_cuda.py).

Imported only by backend.select when a GPU is usable, so the CPU path never needs CuPy or numba-cuda.
Weights live on the GPU as on disk: MXFP4 experts packed (uint8 blocks + e8m0 scales), dense weights
as bf16 bits (uint16); norms, biases and sinks as float32. Activations are float32.
Kernel choices by size live here and nowhere else:
  bf16 linear    GEMV kernel up to bf16_cuda.MAX_ROWS tokens (rows of a multiple of 4 weights, as all
                 of gpt-oss's are); above, cuBLAS products (below), for bf16x3 then one kernel that
                 sums the three and adds the bias and the residual (up to TILE_ROWS output rows; wider
                 matrices, lm_head, by tiles of rows, summed by CuPy)
  MoE experts    EXPERT_GEMV_MAX_TOKENS tokens or fewer: the pairs' GEMV; more: sort pairs by expert,
                 then one tiled matmul launch over all experts; from EXPERT_BLAS_MIN_TOKENS tokens:
                 the pairs' rows gathered in expert order once, the chosen experts' matrices
                 dequantized in one launch (to fp16, bf16 or float32, as the products take them, up
                 to DEQUANT_BYTES at a time), then one cuBLAS product an expert into its rows' block
                 (bench/gpu.py times both prefill paths)
  cuBLAS         `products`, each with float32's accuracy for this model's weights:
                   bf16x3   bf16 weights, x in three bf16 parts (bf16x3.py), cuBLAS gemmEx; the default
                            on GPUs with bf16 tensor cores (compute capability 8.0 on)
                   tf32x2   float32 weights (widened, dequantized), x in two TF32 halves (tf32.py)
                   float32  float32 weights and products (SGEMM), below compute capability 8.0
                 and for the MXFP4 experts, where `fp16_experts` (on with bf16x3): fp16x2, both
                 operands scaled by powers of two, x in two fp16 parts (fp16x2.py), two products
                 where bf16x3 takes three
  rmsnorm        of a few rows (decode; up to bf16_cuda.MAX_ROWS): deferred (Normed), done by the bf16
                 GEMV that reads it first as it stages x, which also writes the normalized rows for the
                 other readers (the MoE norm feeds the router and the experts): no launch of its own
  route          of EXPERT_GEMV_MAX_TOKENS tokens or fewer (decode): deferred (Routed), done by the
                 experts' gate_up GEMV, each pair's blocks ranking its token's logits: no launch of its own
  sampling       argmax or the filtered draw on the device; only the chosen id and the largest logit
                 (checked to be finite) are copied back
  decode         replayed from a CUDA graph (cuda_graph.py) unless `graphs` is off
"""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import cupy as cp
import numpy as np

from . import moe as moe_layer
from . import bf16x3, sampling, tf32
from .backend import eager_decoder, with_residual
from .cuda_graph import GraphDecoder
from .kernels import (attention_cuda, bf16, bf16_cuda, bf16x3_cuda, fp16x2_cuda, kv_cache_cuda, moe_cuda, mxfp4_cuda,
                      norm_rope_cuda, sampling_cuda)
from .kernels.common_cuda import address, check

EXPERT_GEMV_MAX_TOKENS = 1  # decode; prefill chunks take the grouped matmul
EXPERT_BLAS_MIN_TOKENS = 256  # a guess until a GPU measures it: ~32 pairs per expert of 20b's 32
TILE_ROWS = 16384  # rows of a bf16 matrix per cuBLAS product (widened to float32: 189 MB at K = 2880)
PRODUCTS = ("bf16x3", "tf32x2", "float32")
DEQUANT_BYTES = 1 << 30  # dequantized experts held at once for cuBLAS (20b's gate_up: 32 experts in bf16)
# cuBLAS's cudaDataType values (CUDA's library_types.h): CuPy 13's runtime module has no CUDA_R_16BF
CUDA_R_32F, CUDA_R_16F, CUDA_R_16BF = 0, 2, 14


class Normed:
    """rmsnorm(x, weight, eps) of x [T, D], T <= bf16_cuda.MAX_ROWS, not yet computed: the bf16 GEMV
    that reads it first (CudaOps.linear) normalizes x as it stages it and writes `rows`; readers
    that cannot take it so get `rows` from the rmsnorm kernel."""

    def __init__(self, x, weight, eps):
        self.x, self.weight, self.eps = x, weight, eps
        self.rows = None  # [T, D] once a kernel has written them

    @property
    def shape(self):
        return self.x.shape

    def computed(self):
        """The normalized rows [T, D], from the rmsnorm kernel unless a GEMV wrote them."""
        if self.rows is None:
            self.rows = norm_rope_cuda.rmsnorm(self.x, self.weight, self.eps, cp.empty_like(self.x))
        return self.rows


class Routed:
    """The top-k routing of router logits [T, E], T <= EXPERT_GEMV_MAX_TOKENS, not yet computed: the
    first expert GEMV that reads it (the gate_up projection, CudaOps.mxfp4_experts) picks each pair's
    expert from the logits and writes `experts` [T, k] and `weights` [T, k]; readers before it get
    them from the route kernel (computed)."""

    def __init__(self, logits, k: int):
        T = logits.shape[0]
        self.logits = logits
        self.experts = cp.empty((T, k), cp.int32)
        self.weights = cp.empty((T, k), cp.float32)
        self.written = False  # by a kernel launched already

    @property
    def shape(self):
        return self.experts.shape

    def computed(self):
        """The experts [T, k], from the route kernel unless a GEMV wrote them."""
        if not self.written:
            moe_cuda.route(self.logits, self.experts, self.weights)
            self.written = True
        return self.experts


class PairPlan(NamedTuple):
    """How the experts' matrices reach a layer's (token, slot) pairs (CudaOps.pair_plan)."""
    experts: object  # [P] int32: each pair's expert
    order: object  # [P] int32: the pairs sorted by expert (grouped matmul), or None (GEMV)
    offsets: object  # [E + 1] int32: expert e owns order[offsets[e]:offsets[e + 1]], or None
    tokens: int  # T
    starts: np.ndarray | None  # offsets on the host, for the cuBLAS path (long prompts), else None
    routed: Routed | None  # a routing the plan's first GEMV computes (decode), else None


def _f32(a):
    if isinstance(a, Normed):
        return a.computed()
    return cp.ascontiguousarray(a, dtype=cp.float32)


def _f32_or_none(a):
    """_f32(a), or None for None (an optional residual)."""
    return None if a is None else _f32(a)


def _joined(parts):
    """Host or device arrays joined along their first axis, on the device."""
    return cp.asarray(parts[0]) if len(parts) == 1 else cp.concatenate([cp.asarray(p) for p in parts])


class CudaOps:
    """CuPy arrays on the current CUDA device; the same methods as CpuOps (see backend.py)."""

    name = "cuda"
    xp = cp
    reason = None  # as CpuOps.reason: the GPU was used

    def __init__(self, graphs: bool = True):
        self.graphs = graphs  # decode from CUDA graphs (turned off if a capture fails)
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        name = props["name"]
        self.device_name = name.decode() if isinstance(name, bytes) else str(name)
        self.products = "bf16x3" if props["major"] >= 8 else "float32"  # cuBLAS's products (PRODUCTS)
        self.fp16_experts = props["major"] >= 8  # the MXFP4 experts' cuBLAS products: fp16x2, not `products`
        self._zeros = {}  # n -> a float32 zero vector [n]: the bias of weights without one (lm_head)

    # -- weights (from host arrays, e.g. memory-mapped safetensors, or arrays already on the GPU)
    def matrix(self, *parts):
        """A dense weight matrix, or several stacked by rows: bf16 bits (uint16) as they are, others
        as float32. Parts on the host are copied one at a time."""
        a = _joined(parts)
        return cp.ascontiguousarray(a) if a.dtype == np.uint16 else _f32(a)

    def vector(self, *parts):
        """A small tensor (norm weight, bias, sinks), or several joined, as float32."""
        a = _joined(parts)
        return bf16.bf16_to_f32(a) if a.dtype == cp.uint16 else _f32(a)

    def packed(self, a):
        """MXFP4 blocks or scales (uint8), as on disk."""
        return cp.ascontiguousarray(cp.asarray(a))

    def to_numpy(self, a) -> np.ndarray:
        return cp.asnumpy(a.computed() if isinstance(a, Routed) else a)

    def room_shortage(self, nbytes: int) -> str | None:
        """What is needed and what is free when `nbytes` of weights do not fit in the GPU's free memory
        (with the blocks CuPy's memory pool holds unused); None when they do."""
        free, total = cp.cuda.runtime.memGetInfo()
        free += cp.get_default_memory_pool().free_bytes()
        if nbytes <= free:
            return None
        return (f"the checkpoint's weights need {nbytes / 1e9:.2f} GB of GPU memory; {self.device_name} has "
                f"{free / 1e9:.2f} GB free of {total / 1e9:.2f} GB")

    def check_room(self, nbytes: int) -> None:
        """MemoryError saying what is needed and what is free, unless `nbytes` of weights fit."""
        shortage = self.room_shortage(nbytes)
        if shortage:
            raise MemoryError(shortage)

    @staticmethod
    def unsupported(config) -> str | None:
        """What of `config` (GptOssConfig) the kernels cannot run, as room_shortage says what does not fit; None
        when they run it, as they run every gpt-oss model."""
        c, a = config, attention_cuda
        H, G, Dh = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        problems = []
        if not a.fits(H, G, Dh):
            smallest = math.lcm(a.OUT_DIMS, a.DIM_STEP)
            problems.append(f"{H // G} query heads a key/value head with head_dim {Dh} (the attention kernel takes up "
                            f"to {a.ROWS} query heads a key/value head, and head dims from {smallest} to {a.MAX_DH} "
                            f"that divide {a.THREADS})")
        if c.num_experts_per_tok > moe_cuda.MAX_K or c.num_local_experts > moe_cuda.MAX_EXPERTS:
            problems.append(f"{c.num_experts_per_tok} of {c.num_local_experts} experts a token (the routing kernels "
                            f"take up to {moe_cuda.MAX_K} of {moe_cuda.MAX_EXPERTS})")
        if max(c.hidden_size, c.intermediate_size) > mxfp4_cuda.GEMV_MAX_K:
            problems.append(f"hidden_size {c.hidden_size} and intermediate_size {c.intermediate_size} (the experts' "
                            f"GEMV takes rows of up to {mxfp4_cuda.GEMV_MAX_K} weights)")
        return f"the CUDA kernels cannot run this model: {'; '.join(problems)}" if problems else None

    # -- ops
    def embed(self, table, ids):
        ids = cp.asarray(ids, dtype=cp.int64)
        if table.dtype != cp.uint16:
            return _f32(table[ids])
        return bf16_cuda.widen_rows(table, ids, cp.empty((ids.shape[0], table.shape[1]), cp.float32))

    def linear(self, x, w, b=None, residual=None):
        """(residual +) x [T, K] @ w.T (+ b) for w [N, K] -> [T, N] float32; the GEMV adds the
        residual as it writes its outputs, and normalizes x if it is a Normed not yet computed."""
        T, N = x.shape[0], w.shape[0]
        if w.dtype == cp.uint16 and T <= bf16_cuda.MAX_ROWS and w.shape[1] % 4 == 0:
            bias = self._bias(b, N)
            out, residual = cp.empty((T, N), cp.float32), _f32_or_none(residual)
            if isinstance(x, Normed) and x.rows is None:
                x.rows = cp.empty_like(x.x)
                return bf16_cuda.gemv(x.x, w, bias, out, residual=residual, norm=(x.weight, x.eps, x.rows))
            return bf16_cuda.gemv(_f32(x), w, bias, out, residual=residual)
        x = _f32(x)
        if w.dtype == cp.uint16 and self.products == "bf16x3" and N <= TILE_ROWS:
            return self._bf16x3_linear(x, w, b, residual)
        y = self._product_rows(x, w)
        if b is not None:
            y += b
        return with_residual(y, residual)

    def _bias(self, b, n):
        """b, or zeros [n] for weights without a bias, made once: not a memset in every decode step."""
        if b is None:
            if n not in self._zeros:
                self._zeros[n] = cp.zeros(n, cp.float32)
            b = self._zeros[n]
        return b

    def _bf16x3_linear(self, x, w, b, residual):
        """(residual +) x [T, K] @ w.T (+ b) for w [N, K] bf16 bits: the three bf16 products in one
        cuBLAS call, then their sum, the bias and the residual in one pass (bf16x3_cuda.sum_rows)."""
        T, N = x.shape[0], w.shape[0]
        rows = cp.arange(T, dtype=cp.int32)  # the split's rows of x, then the sum's rows of the output
        parts = self._parts(x, rows)  # [3T, K]
        y = self._product(parts, w, cp.empty((parts.shape[0], N), cp.float32))  # [3T, N]
        bias = self._bias(b, N).reshape(1, N)
        return bf16x3_cuda.sum_rows(y, rows, cp.zeros(T, cp.int32), bias, cp.empty((T, N), cp.float32),
                                    residual=_f32_or_none(residual))

    def _product_rows(self, x, w):
        """x [T, K] f32 @ w.T for w [N, K] float32 (CuPy's matmul) or bf16 bits (cuBLAS products,
        TILE_ROWS rows of w at a time) -> [T, N] float32."""
        T, N = x.shape[0], w.shape[0]
        if w.dtype != cp.uint16:
            return x @ w.T
        y = cp.empty((T, N), cp.float32)
        widen = self.products != "bf16x3"  # the others take float32 weights
        tile = cp.empty((min(TILE_ROWS, N), w.shape[1]), cp.float32) if widen else None
        for r in range(0, N, TILE_ROWS):
            rows = min(TILE_ROWS, N - r)
            w_rows = (bf16_cuda.widen_rows(w, cp.arange(r, r + rows, dtype=cp.int64), tile[:rows]) if widen
                      else w[r:r + rows])
            y[:, r:r + rows] = self.matmul_t(x, w_rows)
        return y

    def rmsnorm(self, x, w, eps):
        x = _f32(x)
        if x.shape[0] <= bf16_cuda.MAX_ROWS:
            return Normed(x, w, eps)  # done by the GEMV that reads it (no launch of its own)
        return norm_rope_cuda.rmsnorm(x, w, eps, cp.empty_like(x))

    def rope_tables(self, inv_freq, scale, positions):
        T, half = len(positions), inv_freq.shape[0]
        cos, sin = cp.empty((T, half), cp.float32), cp.empty((T, half), cp.float32)
        return norm_rope_cuda.rope_tables(inv_freq, scale, cp.asarray(positions, dtype=cp.int64), cos, sin)

    def rope(self, x, cos, sin):
        x = _f32(x)
        return norm_rope_cuda.rope(x, cos, sin, cp.empty_like(x))

    def attention(self, q, k, v, q_pos, k_pos, sinks, window, scale):
        q = _f32(q)
        return attention_cuda.attention(q, _f32(k), _f32(v), cp.asarray(q_pos, dtype=cp.int64),
                                        cp.asarray(k_pos, dtype=cp.int64), sinks, window, scale, cp.empty_like(q))

    def cache_write_one(self, k, v, positions, keys, values, stored):
        return kv_cache_cuda.write_one(_f32(k), _f32(v), positions, keys, values, stored)

    def route(self, logits, k):
        """(experts, weights) [T, k]; for one token (decode) experts is a Routed, filled with its
        weights by the gate_up GEMV (no launch of its own)."""
        T = logits.shape[0]
        if T <= EXPERT_GEMV_MAX_TOKENS:
            routed = Routed(_f32(logits), k)
            return routed, routed.weights
        return moe_cuda.route(_f32(logits), cp.empty((T, k), cp.int32), cp.empty((T, k), cp.float32))

    def swiglu(self, gate_up, limit, alpha):
        P, two_i = gate_up.shape
        return moe_cuda.swiglu(_f32(gate_up), limit, alpha, cp.empty((P, two_i // 2), cp.float32))

    def experts(self, w, x, experts, weights, limit, alpha, residual=None):
        """(residual +) the routed experts' weighted sum [T, D]: all (token, slot) pairs at once
        (moe.py); the combine adds the residual."""
        return moe_layer.by_pairs(self, w, x, experts, weights, limit, alpha, residual)

    def dispatched_experts(self, w, x, d, limit, alpha, residual=None):
        """(residual +) the experts' weighted sum [T, D] for the pairs of a dispatch.Dispatch (decided on the host).
        Pair rows are laid out as exact routing's (token, slot) rows, so the grouped matmul and
        `combine` serve unchanged; rows of slots a token did not fill stay zero, with weight 0."""
        T = x.shape[0]
        rows, weights = d.as_slots(T)  # [P], [T, k]
        k = weights.shape[1]
        order = cp.asarray(rows, dtype=cp.int32)
        offsets = cp.asarray(d.starts, dtype=cp.int32)
        most = max(1, int(d.tokens_per_expert.max(initial=0)))
        h = cp.zeros((T * k, w.gate_up_blocks.shape[1]), cp.float32)
        mxfp4_cuda.expert_matmul(_f32(x), k, order, offsets, most, w.gate_up_blocks, w.gate_up_scales,
                                 w.gate_up_bias, h)  # [T*k, 2I]
        h = self.swiglu(h, limit, alpha)  # [T*k, I]; zero rows stay zero
        y = cp.zeros((T * k, w.down_blocks.shape[1]), cp.float32)
        mxfp4_cuda.expert_matmul(h, 1, order, offsets, most, w.down_blocks, w.down_scales, w.down_bias, y)
        return self.combine(y, cp.asarray(weights), residual)  # [T, D]

    def pair_plan(self, experts, num_experts: int) -> PairPlan:
        """experts [T, A] (an array, or a Routed) -> the PairPlan: for the grouped matmul, the pairs
        sorted by expert; for the GEMV (one token: decode) no order, and a Routed not yet written is left to
        the plan's first GEMV. starts: the offsets on the host for the cuBLAS path (long prompts; one
        wait a layer, shared by its two projections)."""
        T = experts.shape[0]
        if isinstance(experts, Routed):  # (made for as few tokens as the GEMV takes)
            routed = None if experts.written else experts
            flat = experts.experts.reshape(-1)  # a view: what the GEMV writes lands in the Routed
        else:
            routed, flat = None, cp.ascontiguousarray(experts.ravel(), dtype=cp.int32)
        if T <= EXPERT_GEMV_MAX_TOKENS:
            return PairPlan(flat, None, None, T, None, routed)
        order, offsets = moe_cuda.sort_pairs(flat, cp.empty_like(flat), cp.empty(num_experts + 1, cp.int32))
        return PairPlan(flat, order, offsets, T, cp.asnumpy(offsets) if T >= EXPERT_BLAS_MIN_TOKENS else None, None)

    def mxfp4_experts(self, x, rows_per_x, blocks, scales, bias, plan, swiglu=None):
        """out[p] = W_{e(p)} . x[p // rows_per_x] + bias[e(p)] for every pair p of `plan` -> [P, N];
        with swiglu = (limit, alpha), the clamped SwiGLU of that (gate_up) -> [P, N / 2], fused into
        the GEMV. The GEMV also routes the pairs of a plan's Routed not yet written (gate_up)."""
        flat, order, offsets, T, starts, routed = plan
        x = _f32(x)
        P, N = flat.shape[0], blocks.shape[1]
        if T <= EXPERT_GEMV_MAX_TOKENS:
            out = cp.empty((P, N if swiglu is None else N // 2), cp.float32)
            route = None
            if routed is not None and not routed.written:
                route, routed.written = (routed.logits, routed.weights), True
            return mxfp4_cuda.expert_gemv(x, rows_per_x, flat, blocks, scales, bias, out, swiglu, route=route)
        out = cp.empty((P, N), cp.float32)
        if starts is None:  # the plan chose the tiled matmul
            mxfp4_cuda.expert_matmul(x, rows_per_x, order, offsets, T, blocks, scales, bias, out)
        else:
            rows = (order // rows_per_x).astype(cp.int32)  # each pair's row of x
            self._experts_by_blas(x, rows, order, flat, starts, blocks, scales, bias, out)
        return out if swiglu is None else self.swiglu(out, *swiglu)

    def _experts_by_blas(self, x, rows, order, flat, starts, blocks, scales, bias, out):
        """out[order[p]] = W_e . x[rows[p]] + bias[e] for the pairs p grouped by expert (starts
        [E + 1] on the host; flat: each pair id's expert): the chosen experts dequantized as the products take
        them, up to DEQUANT_BYTES of them a launch, then one cuBLAS product an expert into its
        rows' block; the rows gathered and split once into the products' parts, the parts' products
        summed, biased and put in pair order once (fused kernels for fp16x2 and bf16x3: fp16x2_cuda.py,
        bf16x3_cuda.py)."""
        N, K = blocks.shape[1], blocks.shape[2] * 32
        chosen = np.flatnonzero(np.diff(starts)).astype(np.int32)  # the experts with pairs
        largest = None  # fp16x2: each chosen expert's largest scale byte, which its weights are scaled by
        if self.fp16_experts:
            P = rows.shape[0]
            parts, exponents = fp16x2_cuda.split_rows(x, rows, cp.empty((2 * P, K), cp.float16), cp.empty(P, cp.int32))
            largest = mxfp4_cuda.largest_scales(scales, cp.asarray(chosen), cp.empty(blocks.shape[0], cp.int32))
            dtype = cp.float16
        else:
            parts, dtype = self._parts(x, rows), self._weight_dtype()
        n = parts.shape[0] // rows.shape[0]  # [n * P, K]: the n parts of each row side by side
        y = cp.empty((parts.shape[0], N), cp.float32)  # [n * P, N]
        per_launch = max(1, DEQUANT_BYTES // (N * K * np.dtype(dtype).itemsize))
        w = cp.empty((min(per_launch, len(chosen)), N, K), dtype)  # [X, N, K]
        for first in range(0, len(chosen), per_launch):
            group = chosen[first:first + per_launch]
            mxfp4_cuda.dequantize(blocks, scales, cp.asarray(group), w[:len(group)], largest=largest)
            for i, e in enumerate(group):
                block = slice(n * starts[e], n * starts[e + 1])
                self._product(parts[block], w[i], y[block])
        if self.fp16_experts:
            return fp16x2_cuda.sum_rows(y, order, flat[order], exponents, largest, bias, out)
        if self.products == "bf16x3":
            return bf16x3_cuda.sum_rows(y, order, flat[order], bias, out)
        out[order] = self._sum_parts(y) + bias[flat[order]]
        return out

    def matmul_t(self, x, w):
        """x [T, K] float32 @ w [N, K].T -> [T, N] float32 by cuBLAS, with w as `products` takes it
        (bf16 bits for bf16x3, else float32) and exact in bf16 (dequantized MXFP4, bf16 weights)."""
        parts = self._parts(_f32(x))
        return self._sum_parts(self._product(parts, w, cp.empty((parts.shape[0], w.shape[0]), cp.float32)))

    def _weight_dtype(self):
        return cp.uint16 if self.products == "bf16x3" else cp.float32

    def _parts(self, x, rows=None):
        """x [T, K] f32 at rows [P] int32 (all of them by default) -> the rows the products multiply:
        bf16x3's three bf16 parts (gathered and split in one kernel, bf16x3_cuda.py) or tf32x2's two
        halves of each row side by side, or the rows themselves."""
        if self.products == "bf16x3":
            rows = cp.arange(x.shape[0], dtype=cp.int32) if rows is None else rows
            return bf16x3_cuda.split_rows(x, rows, cp.empty((3 * rows.shape[0], x.shape[1]), cp.uint16))
        x = x if rows is None else x[rows]
        return tf32.interleaved_halves(x, cp) if self.products == "tf32x2" else x

    def _sum_parts(self, y):
        if self.products == "bf16x3":
            return bf16x3.sum_parts(y)
        return tf32.sum_halves(y) if self.products == "tf32x2" else y

    def _product(self, a, w, out):
        """out [M, N] float32 = a [M, K] @ w [N, K].T: bf16 bits (uint16) or float16 by cuBLAS's gemmEx
        (float32 sums), float32 by CuPy's matmul (in TF32 mode for tf32x2)."""
        if a.dtype == cp.float32:
            with self.cublas_mode():
                return cp.matmul(a, w.T, out=out)
        check(a.dtype == w.dtype and a.dtype in (cp.uint16, cp.float16) and out.dtype == cp.float32
              and a.shape[1] == w.shape[1] and out.shape == (a.shape[0], w.shape[0]) and a.flags.c_contiguous
              and w.flags.c_contiguous and out.flags.c_contiguous, "16-bit product", a=a, w=w, out=out)
        M, K, N = a.shape[0], a.shape[1], w.shape[0]
        if M == 0 or N == 0:
            return out
        # row-major out = a @ w.T is column-major out.T [N, M] = op(w) [N, K] x op(a) [K, M], where the
        # column-major views of the row-major w and a are w.T [K, N] and a.T [K, M] (leading dim K)
        cublas = cp.cuda.cublas
        one, zero = np.ones(1, np.float32), np.zeros(1, np.float32)  # host scalars, alive for the call
        kind = CUDA_R_16BF if a.dtype == cp.uint16 else CUDA_R_16F
        handle = cp.cuda.device.get_cublas_handle()
        cublas.setPointerMode(handle, cublas.CUBLAS_POINTER_MODE_HOST)
        cublas.gemmEx(handle, cublas.CUBLAS_OP_T, cublas.CUBLAS_OP_N, N, M, K, one.ctypes.data,
                      address(w), kind, K, address(a), kind, K, zero.ctypes.data,
                      address(out), CUDA_R_32F, N, cublas.CUBLAS_COMPUTE_32F, cublas.CUBLAS_GEMM_DEFAULT)
        return out

    @contextlib.contextmanager
    def cublas_mode(self):
        """Within: CuPy's float32 products on TF32 tensor cores when products is tf32x2 (the compute
        type that CUPY_TF32=1 would set for the process), put back after."""
        before = cp._core.get_compute_type(cp.float32)
        if self.products == "tf32x2":
            cp._core.set_compute_type(cp.float32, cp._core._routines_linalg.COMPUTE_TYPE_TF32)
        try:
            yield
        finally:
            cp._core.set_compute_type(cp.float32, before)

    def combine(self, y, weights, residual=None):
        T = weights.shape[0]
        return moe_cuda.combine(_f32(y), weights, cp.empty((T, y.shape[1]), cp.float32),
                                residual=_f32_or_none(residual))

    def sample(self, logits, temperature=0.0, top_k=None, top_p=None, min_p=None, rng=None) -> int:
        """The next token id from logits [V], chosen on the GPU with sampling.py's semantics; a draw
        takes one uniform number from `rng` (a NumPy Generator), as sampling.sample does, and logits
        holding NaN or infinity are a ValueError as there."""
        sampling.check_args(temperature, top_k, top_p, min_p)
        logits = _f32(logits)
        out = cp.empty(2, cp.int32)  # the id, and the largest logit's bits
        if temperature == 0:
            sampling_cuda.argmax(logits, out)
        else:
            order = None  # without filters the draw needs no order (sampling_cuda.sample)
            if sampling_cuda.filtered(top_k, top_p, min_p):
                order = cp.argsort(-logits).astype(cp.int32)  # CuPy's sort is stable: ties keep the lower id first
            u = (rng if rng is not None else np.random.default_rng()).random()
            sampling_cuda.sample(logits, order, temperature, top_k, top_p, min_p, u, out)
        chosen = cp.asnumpy(out)  # one copy, as for the id alone
        if not math.isfinite(sampling_cuda.largest(chosen)):
            raise ValueError(sampling.NON_FINITE)
        return int(chosen[0])

    def decoder(self, model, cache):
        """decode(token) -> the logits [1, V] after it: steps replayed from a CUDA graph when
        self.graphs, else op by op."""
        return GraphDecoder(model, cache) if self.graphs else eager_decoder(model, cache)
