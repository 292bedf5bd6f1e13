"""Mixture-of-experts pieces on the GPU (NumPy references in moe.py).

  route       router logits [T, E] -> the top-k experts (best first) and their softmax weights
  sort_pairs  the T*k (token, slot) pairs grouped by expert: a counting sort in one block
  swiglu      [P, 2I] gate (even) / up (odd) columns -> [P, I], clamped
  combine     out[t] = sum_a weights[t, a] * y[t*k + a]: the weighted sum of a token's experts, plus a
              residual row if given (the block's skip connection, one launch fewer than adding after)
Pairs are numbered p = t * k + a, so no scatter with atomics is needed: combine gathers each token's
k rows. Within one expert, sort_pairs may order pairs differently from run to run; every output
element is computed the same way wherever its pair sits, so the results are deterministic.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from .common_cuda import check, residual_args, stream_of, swiglu as _swiglu

THREADS = 256  # threads per block
SORT_THREADS = 1024  # the one block of sort_pairs
MAX_EXPERTS = 256


@cuda.jit(cache=True)
def _route_kernel(logits, experts, weights):
    """Thread per token: k passes, each taking the best logit ranked below the previous pick
    (by value, then lower index first), then a softmax over the k picked logits."""
    t = cuda.grid(1)
    if t >= logits.shape[0]:
        return
    E, k = logits.shape[1], experts.shape[1]
    prev_value, prev_index = np.float32(math.inf), -1
    for a in range(k):
        best_value, best_index = np.float32(-math.inf), -1
        for e in range(E):
            value = logits[t, e]
            below = value < prev_value or (value == prev_value and e > prev_index)
            if below and (best_index < 0 or value > best_value):
                best_value, best_index = value, e
        experts[t, a] = best_index
        weights[t, a] = best_value
        prev_value, prev_index = best_value, best_index
    top = weights[t, 0]
    total = np.float32(0)
    for a in range(k):
        weights[t, a] = math.exp(weights[t, a] - top)
        total += weights[t, a]
    for a in range(k):
        weights[t, a] /= total


@cuda.jit(cache=True)
def _sort_pairs_kernel(experts, order, offsets):
    """One block: count the pairs of each expert, scan the counts into offsets, then place each
    pair at its expert's next free slot."""
    counts = cuda.shared.array(MAX_EXPERTS, np.int32)
    tid, nt = cuda.threadIdx.x, cuda.blockDim.x
    P, E = experts.shape[0], offsets.shape[0] - 1
    for e in range(tid, E, nt):
        counts[e] = 0
    cuda.syncthreads()
    for p in range(tid, P, nt):
        cuda.atomic.add(counts, experts[p], 1)
    cuda.syncthreads()
    if tid == 0:
        running = 0
        for e in range(E):
            offsets[e] = running
            running += counts[e]
            counts[e] = offsets[e]
        offsets[E] = running
    cuda.syncthreads()
    for p in range(tid, P, nt):
        order[cuda.atomic.add(counts, experts[p], 1)] = p


@cuda.jit(cache=True)
def _swiglu_kernel(gate_up, limit, alpha, out):
    i = cuda.grid(1)
    P, I = out.shape
    if i < P * I:
        p, j = i // I, i % I
        out[p, j] = _swiglu(gate_up[p, 2 * j], gate_up[p, 2 * j + 1], limit, alpha)


@cuda.jit(cache=True)
def _combine_kernel(y, weights, residual, add_residual, out):
    i = cuda.grid(1)
    T, D = out.shape
    k = weights.shape[1]
    if i < T * D:
        t, d = i // D, i % D
        acc = np.float32(0)
        for a in range(k):
            acc += weights[t, a] * y[t * k + a, d]
        out[t, d] = residual[t, d] + acc if add_residual else acc


def _blocks(n: int) -> int:
    return max(1, -(-n // THREADS))


def route(logits, experts, weights):
    """logits [T, E] f32 -> experts [T, k] int32 (best first) and weights [T, k] f32 (softmax over the k)."""
    T, E = logits.shape
    check(experts.shape == weights.shape and experts.shape[0] == T and experts.shape[1] <= E
          and logits.dtype == weights.dtype == np.float32 and experts.dtype == np.int32,
          "route", logits=logits, experts=experts, weights=weights)
    _route_kernel[_blocks(T), THREADS, stream_of(experts)](logits, experts, weights)
    return experts, weights


def sort_pairs(experts, order, offsets):
    """experts [P] int32 (pair p's expert) -> order [P] int32 (pairs grouped by expert) and
    offsets [E + 1] int32 (expert e owns order[offsets[e]:offsets[e + 1]])."""
    check(experts.ndim == 1 and order.shape == experts.shape and offsets.shape[0] - 1 <= MAX_EXPERTS
          and experts.dtype == order.dtype == offsets.dtype == np.int32,
          "sort_pairs", experts=experts, order=order, offsets=offsets)
    _sort_pairs_kernel[1, SORT_THREADS, stream_of(order)](experts, order, offsets)
    return order, offsets


def swiglu(gate_up, limit: float, alpha: float, out):
    """out [P, I] = the clamped SwiGLU of gate_up [P, 2I] (gate even, up odd columns), f32."""
    P, I = out.shape
    check(gate_up.shape == (P, 2 * I) and gate_up.dtype == out.dtype == np.float32,
          "swiglu", gate_up=gate_up, out=out)
    _swiglu_kernel[_blocks(P * I), THREADS, stream_of(out)](gate_up, np.float32(limit), np.float32(alpha), out)
    return out


def combine(y, weights, out, residual=None):
    """out [T, D] = (residual [T, D] +) sum over a of weights[t, a] * y[t * k + a] for y [T*k, D],
    weights [T, k] (f32)."""
    T, D = out.shape
    check(weights.shape[0] == T and y.shape == (T * weights.shape[1], D)
          and y.dtype == weights.dtype == out.dtype == np.float32, "moe combine", y=y, weights=weights, out=out)
    _combine_kernel[_blocks(T * D), THREADS, stream_of(out)](y, weights, *residual_args(residual, out), out)
    return out
