"""The glue around cuBLAS's three bf16 products (gptoss_np/bf16x3.py) in a prefill, fused:

  split_rows  parts [3P, K] bf16 bits = the three bf16 parts of x[rows[p]], interleaved
              (bf16x3.interleaved_parts of the gathered rows): one read of x, one write of the parts
  sum_rows    out[dest[p]] = the sum of the products of p's three parts + bias[bias_rows[p]]
              (+ residual[dest[p]]) (bf16x3.sum_parts, the bias, the residual and the scatter into
              pair order): one read of the products
For a 2k-token 20b prefill each replaces ~5 CuPy elementwise passes over ~0.1-0.6 GB a projection
(the attention projections' and the router's; the experts' only with CudaOps.fp16_experts off, as they
take fp16x2 by default).
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from .common_cuda import check, residual_args, stream_of

THREADS = 256  # threads per block: a block covers THREADS columns of one row (rows on the grid's x,
                # which holds 2**31 - 1 blocks where y holds 65535)


@cuda.jit(device=True, inline=True)
def _truncated(value):
    """value with its low 16 bits cleared (exact in bf16), and those bits as bf16 bits."""
    bits = np.uint32(value.view(np.uint32) & np.uint32(0xFFFF0000))
    return bits.view(np.float32), np.uint16(bits >> np.uint32(16))


@cuda.jit(cache=True)
def _split_rows_kernel(x, rows, parts):
    """Grid (P, column blocks): parts[3p + i, k] = part i of x[rows[p], k]."""
    p = np.uint32(cuda.blockIdx.x)
    k = np.uint32(cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x)
    if k < x.shape[1]:
        value = x[np.uint32(rows[p]), k]
        x1, bits1 = _truncated(value)
        rest = value - x1  # exact
        x2, bits2 = _truncated(rest)
        parts[np.uint32(3) * p, k] = bits1
        parts[np.uint32(3) * p + np.uint32(1), k] = bits2
        parts[np.uint32(3) * p + np.uint32(2), k] = np.uint16((rest - x2).view(np.uint32) >> np.uint32(16))


@cuda.jit(cache=True)
def _sum_rows_kernel(y, dest, bias_rows, bias, residual, add_residual, out):
    """Grid (P, column blocks): out[dest[p], n] = (y[3p + 2, n] + y[3p + 1, n]) + y[3p, n] + bias[bias_rows[p], n],
    plus residual[dest[p], n] with add_residual."""
    p = np.uint32(cuda.blockIdx.x)
    n = np.uint32(cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x)
    if n < out.shape[1]:
        row, to = np.uint32(3) * p, np.uint32(dest[p])
        total = (y[row + np.uint32(2), n] + y[row + np.uint32(1), n]) + y[row, n]
        total += bias[np.uint32(bias_rows[p]), n]
        out[to, n] = residual[to, n] + total if add_residual else total


def split_rows(x, rows, parts):
    """parts [3P, K] uint16 (written; returned) = the bf16x3 parts of x [T, K] f32 at rows [P] int32."""
    P, K = rows.shape[0], x.shape[1]
    check(x.dtype == np.float32 and rows.dtype == np.int32 and parts.shape == (3 * P, K)
          and parts.dtype == np.uint16, "bf16x3 split_rows", x=x, rows=rows, parts=parts)
    if P and K:
        _split_rows_kernel[(P, -(-K // THREADS)), THREADS, stream_of(parts)](x, rows, parts)
    return parts


def sum_rows(y, dest, bias_rows, bias, out, residual=None):
    """out[dest[p]] = sum of y's rows 3p .. 3p + 2 + bias[bias_rows[p]] (+ residual[dest[p]]) for y [3P, N]
    f32, dest and bias_rows [P] int32, bias [B, N] f32, residual like out; other rows of out [R, N] are
    left as they are."""
    P, N = dest.shape[0], out.shape[1]
    check(y.shape == (3 * P, N) and y.dtype == bias.dtype == out.dtype == np.float32 and bias_rows.shape == (P,)
          and dest.dtype == bias_rows.dtype == np.int32 and bias.shape[1] == N,
          "bf16x3 sum_rows", y=y, dest=dest, bias_rows=bias_rows, bias=bias, out=out)
    if P and N:
        _sum_rows_kernel[(P, -(-N // THREADS)), THREADS, stream_of(out)](y, dest, bias_rows, bias,
                                                                          *residual_args(residual, out), out)
    return out
