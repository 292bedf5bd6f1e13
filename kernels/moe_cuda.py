"""Mixture-of-experts pieces on the GPU (NumPy references in moe.py).

  route       router logits [T, E] -> the top-k experts (best first) and their softmax weights, a block
              a token (rank_top_k and top_k_weight, which decode's expert GEMV also calls: there the
              gate_up projection routes its own pairs, mxfp4_cuda.expert_gemv)
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
ROUTE_THREADS = 64  # threads of a token's block in route (each ranks E / ROUTE_THREADS experts)
SORT_THREADS = 1024  # the one block of sort_pairs
MAX_EXPERTS = 256
MAX_K = 16  # most experts a token picks (shared arrays of rank_top_k)


@cuda.jit(device=True, inline=True)
def _ordered(value):
    """A logit as ranked: NaN counts as -inf, so that the ranks are always a permutation of the experts."""
    return value if value == value else np.float32(-math.inf)


@cuda.jit(device=True, inline=True)
def rank_top_k(row, k, chosen, chosen_logits, tid, threads):
    """The top k of a token's router logits row [E], found by a block's threads (call it from every
    thread; it ends with a barrier): expert e's rank is the number of experts ahead of it (a larger
    logit, or an equal one at a lower index: route_ref's order), and the experts of rank a < k go to
    chosen[a], their logits to chosen_logits[a] (shared arrays of at least k)."""
    E = row.shape[0]
    for e in range(tid, E, threads):
        value = _ordered(row[e])
        rank = 0
        for j in range(E):
            other = _ordered(row[j])
            if other > value or (other == value and j < e):
                rank += 1
        if rank < k:
            chosen[rank] = e
            chosen_logits[rank] = row[e]
    cuda.syncthreads()


@cuda.jit(device=True, inline=True)
def top_k_weight(chosen_logits, k, a):
    """Slot a's weight: the softmax over the k chosen logits (best first), summed in slot order."""
    top = chosen_logits[0]
    total = np.float32(0)
    for b in range(k):
        total += math.exp(chosen_logits[b] - top)
    return math.exp(chosen_logits[a] - top) / total


@cuda.jit(cache=True)
def _route_kernel(logits, experts, weights):
    """Block per token: its threads rank the token's logits, then thread a writes slots a, a + threads, ..."""
    chosen = cuda.shared.array(MAX_K, np.int32)
    chosen_logits = cuda.shared.array(MAX_K, np.float32)
    t, tid, threads = cuda.blockIdx.x, cuda.threadIdx.x, cuda.blockDim.x
    k = experts.shape[1]
    rank_top_k(logits[t], k, chosen, chosen_logits, tid, threads)
    for a in range(tid, k, threads):
        experts[t, a] = chosen[a]
        weights[t, a] = top_k_weight(chosen_logits, k, a)


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
    check(experts.shape == weights.shape and experts.shape[0] == T and experts.shape[1] <= min(E, MAX_K)
          and logits.dtype == weights.dtype == np.float32 and experts.dtype == np.int32,
          "route (k <= MAX_K)", logits=logits, experts=experts, weights=weights)
    if T:
        _route_kernel[T, ROUTE_THREADS, stream_of(experts)](logits, experts, weights)
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
