"""Choosing the next token on the GPU, so that only its id (and the largest logit) crosses to the host.

  argmax  greedy: each block reduces a strided share of the logits to (value, index), then one
          block reduces the blocks' results; NaN beats every number and ties go to the lower index
          (as np.argmax). The largest value comes back with its index: the host refuses logits whose
          largest is NaN or infinity (damaged weights) at no extra transfer
  sample  temperature, top-k, top-p, min-p and the draw, with sampling.py's semantics: given the
          ids sorted by descending logit (a stable sort, so ties rank the lower id first), every
          filter keeps a prefix of that order; one block finds the prefix length L with scans,
          then draws in id order (as NumPy's Generator.choice does with the same uniform u).
          Without filters nothing is sorted: the draw needs only the largest logit (argmax).
The NumPy reference is sampling.sample.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from .common_cuda import MAX_THREADS, array_module, block_sum, check, stream_of

THREADS = 1024  # threads per block (a power of two)
ARGMAX_BLOCKS = 128  # blocks of the first argmax pass


@cuda.jit(device=True, inline=True)
def _beats(v, i, best, best_i):
    """Whether (value v, index i) comes before (best, best_i) in np.argmax's order: NaN first, then
    larger values; the lower index at ties (among NaNs too)."""
    if math.isnan(v):
        return not math.isnan(best) or i < best_i
    return not math.isnan(best) and (v > best or (v == best and i < best_i))


@cuda.jit(cache=True)
def _argmax_kernel(values, indices, indexed, out_values, out_indices):
    """Block b: the best (value, index) of values[i], i = b * nt + tid + j * grid * nt; index i is
    indices[i] when `indexed` (second pass), else i itself (and indices is not read)."""
    vbuf = cuda.shared.array(MAX_THREADS, np.float32)
    ibuf = cuda.shared.array(MAX_THREADS, np.int32)
    tid, nt = cuda.threadIdx.x, cuda.blockDim.x
    best, best_i = np.float32(-math.inf), np.int32(2 ** 31 - 1)
    for i in range(cuda.blockIdx.x * nt + tid, values.shape[0], cuda.gridDim.x * nt):
        index = indices[i] if indexed else np.int32(i)
        if _beats(values[i], index, best, best_i):
            best, best_i = values[i], index
    vbuf[tid], ibuf[tid] = best, best_i
    cuda.syncthreads()
    step = nt // 2
    while step > 0:
        if tid < step:
            v, j = vbuf[tid + step], ibuf[tid + step]
            if _beats(v, j, vbuf[tid], ibuf[tid]):
                vbuf[tid], ibuf[tid] = v, j
        cuda.syncthreads()
        step //= 2
    if tid == 0:
        out_values[cuda.blockIdx.x] = vbuf[0]
        out_indices[cuda.blockIdx.x] = ibuf[0]


@cuda.jit(device=True, inline=True)
def _exclusive_scan(buf, tid, nt):
    """buf[tid] becomes the sum of buf[:tid] (one thread walks the nt partial sums)."""
    cuda.syncthreads()
    if tid == 0:
        running = np.float32(0)
        for i in range(nt):
            value = buf[i]
            buf[i] = running
            running += value
    cuda.syncthreads()


@cuda.jit(cache=True)
def _sample_kernel(z, order, rank, every, best, inv_temperature, top_k, top_p, min_p, u, out):
    """One block. Thread tid owns a contiguous chunk of positions. p_j = exp((z[order[j]] - z_max) / T)
    in sorted order, z_max = z[best[0]] (best: argmax's out); L = min(top_k, top-p prefix, min-p
    prefix); then the first id (in id order) whose cumulative kept probability exceeds u times their
    total. `every`: no filter applies (top_k >= V, top_p 1, min_p 0), every id is kept, and order and
    rank are not read. out[1] = best[1] (the largest logit's bits, for the host's check)."""
    buf = cuda.shared.array(MAX_THREADS, np.float32)
    found = cuda.shared.array(2, np.int32)
    tid, nt = cuda.threadIdx.x, cuda.blockDim.x
    V = z.shape[0]
    chunk = (V + nt - 1) // nt
    lo, hi = min(V, tid * chunk), min(V, (tid + 1) * chunk)
    z_max = z[best[0]]
    L = min(top_k, V)
    if top_p < 1:  # the top-p cut: the first sorted j < L whose cumulative sum reaches top_p of the top-k's
        mine = np.float32(0)
        for j in range(lo, min(hi, L)):
            mine += math.exp((z[order[j]] - z_max) * inv_temperature)
        total = block_sum(buf, mine, tid, nt)
        if tid == 0:
            found[0] = L
        buf[tid] = mine
        _exclusive_scan(buf, tid, nt)
        running = buf[tid]
        for j in range(lo, min(hi, L)):
            running += math.exp((z[order[j]] - z_max) * inv_temperature)
            if running >= top_p * total:
                cuda.atomic.min(found, 0, j + 1)
                break
        cuda.syncthreads()
        L = found[0]
    if min_p > 0:  # min-p keeps p_j >= min_p * p_0 (p_0 = 1): a prefix of the sorted order, counted
        count = np.float32(0)
        for j in range(lo, min(hi, L)):
            if math.exp((z[order[j]] - z_max) * inv_temperature) >= min_p:
                count += 1
        L = min(L, int(block_sum(buf, count, tid, nt)))
    # the draw, in id order over the kept ids
    mine = np.float32(0)
    for i in range(lo, hi):
        if every or rank[i] < L:
            mine += math.exp((z[i] - z_max) * inv_temperature)
    kept_total = block_sum(buf, mine, tid, nt)
    if tid == 0:
        found[0], found[1] = V, -1
    buf[tid] = mine
    _exclusive_scan(buf, tid, nt)
    running = buf[tid]
    last_kept = -1
    for i in range(lo, hi):
        if every or rank[i] < L:
            last_kept = i
            running += math.exp((z[i] - z_max) * inv_temperature)
            if running > u * kept_total:
                cuda.atomic.min(found, 0, i)
                break
    cuda.atomic.max(found, 1, last_kept)
    cuda.syncthreads()
    if tid == 0:  # rounding can leave u * total just above the last running sum: take the last kept id
        out[0] = found[0] if found[0] < V else found[1]
        out[1] = best[1]


def argmax(logits, out):
    """out [2] int32 = the index of the largest of logits [V] f32 (NaN the largest, the lower index at
    ties: np.argmax's), and that value's float32 bits."""
    check(logits.ndim == 1 and logits.dtype == np.float32 and out.shape == (2,) and out.dtype == np.int32,
          "argmax", logits=logits, out=out)
    xp = array_module(out)
    blocks = max(1, min(ARGMAX_BLOCKS, -(-logits.shape[0] // THREADS)))
    values, indices = xp.empty(blocks, np.float32), xp.empty(blocks, np.int32)
    # (never an empty array as an argument: its null pointer is not a device pointer to CUDA's queries)
    _argmax_kernel[blocks, THREADS, stream_of(out)](logits, indices, False, values, indices)  # indices unread
    _argmax_kernel[1, THREADS, stream_of(out)](values, indices, True, out[1:].view(np.float32), out[:1])
    return out


def largest(out) -> float:
    """The largest logit that argmax or sample wrote into `out` (on the host, after the copy)."""
    return float(np.asarray(out, np.int32)[1:].view(np.float32)[0])


def inverse(temperature: float) -> np.float32:
    """1 / temperature in float32, at most its largest finite value: a tiny temperature's inf would
    make the largest logit's (z - z_max) * inv_temperature 0 * inf, NaN."""
    return np.float32(min(1 / temperature, np.finfo(np.float32).max))


def filtered(top_k: int | None, top_p: float | None, min_p: float | None) -> bool:
    """Whether a draw filters the vocabulary, so that sample needs the ids in order."""
    return top_k is not None or (top_p is not None and top_p < 1) or bool(min_p)


def sample(logits, order, temperature: float, top_k: int | None, top_p: float | None, min_p: float | None,
           u: float, out):
    """out [2] int32 = the id drawn from logits [V] f32 after temperature (> 0), top-k, top-p and min-p,
    with the uniform number u in [0, 1), and the largest logit's float32 bits (as argmax); order [V]
    int32 = ids by descending logit, ties lower id first, or None when no filter applies (`filtered`):
    then nothing is sorted."""
    V = logits.shape[0]
    xp = array_module(out)
    check(temperature > 0 and logits.ndim == 1 and logits.dtype == np.float32 and out.shape == (2,)
          and out.dtype == np.int32 and (order is None or (order.shape == (V,) and order.dtype == np.int32))
          and (order is not None or not filtered(top_k, top_p, min_p)),
          "sample (order [V] int32, needed by the filters)", logits=logits, order=order, out=out)
    best = argmax(logits, xp.empty(2, np.int32))
    every = order is None
    if every:  # order and rank are not read: any int32 arrays do (not empty ones, as in argmax)
        order = rank = best
    else:
        rank = xp.empty(V, np.int32)
        rank[order] = xp.arange(V, dtype=np.int32)
    _sample_kernel[1, THREADS, stream_of(out)](logits, order, rank, every, best, inverse(temperature),
                                               int(top_k or V), np.float32(1.0 if top_p is None else top_p),
                                               np.float32(min_p or 0.0), np.float32(u), out)
    return out
