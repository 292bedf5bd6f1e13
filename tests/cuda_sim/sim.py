"""Helpers of the simulator tests: poisoned outputs, the comparison with a reference, and a `cupy`
module made of NumPy for code that is written against CuPy."""

from __future__ import annotations

import contextlib
import ctypes
import types

import numpy as np

from gptoss_np import tf32


def poisoned(shape, dtype=np.float32):
    """An output array filled with NaN (or -1 for integers, all ones for unsigned: bf16 bits of a NaN),
    so unwritten elements show."""
    kind = np.dtype(dtype).kind
    return np.full(shape, np.nan if kind == "f" else np.iinfo(dtype).max if kind == "u" else -1, dtype)


def assert_close(out, ref, rtol=1e-5):
    """Every element written, and within rtol of the reference's largest magnitude."""
    assert np.isfinite(out).all(), "unwritten (NaN) or overflowed outputs"
    np.testing.assert_allclose(out, ref, rtol=rtol, atol=rtol * max(1e-30, float(np.abs(ref).max())))


FREE_BYTES = 1 << 30  # the simulated GPU's free memory


class _RandomState(np.random.RandomState):
    """NumPy's RandomState with CuPy's `dtype` argument to standard_normal."""

    def standard_normal(self, size=None, dtype=np.float64):
        return super().standard_normal(size).astype(dtype)


class _MemoryPool:
    """CuPy's memory pool, as far as the backend and bench/gpu.py ask: host memory is not counted."""

    def free_all_blocks(self):
        pass

    def used_bytes(self):
        return 0

    def total_bytes(self):
        return 0

    def free_bytes(self):
        return 0


class _Stream:
    """A CUDA stream that cannot capture: the simulator has no CUDA graphs."""

    def __init__(self, non_blocking=False):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def begin_capture(self):
        raise RuntimeError("Numba's CUDA simulator has no CUDA graphs")


class _ComputeTypes:
    """cupy._core's cuBLAS compute type per dtype, and `matmul` as cuBLAS computes float32 products in
    it: in TF32 mode both operands rounded to TF32 (tensor cores multiply those exactly and sum in
    float32), so the simulator shows what a product loses there."""

    TF32 = 7

    def __init__(self):
        self.types = {}

    def get_compute_type(self, dtype):
        return self.types.get(np.dtype(dtype), 1)

    def set_compute_type(self, dtype, compute_type):
        self.types[np.dtype(dtype)] = compute_type

    def matmul(self, a, b, out=None):
        if a.dtype == b.dtype == np.float32 and self.get_compute_type(np.float32) == self.TF32:
            a, b = tf32.round_to_tf32(a), tf32.round_to_tf32(b)
        return np.matmul(a, b, out=out)


CUDA_R_32F, CUDA_R_16F, CUDA_R_16BF = 0, 2, 14  # cudaDataType values (library_types.h), written here apart from the engine's


class _Cublas:
    """cupy.cuda.cublas as far as the backend calls it: gemmEx on the host addresses of NumPy arrays,
    with cuBLAS's column-major semantics (op, leading dimensions), bf16, fp16 or float32 operands,
    float32 results; sums in float64 (a GPU sums in float32)."""

    CUBLAS_OP_N, CUBLAS_OP_T = 0, 1
    CUBLAS_POINTER_MODE_HOST = 0
    CUBLAS_COMPUTE_32F = 68
    CUBLAS_GEMM_DEFAULT = -1

    def __init__(self):
        self.pointer_mode = None

    def setPointerMode(self, handle, mode):
        self.pointer_mode = mode

    @staticmethod
    def _matrix(address, dtype, rows, cols, ld):
        """The column-major rows x cols matrix at `address` with leading dimension ld, as float64."""
        itemsize = np.dtype(dtype).itemsize
        flat = np.ctypeslib.as_array((ctypes.c_char * ((ld * (cols - 1) + rows) * itemsize)).from_address(address))
        m = np.lib.stride_tricks.as_strided(flat.view(dtype), (rows, cols), (itemsize, ld * itemsize))
        if dtype == np.uint16:  # bf16 bits
            m = (m.astype(np.uint32) << np.uint32(16)).view(np.float32)
        return m.astype(np.float64)

    def gemmEx(self, handle, transa, transb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb, beta, C, Ctype, ldc,
               computeType, algo):
        assert self.pointer_mode == self.CUBLAS_POINTER_MODE_HOST and Ctype == CUDA_R_32F
        assert computeType == self.CUBLAS_COMPUTE_32F and algo == self.CUBLAS_GEMM_DEFAULT
        types_ = {CUDA_R_16BF: np.uint16, CUDA_R_16F: np.float16, CUDA_R_32F: np.float32}
        alpha_, beta_ = (float(np.ctypeslib.as_array((ctypes.c_float * 1).from_address(p))[0]) for p in (alpha, beta))
        a = self._matrix(A, types_[Atype], *((k, m) if transa == self.CUBLAS_OP_T else (m, k)), lda)
        b = self._matrix(B, types_[Btype], *((n, k) if transb == self.CUBLAS_OP_T else (k, n)), ldb)
        product = (a.T if transa == self.CUBLAS_OP_T else a) @ (b.T if transb == self.CUBLAS_OP_T else b)
        flat = np.ctypeslib.as_array((ctypes.c_float * (ldc * (n - 1) + m)).from_address(C))
        c = np.lib.stride_tricks.as_strided(flat, (m, n), (4, 4 * ldc))
        c[:] = alpha_ * product + (beta_ * c if beta_ else 0)  # beta = 0: C is not read, as in cuBLAS


def numpy_as_cupy() -> types.ModuleType:
    """A `cupy` module made of NumPy: the simulator's kernels take NumPy arrays."""
    shim = types.ModuleType("cupy")
    shim.__dict__.update({name: getattr(np, name) for name in dir(np) if not name.startswith("__")})
    shim.asarray = lambda a, dtype=None: np.array(a, dtype=dtype)  # a copy, as a host-to-device transfer
    shim.asnumpy = np.asarray
    shim.argsort = lambda a: np.argsort(a, kind="stable")  # CuPy's sort is stable
    shim.random = types.SimpleNamespace(RandomState=_RandomState)
    pool = _MemoryPool()
    shim.get_default_memory_pool = lambda: pool
    compute = _ComputeTypes()
    shim.matmul = compute.matmul
    shim._core = types.SimpleNamespace(get_compute_type=compute.get_compute_type, set_compute_type=compute.set_compute_type,
                                       _routines_linalg=types.SimpleNamespace(COMPUTE_TYPE_TF32=compute.TF32))
    device = types.SimpleNamespace(id=0, synchronize=lambda: None)
    shim.cuda = types.SimpleNamespace(
        Device=lambda: device, Stream=_Stream, using_allocator=lambda allocator: contextlib.nullcontext(),
        get_current_stream=lambda: None, cublas=_Cublas(), device=types.SimpleNamespace(get_cublas_handle=lambda: 0),
        runtime=types.SimpleNamespace(getDeviceProperties=lambda i: {"name": b"Numba CUDA simulator", "major": 9},
                                      memGetInfo=lambda: (FREE_BYTES, 2 * FREE_BYTES)))
    return shim
