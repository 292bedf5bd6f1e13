"""The one place that decides where the model runs.

A backend turns checkpoint tensors into its own arrays and provides the ops the model is written in.
Model code calls `ops.linear(x, w, b)`, `ops.attention(...)`, ... and never sees kernels, grids or
thread counts. `CpuOps` runs NumPy and Numba CPU kernels; the CUDA backend (CuPy + Numba CUDA) plugs
in here with the same methods.
"""

from __future__ import annotations

import numpy as np

from .kernels import attention, bf16, moe, mxfp4, norm_rope


class CpuOps:
    """NumPy arrays on the host. Dense weights stay bf16 (uint16 bits) and MXFP4 stays packed."""

    name = "cpu"

    # -- weights
    def matrix(self, a: np.ndarray) -> np.ndarray:
        """A dense weight matrix: bf16 bits (uint16) are kept as they are, others become float32."""
        return np.asarray(a) if a.dtype == np.uint16 else np.asarray(a, dtype=np.float32)

    def vector(self, a: np.ndarray) -> np.ndarray:
        """A small tensor (norm weight, bias, sinks) as float32."""
        return bf16.bf16_to_f32(a) if a.dtype == np.uint16 else np.asarray(a, dtype=np.float32)

    def packed(self, a: np.ndarray) -> np.ndarray:
        """MXFP4 blocks or scales (uint8), memory-mapped as on disk."""
        return np.asarray(a)

    def to_numpy(self, a: np.ndarray) -> np.ndarray:
        return a

    # -- ops
    def embed(self, table: np.ndarray, ids: np.ndarray) -> np.ndarray:
        rows = table[ids]
        return bf16.bf16_to_f32(rows) if rows.dtype == np.uint16 else rows.astype(np.float32)

    def linear(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
        """x [T, K] @ w.T (+ b) for w [N, K] -> [T, N] float32."""
        y = bf16.matmul(x, w) if w.dtype == np.uint16 else x @ w.T
        return y + b if b is not None else y

    def rmsnorm(self, x, w, eps):
        return norm_rope.rmsnorm_ref(x, w, eps)

    def rope_tables(self, inv_freq, scale, positions):
        return norm_rope.rope_tables(inv_freq, scale, positions)

    def rope(self, x, cos, sin):
        return norm_rope.rope_ref(x, cos, sin)

    def attention(self, q, k, v, q_pos, k_pos, sinks, window, scale):
        return attention.attention_ref(q, k, v, q_pos, k_pos, sinks, window, scale)

    def route(self, logits, k):
        return moe.route_ref(logits, k)

    def swiglu(self, gate_up, limit, alpha):
        return moe.swiglu_ref(gate_up, limit, alpha)

    def mxfp4_pairs(self, x, blocks, scales, experts):
        """Row p of x [P, K] times expert experts[p]'s matrix -> [P, N]."""
        return mxfp4.gemv_pairs(x, blocks, scales, experts)

    def mxfp4_matmul(self, x, blocks, scales):
        """x [T, K] times one expert's matrix (blocks [N, K/32, 16]) -> [T, N]."""
        return mxfp4.matmul(x, blocks, scales)


def select(device: str):
    """The ops for "cpu", "cuda" or "auto" (the GPU when one is usable, else the CPU).

    Until the CUDA backend lands, "auto" means the CPU and "cuda" raises.
    """
    if device in ("cpu", "auto"):
        return CpuOps()
    if device == "cuda":
        raise NotImplementedError("device='cuda': the GPU backend is not built yet; use device='cpu'")
    raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', got {device!r}")
