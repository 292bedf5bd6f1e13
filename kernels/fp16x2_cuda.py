"""The glue around cuBLAS's two fp16 products (gptoss_np/fp16x2.py) of the prefill's MXFP4 experts:

  split_rows  parts [2P, K] fp16 = the two fp16 parts of x[rows[p]] 2**-r[p], interleaved, with r[p]
              the row's exponent (fp16x2.interleaved_parts of the gathered rows): a block a row,
              its largest magnitude first, then one read of x and one write of the parts
  sum_rows    out[dest[p]] = (the sum of the products of p's two parts) 2**r[p] 2**(largest[e] - 140)
              + bias[e] for e = experts[p] (fp16x2.sum_parts, the bias and the scatter into pair
              order): one read of the products
The weights' side is mxfp4_cuda: largest_scales, then dequantize into float16.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from ..fp16x2 import LARGEST_AT, ROW_EXPONENT_LIMIT

from .common_cuda import MAX_THREADS, block_max, check, pow2, stream_of

SPLIT_THREADS = 256  # threads of a split block (a row; a power of two)
THREADS = 256  # threads per block of the sum: a block covers THREADS columns of one pair's row


@cuda.jit(device=True, inline=True)
def _row_exponent(largest):
    """fp16x2.row_exponents for one row's largest magnitude (a float32 >= 0)."""
    if largest == 0:
        return np.int32(0)
    exponent = np.int32((largest.view(np.uint32) >> np.uint32(23)) & np.uint32(0xFF)) - np.int32(127)
    return max(np.int32(-ROW_EXPONENT_LIMIT), min(np.int32(ROW_EXPONENT_LIMIT), exponent - np.int32(14)))


@cuda.jit(cache=True)
def _split_rows_kernel(x, rows, parts, exponents):
    """Block p: exponents[p] = r, parts[2p + i, k] = part i of x[rows[p], k] 2**-r (k strided over the
    block's threads, with 32-bit counters)."""
    buf = cuda.shared.array(MAX_THREADS, np.float32)
    p, tid, nt = np.uint32(cuda.blockIdx.x), cuda.threadIdx.x, cuda.blockDim.x
    row, K, step = x[np.uint32(rows[p])], np.uint32(x.shape[1]), np.uint32(nt)
    largest = np.float32(0)
    k = np.uint32(tid)
    while k < K:
        largest = max(largest, abs(row[k]))
        k = np.uint32(k + step)
    r = _row_exponent(block_max(buf, largest, tid, nt))
    if tid == 0:
        exponents[p] = r
    down = pow2(-r)
    first, second = parts[np.uint32(2) * p], parts[np.uint32(2) * p + np.uint32(1)]
    k = np.uint32(tid)
    while k < K:
        value = row[k] * down
        high = np.float16(value)
        first[k] = high
        second[k] = np.float16(value - np.float32(high))  # the difference is exact in float32
        k = np.uint32(k + step)


@cuda.jit(cache=True)
def _sum_rows_kernel(y, dest, experts, exponents, largest, bias, out):
    """Grid (P, column blocks): out[dest[p], n] = (y[2p + 1, n] + y[2p, n]) 2**exponents[p]
    2**(largest[e] - LARGEST_AT) + bias[e, n], e = experts[p]."""
    p = np.uint32(cuda.blockIdx.x)
    n = np.uint32(cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x)
    if n < out.shape[1]:
        e = np.uint32(experts[p])
        total = (y[np.uint32(2) * p + np.uint32(1), n] + y[np.uint32(2) * p, n]) * pow2(exponents[p])
        total *= pow2(largest[e] - np.int32(LARGEST_AT))
        out[np.uint32(dest[p]), n] = total + bias[e, n]


def split_rows(x, rows, parts, exponents):
    """parts [2P, K] float16 and exponents [P] int32 (written; returned) = fp16x2.interleaved_parts of
    x [T, K] f32 at rows [P] int32."""
    P, K = rows.shape[0], x.shape[1]
    check(x.dtype == np.float32 and rows.dtype == np.int32 and parts.shape == (2 * P, K)
          and parts.dtype == np.float16 and exponents.shape == (P,) and exponents.dtype == np.int32
          and SPLIT_THREADS & (SPLIT_THREADS - 1) == 0, "fp16x2 split_rows", x=x, rows=rows, parts=parts,
          exponents=exponents)
    if P and K:
        _split_rows_kernel[P, SPLIT_THREADS, stream_of(parts)](x, rows, parts, exponents)
    return parts, exponents


def sum_rows(y, dest, experts, exponents, largest, bias, out):
    """out[dest[p]] = the sum of y's rows 2p, 2p + 1 scaled back (exponents [P] of split_rows, largest
    [E] of mxfp4_cuda.largest_scales) + bias[experts[p]] for y [2P, N] f32, dest and experts [P] int32,
    bias [E, N] f32; other rows of out [R, N] are left as they are."""
    P, N = dest.shape[0], out.shape[1]
    check(y.shape == (2 * P, N) and y.dtype == bias.dtype == out.dtype == np.float32 and experts.shape == (P,)
          and dest.dtype == experts.dtype == exponents.dtype == largest.dtype == np.int32
          and exponents.shape == (P,) and largest.shape == (bias.shape[0],) and bias.shape[1] == N,
          "fp16x2 sum_rows", y=y, dest=dest, experts=experts, exponents=exponents, largest=largest, bias=bias,
          out=out)
    if P and N:
        _sum_rows_kernel[(P, -(-N // THREADS)), THREADS, stream_of(out)](y, dest, experts, exponents, largest,
                                                                          bias, out)
    return out
