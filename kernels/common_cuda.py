"""What the CUDA kernels share: scalar math compiled inline into each kernel, and array helpers.

The device functions are small pure functions (`cuda.jit(device=True, inline=True)`), so the FP4,
e8m0, bf16 and SwiGLU definitions exist once. They also run under Numba's CUDA simulator
(NUMBA_ENABLE_CUDASIM=1), where they are plain Python.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from numba import cuda

# numba-cuda 0.30 (its last release; the project is in maintenance) registers an overload of
# np.row_stack when it compiles its first kernel, and NumPy 2.5 removed row_stack, an alias of vstack:
# there every compile failed with AttributeError (NVIDIA/numba-cuda#907, not to be fixed). The alias
# is given back to NumPy where it is missing, before any kernel of this package compiles.
if not hasattr(np, "row_stack"):
    np.row_stack = np.vstack

# Upper bound of threads per block: shared-memory scratch arrays are sized by it.
MAX_THREADS = 1024
# Bytes the rows of shared tiles are aligned to (`alignment=` of cuda.shared.array), so that 4
# neighbouring float32 a thread reads are one 16-byte load (LDS.128). Kernel modules import the name (a
# global of their own is a compile-time constant); the simulator's shared arrays take no alignment, so
# its conftest sets each module's to None.
SHARED_ALIGN = 16

# Decoding one token launches small grids on purpose (one block for a row's norm, for routing, ...);
# Numba warns about every grid under 128 blocks, once per distinct size, which would fill a user's
# terminal during generation.
warnings.filterwarnings("ignore", message=r"Grid size \d+ will likely result in GPU under-utilization")


@cuda.jit(device=True, inline=True)
def fp4_pair_tiny(word, j):
    """The FP4 (e2m1) values of nibbles j and j + 4 (bits 4j .. 4j + 3 and 4j + 16 .. 4j + 19, j < 4)
    of a uint32 word, times 2**-126 (exact), as a uint32 of two bf16 halves: nibble j's value is
    bf16_lo of it, nibble j + 4's bf16_hi.

    A nibble's sign bit moved to bf16 bit 15 and its 2 exponent and 1 mantissa bits to bits 8-6 make a
    bf16 (the top half of a float32) that is the FP4 value times 2**-126 (magnitude 1, 0.5, lands on
    the denormal 2**-127: no flush of denormals, no fastmath here). The two nibbles lie 16 bits apart,
    as the two halves do, so one shift and mask places both signs and one both magnitudes: two shifts
    and two masks for two weights, no branches (with j a constant, an unrolled loop, the shifts are
    immediates), then a shift or a mask each widens it: three operations a weight."""
    w = np.uint32(word)
    sign = (w << np.uint32(12 - 4 * j)) & np.uint32(0x80008000)
    if 4 * j <= 6:
        magnitude = (w << np.uint32(6 - 4 * j)) & np.uint32(0x01C001C0)
    else:
        magnitude = (w >> np.uint32(4 * j - 6)) & np.uint32(0x01C001C0)
    return np.uint32(sign | magnitude)


@cuda.jit(device=True, inline=True)
def pow2(n):
    """2**n as float32, exact for -149 <= n <= 127, built from its bits (below -126 a denormal: no flush
    of denormals, no fastmath here)."""
    m = np.int32(n)
    if m >= np.int32(-126):
        return np.uint32(np.uint32(m + np.int32(127)) << np.uint32(23)).view(np.float32)
    return np.uint32(np.uint32(1) << np.uint32(m + np.int32(149))).view(np.float32)


@cuda.jit(device=True, inline=True)
def e8m0_half(s):
    """Half the e8m0 block scale of byte s: 2**(s - 128), exact for every byte (s = 0 and 1 are the
    denormals 2**-128 and 2**-127)."""
    return pow2(np.int32(s) - np.int32(128))


@cuda.jit(device=True, inline=True)
def bf16_lo(word):
    """The bf16 value in the low half of a uint32 word (the even element of a little-endian pair)."""
    return np.uint32(np.uint32(word) << 16).view(np.float32)


@cuda.jit(device=True, inline=True)
def bf16_hi(word):
    """The bf16 value in the high half of a uint32 word (the odd element)."""
    return np.uint32(np.uint32(word) & np.uint32(0xFFFF0000)).view(np.float32)


@cuda.jit(device=True, inline=True)
def swiglu(gate, up, limit, alpha):
    """The clamped SwiGLU of gpt-oss: (clip(up, +-limit) + 1) * g * sigmoid(alpha * g), g = min(gate, limit)."""
    g = min(gate, limit)
    u = max(min(up, limit), -limit)
    return (u + np.float32(1)) * (g / (np.float32(1) + math.exp(-alpha * g)))


@cuda.jit(device=True, inline=True)
def _tree(buf, base, value, tid, n, maximum):
    """The sum (or with `maximum`, the largest) of `value` over n threads (n a power of two, numbered by
    tid), through shared buf[base:base + n]. Every one of them gets it. Shared memory only: the
    simulator has no warp shuffles."""
    buf[base + tid] = value
    cuda.syncthreads()
    step = n // 2
    while step > 0:
        if tid < step:
            a, b = buf[base + tid], buf[base + tid + step]
            buf[base + tid] = max(a, b) if maximum else a + b
        cuda.syncthreads()
        step //= 2
    total = buf[base]
    cuda.syncthreads()
    return total


@cuda.jit(device=True, inline=True)
def block_sum(buf, value, tid, n):
    """Sum of `value` over the n threads of a block (n a power of two), through shared `buf` [>= n]."""
    return _tree(buf, 0, value, tid, n, False)


@cuda.jit(device=True, inline=True)
def block_max(buf, value, tid, n):
    """The largest `value` of the n threads of a block (n a power of two), through shared `buf` [>= n]."""
    return _tree(buf, 0, value, tid, n, True)


@cuda.jit(device=True, inline=True)
def row_sum(buf, value, lane, row, lanes):
    """Sum of `value` over the `lanes` threads (a power of two) of one block row, through shared
    `buf` [>= rows * lanes]; every thread of the row gets it."""
    return _tree(buf, row * lanes, value, lane, lanes, False)


def power_of_two(n: int, lo: int = 1, hi: int = MAX_THREADS) -> int:
    """The smallest power of two >= n, clipped to [lo, hi]."""
    p = 1
    while p < n:
        p *= 2
    return max(lo, min(hi, p))


def array_module(a):
    """cupy for a CuPy array, else numpy (the simulator's kernels take NumPy arrays)."""
    if type(a).__module__.startswith("cupy"):
        import cupy
        return cupy
    return np


_streams = {}  # CUDA stream handle -> Numba's wrapper of it


def stream_of(out):
    """The stream to launch a kernel writing `out` on: for a CuPy array, CuPy's current stream, so
    that Numba's launches are ordered with CuPy's work and are recorded with it when that stream
    captures a CUDA graph (cuda_graph.py); 0, the default stream, for anything else (the simulator)."""
    if array_module(out) is np:
        return 0
    handle = array_module(out).cuda.get_current_stream().ptr
    if not handle:
        return 0
    if handle not in _streams:
        _streams[handle] = cuda.external_stream(handle)
    return _streams[handle]


def address(a) -> int:
    """The address of an array's first element: a CuPy array's on the device (what a cuBLAS call
    takes), a NumPy array's on the host (the simulator's stand-in)."""
    interface = getattr(a, "__cuda_array_interface__", None) or a.__array_interface__
    return interface["data"][0]


def residual_args(residual, out) -> tuple:
    """The (array, flag) pair of a kernel that adds a residual [like out] to its outputs when the flag
    is set: (residual, True), or (out, False) when there is none (a kernel needs an array either way;
    it reads this one only with the flag)."""
    if residual is None:
        return out, False
    check(residual.shape == out.shape and residual.dtype == np.float32, "residual", residual=residual, out=out)
    return residual, True


def check(condition: bool, what: str, **arrays) -> None:
    """ValueError naming the op and the shapes and dtypes of its arguments unless `condition`."""
    if not condition:
        shapes = ", ".join(f"{k} {getattr(v, 'shape', v)} {getattr(v, 'dtype', '')}".rstrip() for k, v in arrays.items())
        raise ValueError(f"{what}: {shapes} do not fit")
