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

# Upper bound of threads per block: shared-memory scratch arrays are sized by it.
MAX_THREADS = 1024

# Decoding one token launches small grids on purpose (one block for a row's norm, for routing, ...);
# Numba warns about every grid under 128 blocks, once per distinct size, which would fill a user's
# terminal during generation.
warnings.filterwarnings("ignore", message=r"Grid size \d+ will likely result in GPU under-utilization")


@cuda.jit(device=True, inline=True)
def fp4_times2(nibble):
    """Twice the FP4 (e2m1) value of a nibble, as a float32 in -12..12 (exact).

    The nibble's sign bit placed at float32 bit 31 and its 2 exponent and 1 mantissa bits at bits
    24-22 make a float32 that is the FP4 value times 2**-126 (magnitude 1, 0.5, lands on the denormal
    2**-127: no flush of denormals, no fastmath here), so one multiply by 2**127 gives twice the value:
    5 integer operations and a multiply, no branches."""
    n = np.uint32(nibble)
    bits = np.uint32(((n & np.uint32(8)) << np.uint32(28)) | ((n & np.uint32(7)) << np.uint32(22)))
    return bits.view(np.float32) * np.float32(2.0 ** 127)


@cuda.jit(device=True, inline=True)
def e8m0_half(s):
    """Half the e8m0 block scale: 2**(s - 128), exact (no flush of denormals: no fastmath here)."""
    return math.ldexp(np.float32(1.0), int(s) - 128)


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
def block_sum(buf, value, tid, n):
    """Sum of `value` over the n threads of a block (n a power of two), through shared `buf` [>= n].

    Every thread gets the sum. Shared memory only: the simulator has no warp shuffles."""
    buf[tid] = value
    cuda.syncthreads()
    step = n // 2
    while step > 0:
        if tid < step:
            buf[tid] += buf[tid + step]
        cuda.syncthreads()
        step //= 2
    total = buf[0]
    cuda.syncthreads()
    return total


@cuda.jit(device=True, inline=True)
def row_sum(buf, value, lane, row, lanes):
    """Sum of `value` over the `lanes` threads (a power of two) of one block row, through shared
    `buf` [>= rows * lanes]; every thread of the row gets it."""
    base = row * lanes
    buf[base + lane] = value
    cuda.syncthreads()
    step = lanes // 2
    while step > 0:
        if lane < step:
            buf[base + lane] += buf[base + lane + step]
        cuda.syncthreads()
        step //= 2
    total = buf[base]
    cuda.syncthreads()
    return total


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


def check(condition: bool, what: str, **arrays) -> None:
    """ValueError naming the op and the shapes and dtypes of its arguments unless `condition`."""
    if not condition:
        shapes = ", ".join(f"{k} {getattr(v, 'shape', v)} {getattr(v, 'dtype', '')}".rstrip() for k, v in arrays.items())
        raise ValueError(f"{what}: {shapes} do not fit")
