"""MXFP4 weights: the format, its NumPy reference, and the Numba CPU kernels.

A weight matrix W [N, K] (N output rows, K inputs) is stored as
  blocks uint8 [N, K/32, 16]: each byte holds two FP4 (e2m1) values, low nibble = element 2j,
                              high nibble = element 2j+1 of the 32-element block;
  scales uint8 [N, K/32]:     e8m0 exponents, the block's values are FP4 * 2**(scale - 127).
Experts stack a leading axis E. The GEMV and tiled kernels read the packed bytes directly; a product
of many rows dequantizes row tiles of W for BLAS (matmul).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .mxfp4_simd import TILE_ROWS, TILE_TOKENS, dequantize_row, row_dot, tile_dot

# Numba caches the kernels below keyed on this file's text alone, and they inline mxfp4_simd's code: this
# line changes with that file (tests/test_kernel_mxfp4_simd.py checks it), so a cache made from an older
# mxfp4_simd.py is not used
MXFP4_SIMD_SHA256 = "f75c4043a83b638091946e3363cd40530cf38229198b13c85e2084c4f02e9a8c"

# FP4 e2m1 value of each nibble: sign bit 3, exponent bits 2-1, mantissa bit 0
FP4_VALUES = np.array([+0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                       -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], dtype=np.float32)

BLOCK = 32
_MIDPOINTS = (FP4_VALUES[1:8] + FP4_VALUES[:7]) / 2  # .25, .75, ..., 5 (exact): where rounding to FP4 turns
# Token rows of one matrix: up to GEMV_MAX_ROWS one fused GEMV per row; up to TILED_MAX_ROWS the
# fused tile kernel; above, dequantized tiles go to BLAS (bench/NOTES.md has the measurements: on an
# Intel Xeon with 4 x 4 tiles, the tile kernel won from 2 rows, and over BLAS up to 96).
GEMV_MAX_ROWS = 1
TILED_MAX_ROWS = 96
_DEQUANT_ROWS = 512  # rows of W dequantized at a time for BLAS


# ---------------------------------------------------------------- NumPy reference

def dequantize(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """[..., N, K/32, 16] uint8 + [..., N, K/32] uint8 -> float32 [..., N, K]."""
    values = np.empty(blocks.shape[:-1] + (BLOCK,), dtype=np.float32)
    values[..., 0::2] = FP4_VALUES[blocks & 0x0F]
    values[..., 1::2] = FP4_VALUES[blocks >> 4]
    values = np.ldexp(values, scales.astype(np.int32)[..., None] - 127)
    return values.reshape(blocks.shape[:-2] + (-1,))


def quantize(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float [..., N, K] -> (blocks uint8 [..., N, K/32, 16], scales uint8 [..., N, K/32]): the
    inverse of `dequantize`, rounding to the nearest value it can return.

    Per block of 32 values along K:
      scale  the smallest power of two 2**e with 6 * 2**e >= amax (the block's largest magnitude),
             i.e. e = ceil(log2(amax / 6)), stored as the e8m0 byte e + 127; nothing is clipped.
             (The OCP MX spec takes e = floor(log2(amax)) - 2 instead, which can be one smaller and
             then clips the block's largest values to +-6 * 2**e.) An all-zero block gets byte 0.
             e is clamped to [-127, 127] (byte 255 is NaN in e8m0): below, small values flush to
             zero; above, magnitudes saturate at 6 * 2**127.
      values each w / 2**e is rounded to the nearest FP4 value; a tie goes to the even nibble
             code, i.e. the even mantissa (IEEE round-half-to-even: 0.25 -> 0, 0.75 -> 1,
             2.5 -> 2, 5 -> 4). The sign bit is copied from w, so -0.0 and small negatives that
             round to zero become the -0 code.
    Values already of the form FP4 * 2**e come back exactly. NaN or infinite values raise ValueError.
    """
    w = np.asarray(w, dtype=np.float64)
    if w.ndim < 1 or w.shape[-1] % BLOCK:
        raise ValueError(f"mxfp4 quantize: the last axis ({w.shape[-1:]}) must be a multiple of {BLOCK}")
    if not np.isfinite(w).all():
        raise ValueError("mxfp4 quantize: NaN or infinite values cannot be quantized")
    w = w.reshape(w.shape[:-1] + (w.shape[-1] // BLOCK, BLOCK))  # [..., G, 32]
    amax = np.abs(w).max(axis=-1)  # [..., G]
    # e = ceil(log2(amax / 6)) from frexp, then nudged by exact float64 comparisons with 6 * 2**e
    _, e = np.frexp(np.where(amax > 0, amax / 6, 1.0))
    e = np.where(np.ldexp(6.0, e - 1) >= amax, e - 1, e)
    e = np.where(np.ldexp(6.0, e) < amax, e + 1, e)
    e = np.clip(np.where(amax > 0, e, -127), -127, 127)
    scaled = np.abs(np.ldexp(w, -e[..., None]))  # exact: a power-of-two scaling in float64
    midpoints = _MIDPOINTS.astype(np.float64)
    code = np.searchsorted(midpoints, scaled, side="left")  # ties round down to the lower code ...
    tie = scaled == midpoints[np.minimum(code, 6)]
    code = code + (tie & (code % 2 == 1))  # ... unless that code is odd: then up, to the even one
    nibbles = (code | (np.signbit(w) << 3)).astype(np.uint8)  # [..., G, 32]
    blocks = nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)  # low nibble = even element
    return np.ascontiguousarray(blocks, dtype=np.uint8), np.ascontiguousarray(e + 127, dtype=np.uint8)


def matmul_ref(x: np.ndarray, blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """x [T, K] @ W.T for one MXFP4 matrix W [N, K] -> [T, N]."""
    return x @ dequantize(blocks, scales).T


# ---------------------------------------------------------------- Numba CPU kernels
# The nibble decode is LLVM vector IR (mxfp4_simd.py); these loops spread rows over the cores.

@njit(parallel=True, cache=True)
def _gemv_pairs_kernel(x_even, x_odd, blocks, scales, experts, out):
    """out[p, n] = W[experts[p]][n] . x[p] for every pair p; rows of all pairs in parallel.
    x_even / x_odd [P, K/2] are x's even and odd elements."""
    P, N = x_even.shape[0], blocks.shape[1]
    for i in prange(P * N):
        p = i // N
        n = i % N
        out[p, n] = row_dot(blocks[experts[p], n], scales[experts[p], n], x_even[p], x_odd[p])


@njit(parallel=True, cache=True)
def _tiled_kernel(x_even, x_odd, blocks, scales, out):
    """out [N, T] = W x^T, tiles of TILE_ROWS rows x TILE_TOKENS tokens in parallel (each row tile
    with all token tiles in turn, so its bytes stay in cache; the last token tile may be partial).
    x_even / x_odd [T, K/2]; N is a multiple of TILE_ROWS."""
    token_tiles = -(-x_even.shape[0] // TILE_TOKENS)
    for i in prange(blocks.shape[0] // TILE_ROWS * token_tiles):
        tile_dot(blocks, scales, x_even, x_odd, out, i // token_tiles * TILE_ROWS, i % token_tiles * TILE_TOKENS)


@njit(parallel=True, cache=True)
def _dequantize_kernel(blocks, scales, out):
    """out [N, K] float32 = W, rows in parallel."""
    for n in prange(blocks.shape[0]):
        dequantize_row(blocks[n], scales[n], out[n])


def gemv_pairs(x: np.ndarray, blocks: np.ndarray, scales: np.ndarray, experts: np.ndarray) -> np.ndarray:
    """Row p of x times expert experts[p]'s matrix: x [P, K] f32, blocks [E, N, K/32, 16] -> [P, N] f32.

    Only the bytes of the experts named in `experts` are read.
    """
    P, K = x.shape
    E, N, G, _ = blocks.shape
    if K != G * BLOCK or scales.shape != (E, N, G) or experts.shape != (P,):
        raise ValueError(f"mxfp4 gemv: x {x.shape}, blocks {blocks.shape}, scales {scales.shape}, "
                         f"experts {experts.shape} do not fit")
    x = np.asarray(x, dtype=np.float32)
    out = np.empty((P, N), dtype=np.float32)
    _gemv_pairs_kernel(np.ascontiguousarray(x[:, 0::2]), np.ascontiguousarray(x[:, 1::2]),
                       blocks, scales, experts.astype(np.int64), out)
    return out


def matmul(x: np.ndarray, blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """x [T, K] f32 @ W.T for one MXFP4 matrix W (blocks [N, K/32, 16], scales [N, K/32]) -> [T, N].

    One row (GEMV_MAX_ROWS): the fused GEMV. Up to TILED_MAX_ROWS: the fused tile kernel, which decodes
    each weight once for TILE_TOKENS rows. More: tiles of W are dequantized into a small buffer
    (never the whole matrix) and multiplied by BLAS, which reuses each tile for all T rows.
    """
    T, K = x.shape
    N, G, _ = blocks.shape
    if K != G * BLOCK or scales.shape != (N, G):
        raise ValueError(f"mxfp4 matmul: x {x.shape}, blocks {blocks.shape}, scales {scales.shape} do not fit")
    if T <= GEMV_MAX_ROWS:
        return gemv_pairs(x, blocks[None], scales[None], np.zeros(T, dtype=np.int64))
    if T <= TILED_MAX_ROWS and N % TILE_ROWS == 0:
        return _tiled(x, blocks, scales)
    out = np.empty((T, N), dtype=np.float32)
    tile = np.empty((min(_DEQUANT_ROWS, N), K), dtype=np.float32)
    for r in range(0, N, _DEQUANT_ROWS):
        rows = min(_DEQUANT_ROWS, N - r)
        _dequantize_kernel(blocks[r:r + rows], scales[r:r + rows], tile[:rows])
        out[:, r:r + rows] = x @ tile[:rows].T
    return out


def _tiled(x: np.ndarray, blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """matmul through the tile kernel."""
    x = np.asarray(x, dtype=np.float32)
    out = np.empty((blocks.shape[0], x.shape[0]), np.float32)  # [N, T]
    _tiled_kernel(np.ascontiguousarray(x[:, 0::2]), np.ascontiguousarray(x[:, 1::2]),
                  np.ascontiguousarray(blocks), np.ascontiguousarray(scales), out)
    return np.ascontiguousarray(out.T)


# ---------------------------------------------------------------- quantizing (dense checkpoints)


@njit(inline="always")
def _pow2(e):
    """2**e as float32 from its bits, exact for -149 <= e <= 127 (a denormal below -126)."""
    if e >= -126:
        return np.uint32((e + 127) << 23).view(np.float32)
    return np.uint32(1 << (e + 149)).view(np.float32)


@njit(parallel=True, cache=True)
def _quantize_kernel(w, midpoints, blocks, scales):
    """quantize's blocks and scales of w [N, K] float32, rows in parallel, in float32 and integer
    arithmetic: the scale exponent from amax's bits, and each |w| compared with midpoint * 2**e, which
    is exact in float32 (or overflows to infinity, above every finite |w|), as |w| / 2**e is with
    the midpoint in quantize."""
    N, G = scales.shape
    for n in prange(N):
        for g in range(G):
            amax = np.float32(0)
            for j in range(BLOCK):
                amax = max(amax, abs(w[n, g * BLOCK + j]))
            bits = np.int32(np.float32(amax).view(np.uint32))
            biased = bits >> 23  # amax = 1.m * 2**(biased - 127); 6 * 2**e >= amax from e = that - 2, or - 1
            e = biased - 127 - 2 if (bits & 0x7FFFFF) <= 0x400000 else biased - 127 - 1
            e = min(max(e, -127), 127) if biased > 0 else -127  # 0 or a denormal amax: the smallest scale
            scales[n, g] = np.uint8(e + 127)
            scale = _pow2(e)
            for j in range(BLOCK // 2):
                byte = 0
                for half in range(2):
                    v = w[n, g * BLOCK + 2 * j + half]
                    a = abs(v)
                    code = 0
                    for m in range(7):
                        code += np.int32(midpoints[m] * scale < a)
                    if code < 7 and code % 2 == 1 and a == midpoints[code] * scale:
                        code += 1  # a tie goes to the even code
                    sign = np.int32(np.float32(v).view(np.uint32) >> 31)
                    byte |= (code | sign << 3) << (4 * half)
                blocks[n, g, j] = np.uint8(byte)


def quantize_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`quantize` of a float32 matrix [N, K], on every core (a checkpoint's dense experts are billions
    of weights; quantize takes seconds for one of gpt-oss-20b's matrices)."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    N, K = w.shape
    if K % BLOCK:
        raise ValueError(f"mxfp4 quantize: the last axis ({K}) must be a multiple of {BLOCK}")
    if not np.isfinite(w).all():
        raise ValueError("mxfp4 quantize: NaN or infinite values cannot be quantized")
    blocks = np.empty((N, K // BLOCK, BLOCK // 2), np.uint8)
    scales = np.empty((N, K // BLOCK), np.uint8)
    _quantize_kernel(w, _MIDPOINTS, blocks, scales)
    return blocks, scales
