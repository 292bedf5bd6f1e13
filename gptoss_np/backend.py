"""The one place that decides where the model runs.

A backend turns checkpoint tensors into its own arrays and provides the ops the model is written in.
Model code calls `ops.linear(x, w, b)`, `ops.attention(...)`, ... and never sees kernels, grids or
thread counts; `ops.xp` is the array module (NumPy or CuPy) for the few arrays the model makes itself.

  CpuOps   NumPy arrays and Numba CPU kernels
  CudaOps  CuPy arrays on one NVIDIA GPU and Numba CUDA kernels (kernels/*_cuda.py): MXFP4 experts
           stay packed as on disk, bf16 weights stay 16-bit; decode steps replayed from a CUDA graph;
           imported only when asked for
"""

from __future__ import annotations

import logging

import numpy as np

from . import cpu_threads, sampling
from . import moe as moe_layer
from .kernels import attention, bf16, kv_cache, moe, mxfp4, norm_rope

log = logging.getLogger(__name__)


def with_residual(y, residual):
    """residual + y, or y when there is no residual (the sum model.py's skip connections take)."""
    return y if residual is None else residual + y


def _joined(parts):
    """Arrays joined along their first axis; one part as it is (a memory map stays one)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


class CpuOps:
    """NumPy arrays on the host. Dense weights stay bf16 (uint16 bits) and MXFP4 stays packed."""

    name = "cpu"
    xp = np

    def __init__(self, reason: str | None = None):
        self.reason = reason  # why device="auto" runs on the CPU (None when the CPU was asked for)
        cpu_threads.shorten_blas_spin()  # BLAS's idle threads must not hold the cores Numba's kernels need

    # -- weights
    def matrix(self, *parts: np.ndarray) -> np.ndarray:
        """A dense weight matrix, or several stacked by rows: bf16 bits (uint16) are kept as they are
        (one part stays memory-mapped), others become float32."""
        a = _joined(parts)
        return np.asarray(a) if a.dtype == np.uint16 else np.asarray(a, dtype=np.float32)

    def vector(self, *parts: np.ndarray) -> np.ndarray:
        """A small tensor (norm weight, bias, sinks), or several joined, as float32."""
        return bf16.as_f32(_joined(parts))

    def packed(self, a: np.ndarray) -> np.ndarray:
        """MXFP4 blocks or scales (uint8), memory-mapped as on disk."""
        return np.asarray(a)

    def to_numpy(self, a: np.ndarray) -> np.ndarray:
        return a

    def check_room(self, nbytes: int) -> None:
        """Nothing to check: the weights stay memory-mapped, the OS pages them in as they are read."""

    # -- ops
    def embed(self, table: np.ndarray, ids: np.ndarray) -> np.ndarray:
        rows = table[ids]
        return bf16.bf16_to_f32(rows) if rows.dtype == np.uint16 else rows.astype(np.float32)

    def linear(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None,
               residual: np.ndarray | None = None) -> np.ndarray:
        """(residual +) x [T, K] @ w.T (+ b) for w [N, K] -> [T, N] float32."""
        y = bf16.matmul(x, w) if w.dtype == np.uint16 else x @ w.T
        return with_residual(y + b if b is not None else y, residual)

    def rmsnorm(self, x, w, eps):
        return norm_rope.rmsnorm(x, w, eps)

    def rope_tables(self, inv_freq, scale, positions):
        return norm_rope.rope_tables(inv_freq, scale, positions)

    def rope(self, x, cos, sin):
        return norm_rope.rope(x, cos, sin)

    def attention(self, q, k, v, q_pos, k_pos, sinks, window, scale):
        return attention.attention(q, k, v, q_pos, k_pos, sinks, window, scale)

    def cache_write_one(self, k, v, positions, keys, values, stored):
        return kv_cache.write_one(k, v, positions, keys, values, stored)

    def route(self, logits, k):
        return moe.route(logits, k)

    def swiglu(self, gate_up, limit, alpha):
        return moe.swiglu_ref(gate_up, limit, alpha)

    def experts(self, w, x, experts, weights, limit, alpha, residual=None):
        """(residual +) the routed experts' weighted sum [T, D]: experts grouped on the host (moe.py)."""
        return with_residual(moe_layer.by_expert_groups(self, w, x, experts, weights, limit, alpha), residual)

    def dispatched_experts(self, w, x, d, limit, alpha, residual=None):
        """(residual +) the experts' weighted sum [T, D] for the pairs of a dispatch.Dispatch."""
        return with_residual(moe_layer.grouped(self, w, x, d, limit, alpha), residual)

    def mxfp4_pairs(self, x, blocks, scales, experts):
        """Row p of x [P, K] times expert experts[p]'s matrix -> [P, N]."""
        return mxfp4.gemv_pairs(x, blocks, scales, experts)

    def mxfp4_matmul(self, x, blocks, scales):
        """x [T, K] times one expert's matrix (blocks [N, K/32, 16]) -> [T, N]."""
        return mxfp4.matmul(x, blocks, scales)

    def sample(self, logits, temperature=0.0, top_k=None, top_p=None, min_p=None, rng=None) -> int:
        """The next token id from logits [V] (see sampling.py)."""
        return sampling.sample(logits, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, rng=rng)

    def decoder(self, model, cache):
        """decode(token) -> the logits [1, V] after it: how generation runs one token at a time."""
        return eager_decoder(model, cache)


def eager_decoder(model, cache):
    """decode(token) -> logits [1, V]: one forward of one token, op by op."""
    return lambda token: model.forward(np.array([token]), cache)


class DeviceUnavailableError(NotImplementedError):
    """device="cuda" cannot run here: no usable GPU, or a model its kernels cannot run (`reason` says
    which)."""

    def __init__(self, reason: str):
        super().__init__(f"device='cuda' cannot run: {reason}")
        self.reason = reason


def cuda_unusable_reason() -> str | None:
    """Why the CUDA backend cannot run here, or None when it can."""
    try:
        import cupy
    except ImportError:
        return "CuPy is not installed (pip install 'gptoss-np[cuda12]' or '[cuda13]')"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as e:
        return f"no usable CUDA device ({e})"
    if count == 0:
        return "no CUDA device"
    try:
        from numba import cuda
    except ImportError:
        return "numba-cuda is not installed"
    if not cuda.is_available():
        return "Numba finds no usable CUDA driver"
    return None


def select(device: str, cuda_graphs: bool = True, weights_bytes: int = 0, config=None):
    """The ops for "cpu", "cuda" or "auto" (the GPU when one is usable, its kernels run `config`, a
    GptOssConfig, and `weights_bytes` of weights fit in its free memory; else the CPU).

    "auto" logs its choice and the reason; the returned ops' `name` says which it is, and a CPU's
    `reason` why not the GPU. On the GPU, `cuda_graphs` replays decode steps from a CUDA graph
    (cuda_graph.py) instead of launching each op."""
    if device == "cpu":
        return CpuOps()
    if device in ("cuda", "auto"):
        reason = cuda_unusable_reason()
        if reason is None:
            from .backend_cuda import CudaOps
            ops = CudaOps(graphs=cuda_graphs)
            reason = ops.unsupported(config) if config is not None else None
            if reason is None and device == "auto":
                reason = ops.room_shortage(weights_bytes)
            if reason is None:
                log.info("device=%r: using the GPU, %s", device, ops.device_name)
                return ops
        if device == "cuda":
            raise DeviceUnavailableError(reason)
        log.info("device='auto': using the CPU (%s)", reason)
        return CpuOps(reason)
    raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', got {device!r}")
