"""Helpers of the simulator tests: poisoned outputs, the comparison with a reference, and a `cupy`
module made of NumPy for code that is written against CuPy, whose arrays (DeviceArray) refuse what
CuPy's refuse, so that code which only a GPU would fail fails here."""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import itertools
import os
import sys
import threading
import time
import types

import numpy as np

from gptoss_np import tf32


def poisoned(shape, dtype=np.float32):
    """An output array filled so that unwritten elements show: NaN; for signed integers every byte 0x7F
    (an index past any array, and, read as float32 bits as sampling_cuda.largest does, a finite 3.4e38
    where -1 would be a NaN that a test expecting NaN cannot tell from its own); for unsigned ones all
    ones (bf16 bits of a NaN)."""
    kind = np.dtype(dtype).kind
    if kind == "i":
        a = np.empty(shape, dtype)
        a.reshape(-1).view(np.uint8).fill(0x7F)
        return a
    return np.full(shape, np.nan if kind == "f" else np.iinfo(dtype).max, dtype)


def assert_close(out, ref, rtol=1e-5):
    """Every element written, and within rtol of the reference's largest magnitude."""
    assert np.isfinite(out).all(), "unwritten (NaN) or overflowed outputs"
    np.testing.assert_allclose(out, ref, rtol=rtol, atol=rtol * max(1e-30, float(np.abs(ref).max())))


FREE_BYTES = 1 << 30  # the simulated GPU's free memory
# NumPy's converters as they are (no_implicit_host_copies makes np's refuse device arrays)
_NUMPY = {name: getattr(np, name) for name in ("asarray", "array", "asanyarray", "ascontiguousarray")}


class _State:
    recording = False  # a stand-in CUDA graph records or replays its step (recording())
    device_arrays_only = False  # simulated launches refuse host arrays (device_arrays_only())
    launched = {}  # "module.kernel" -> the argument types it was launched with in this test (launched())
    ever_launched = set()  # "module.kernel" of every launch of the session (cuda_sim/conftest.py reports it)
    barrier_sites = {}  # (block, n) -> where the first of its threads reached its n-th barrier, this launch
    race_checked = False  # simulated kernels' arrays are RaceCheckedArrays (race_checked())
    streams = [0]  # the stand-in CuPy's current stream's handle last: the innermost entered _Stream's, or 0
    compute = None  # the latest stand-in CuPy's _ComputeTypes, which `a @ b` of device arrays computes in


@contextlib.contextmanager
def recording():
    """Within: the GPU work is recorded into a CUDA graph, so the host may not read a device array,
    copy one to or from the host, or launch a kernel on host arrays: on a GPU each of these breaks
    the capture, or would bake a value of the recording into every replay."""
    _State.recording = True
    try:
        yield
    finally:
        _State.recording = False


def _refuse_while_recording(what: str) -> None:
    if _State.recording:
        raise RuntimeError(f"cudaErrorStreamCaptureUnsupported (simulated): {what} while recording a CUDA graph")


def _refuse_host_index(key) -> None:
    """While recording: CuPy copies an index given as a NumPy array or a list to the device, and reads
    the count of a boolean mask's True elements on the host (a synchronization), for a read and for a
    write alike."""
    for k in key if isinstance(key, tuple) else (key,):
        if isinstance(k, list) or _is_host_array(k):
            _refuse_while_recording("an index array on the host (a host-to-device copy)")
        if isinstance(k, np.ndarray) and k.dtype == np.bool_:
            _refuse_while_recording("a boolean mask index (CuPy counts its elements on the host)")


def _refuse_repeated_targets(a: np.ndarray, key) -> None:
    """A scatter (an assignment through index arrays) that names one element twice: NumPy keeps the
    last write, CuPy leaves undefined which write wins, so an answer that leaned on the order would
    agree with the CPU engine here and not on a GPU."""
    parts = key if isinstance(key, tuple) else (key,)
    key = tuple(k.view(np.ndarray) if isinstance(k, np.ndarray) else k for k in parts)
    if any(isinstance(k, np.ndarray) and k.dtype.kind in "iu" for k in key):
        targets = np.arange(a.size).reshape(a.shape)[key]  # the flat index of each element written
        if np.unique(targets).size != targets.size:
            raise ValueError("a scatter writes one element more than once: on a GPU which write wins is undefined")


def _is_host_array(a) -> bool:
    return isinstance(a, np.ndarray) and not isinstance(a, DeviceArray) and a.ndim > 0


class DeviceArray(np.ndarray):
    """An array of the `cupy` stand-in: a NumPy array that behaves as a CuPy array where NumPy's
    leniency would hide a bug. Arithmetic with a host array raises TypeError, as CuPy's does; an
    element is a 0-d device array, as in CuPy; while recording(), reading one on the host raises.
    Kernels launched in the simulator see plain NumPy views (launch_as_a_gpu)."""

    __module__ = "cupy"  # what kernels.common_cuda.array_module looks at

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        if any(_is_host_array(a) for a in inputs + (out or ())):
            raise TypeError(f"{ufunc.__name__}: a host (NumPy) array among device arrays, which CuPy refuses")
        plain = [a.view(np.ndarray) if isinstance(a, DeviceArray) else a for a in inputs]
        if ufunc is np.matmul and _State.compute is not None:  # a @ b is cupy.matmul, in cuBLAS's compute type
            plain[:2] = _State.compute.operands(*plain[:2])
        if out:
            kwargs["out"] = tuple(o.view(np.ndarray) for o in out)
        result = getattr(ufunc, method)(*plain, **kwargs)
        if out:
            return out[0] if len(out) == 1 else out
        return _on_device(result)

    def __getitem__(self, key):
        _refuse_host_index(key)
        return _on_device(super().__getitem__(key))

    def __setitem__(self, key, value):
        _refuse_host_index(key)
        if _is_host_array(value):
            _refuse_while_recording("a host array written into a device array (a host-to-device copy)")
        _refuse_repeated_targets(self, key)
        super().__setitem__(key, value)

    def _to_host(self, what):
        _refuse_while_recording(f"a device array read on the host ({what})")
        return self.view(np.ndarray)

    def __int__(self):
        return int(self._to_host("int"))

    def __float__(self):
        return float(self._to_host("float"))

    def __bool__(self):
        return bool(self._to_host("bool"))

    def __index__(self):
        return self._to_host("index").__index__()

    def item(self, *args):
        return self._to_host("item").item(*args)

    def tolist(self):
        return self._to_host("tolist").tolist()

    def get(self):
        """cupy.ndarray.get: a copy on the host."""
        return _to_host(self)


def _on_device(a):
    """A result as CuPy gives it: arrays and scalars as DeviceArray, anything else as it is."""
    if isinstance(a, (np.ndarray, np.generic)):
        return _NUMPY["asarray"](a).view(DeviceArray)
    return a


def _to_device(a, dtype=None):
    """cupy.asarray: a device array as it is (or converted), a host one copied to the device."""
    if isinstance(a, DeviceArray):
        return a if dtype is None or a.dtype == dtype else a.astype(dtype)
    _refuse_while_recording("a host-to-device copy")
    return _NUMPY["array"](a, dtype=dtype).view(DeviceArray)


def _to_host(a):
    """cupy.asnumpy."""
    _refuse_while_recording("a device-to-host copy")
    return _NUMPY["array"](a).view(np.ndarray)


MAX_GRID = (2**31 - 1, 65535, 65535)  # CUDA's largest grid, in blocks along x, y, z
MAX_BLOCK_THREADS = 1024


def device_arrays_only(monkeypatch):
    """Within the test, a kernel launched with a host array raises: Numba would copy it to the GPU
    and back, synchronously, at every launch (slow, and refused while recording a CUDA graph)."""
    monkeypatch.setattr(_State, "device_arrays_only", True)


def numba_types(args) -> tuple:
    """The argument types Numba compiles a kernel for on a GPU, written as test_kernels_cuda.SIGNATURES
    writes them: arrays dtype[:, ::1] when C-contiguous (else dtype[:, :]), Python ints int64,
    floats float64, bools boolean, NumPy scalars their dtype."""
    def one(a):
        if isinstance(a, np.ndarray):
            dims = [":"] * a.ndim
            if a.flags.c_contiguous:
                dims[-1] = "::1"
            return f"{a.dtype}[{', '.join(dims)}]"
        if isinstance(a, (bool, np.bool_)):
            return "boolean"
        return {int: "int64", float: "float64"}.get(type(a)) or str(np.dtype(type(a)))
    return tuple(one(a) for a in args)


def launched() -> dict:
    """"module.kernel" -> the set of argument types (numba_types) of this test's launches of it."""
    return _State.launched


def assert_launched_as_checked(own_module: str | None = None):
    """Every kernel of gptoss_np.kernels that the test launched took the argument types whose sm_90
    machine code tests/test_kernels_cuda.py checks (SIGNATURES): on a GPU other types compile another
    version, which nothing checks (a Python float makes float64 arithmetic; a strided view,
    any-layout code). Kernels of `own_module` (a benchmark's own) are let be."""
    from test_kernels_cuda import SIGNATURES
    checked = {k: v for k, v in launched().items() if k.split(".")[0] != own_module}
    assert checked
    for kernel, types_ in checked.items():
        assert types_ == {SIGNATURES[kernel]}, (kernel, types_ - {SIGNATURES[kernel]})


def launch_as_a_gpu(monkeypatch):
    """Within the test, the simulator refuses a launch that a GPU would refuse: a grid with no blocks
    or past CUDA's limits (MAX_GRID), a block of more than MAX_BLOCK_THREADS threads, an empty array,
    an array whose address or strides are not multiples of its item size (and host arrays, under
    device_arrays_only), a stream other than the stand-in CuPy's current one (_Stream: kernels launch
    on it through common_cuda.stream_of); and records each launch's argument types (launched()).
    Kernels see device arrays as plain NumPy views, or under race_checked() as RaceCheckedArrays of one
    _Accesses a launch."""
    from numba import cuda
    from numba.cuda.errors import normalize_kernel_dimensions
    from numba.cuda.simulator import kernel

    from gptoss_np.kernels import common_cuda

    launch, configure = kernel.FakeCUDAKernel.__call__, kernel.FakeCUDAKernel.__getitem__
    monkeypatch.setattr(_State, "launched", {})
    monkeypatch.setattr(cuda, "external_stream", _ExternalStream, raising=False)  # the simulator has none
    monkeypatch.setattr(common_cuda, "_streams", {})

    def configured(self, configuration):  # the simulator drops the stream: kept for the check
        self.stream = configuration[2] if len(configuration) > 2 else 0
        return configure(self, configuration)

    def checked(self, *args):
        if not (self._device or kernel._kernel_context):
            name = self.fn.__name__
            grid, block = normalize_kernel_dimensions(self.grid_dim, self.block_dim)
            if not all(1 <= g <= most for g, most in zip(grid, MAX_GRID)):
                raise ValueError(f"{name}: grid {grid} (CUDA: 1 to {MAX_GRID} blocks): cudaErrorInvalidConfiguration")
            if not 1 <= block[0] * block[1] * block[2] <= MAX_BLOCK_THREADS:
                raise ValueError(f"{name}: block {block} (CUDA: 1 to {MAX_BLOCK_THREADS} threads)")
            host = [i for i, a in enumerate(args) if _is_host_array(a)]
            if host and _State.device_arrays_only:
                raise TypeError(f"{name}: arguments {host} are host (NumPy) arrays")
            empty = [i for i, a in enumerate(args) if isinstance(a, np.ndarray) and a.size == 0]
            if empty:  # CuPy's pointer to nothing is null, which CUDA's pointer queries refuse
                raise ValueError(f"{name}: arguments {empty} are empty arrays (a null pointer on a GPU)")
            misaligned = [i for i, a in enumerate(args) if isinstance(a, np.ndarray) and not a.flags.aligned]
            if misaligned:  # as a wider view (.view(np.uint64)) of a slice can be: a GPU loads only whole items
                raise ValueError(f"{name}: arguments {misaligned} are not aligned to their item size "
                                 f"(cudaErrorMisalignedAddress on a GPU)")
            on = self.stream.ptr if isinstance(self.stream, _ExternalStream) else self.stream
            if on != _State.streams[-1]:
                raise ValueError(f"{name}: launched on stream {on}, not on CuPy's current one ({_State.streams[-1]}): "
                                 f"unordered with CuPy's work on it, and not recorded into a graph it captures")
            module = self.fn.__module__.rsplit(".", 1)[-1]
            _State.launched.setdefault(f"{module}.{name}", set()).add(numba_types(args))
            _State.ever_launched.add(f"{module}.{name}")
            if _State.race_checked:
                _State.barrier_sites = {}
                accesses = _Accesses(blocks_apart=False)
                args = [RaceCheckedArray(a.view(np.ndarray), accesses, "argument")
                        if isinstance(a, np.ndarray) and a.ndim else a for a in args]
        return launch(self, *[a.view(np.ndarray) if isinstance(a, DeviceArray) else a for a in args])

    monkeypatch.setattr(kernel.FakeCUDAKernel, "__call__", checked)
    monkeypatch.setattr(kernel.FakeCUDAKernel, "__getitem__", configured)


class Race(RuntimeError):
    """Two threads of one launch touched one memory element, at least one of them writing it, with
    nothing ordering the two accesses: on a GPU the result depends on their timing."""


class DivergentBarrier(RuntimeError):
    """Threads of one block reached their n-th cuda.syncthreads() at different calls: on a GPU they
    hang, or go on with nothing ordered (a barrier must be reached by the whole block at one call)."""


class UninitializedRead(RuntimeError):
    """A thread read a shared-memory element that no thread of its block had written: on a GPU it holds
    whatever was there (in the simulator, often what the previous block left)."""


class _Accesses:
    """The accesses to one memory (a launch's global arrays, or one shared array) by the threads of a
    simulated launch, by element address, and the rule of which accesses are ordered: those of one
    thread, and those of one block with a cuda.syncthreads() between them. Blocks are never ordered
    (global memory): a block reading what another block of the launch writes, or writing where it
    writes, is a race. Shared memory is a block's own (blocks_apart: the simulator runs the blocks
    one after the other in one array, which on a GPU are separate memories)."""

    def __init__(self, blocks_apart: bool):
        self.blocks_apart = blocks_apart
        self.writer = {}  # address -> (block, thread, phase) of its last write
        self.readers = {}  # address -> {(block, thread): phase} of its reads
        self.block, self.written = None, set()  # with blocks_apart: the block at work, the addresses it wrote
        self.locks = [threading.Lock() for _ in range(64)]  # by element: threads writing apart do not queue

    @staticmethod
    def who():
        """(block, thread, phase): the current thread's block and index in it, and the barriers it has passed."""
        me = threading.current_thread()
        return me.block, me.thread_id, me.barriers

    def unordered(self, a, b) -> bool:
        if a[0] != b[0]:
            return not self.blocks_apart
        return a[1] != b[1] and a[2] == b[2]

    def read(self, address, me):
        """None, or (what, the other thread) where this read races with a write. Without the lock, which
        the threads of a block would queue for at every read: a write that lands between this check
        and this record goes unseen (the other accesses of a racing kernel are still checked).
        UninitializedRead where a block reads an element of its own memory (blocks_apart) that it has
        not written."""
        if self.blocks_apart and address not in self.block_written(me[0]):
            raise UninitializedRead("reads an element that no thread of its block has written")
        written = self.writer.get(address)
        if written is not None and self.unordered(written, me):
            return "reads what was written by", written
        self.readers.setdefault(address, {})[me[:2]] = me[2]
        return None

    def write(self, address, me, store):
        """store() stores and says whether the element changed (atomically here, with the records);
        None, or (what, the other thread) where a write that changed it races with another access."""
        if self.blocks_apart:
            self.block_written(me[0]).add(address)
        with self.locks[address // 4 % 64]:
            if not store():  # no change (several threads setting a flag): nobody can tell
                return None
            written = self.writer.get(address)
            if written is not None and self.unordered(written, me):
                return "overwrites what was written by", written
            for (block, thread), phase in self.readers.get(address, {}).items():
                if self.unordered((block, thread, phase), me):
                    return "overwrites what was read by", (block, thread, phase)
            self.writer[address] = me
        return None

    def block_written(self, block) -> set:
        """The addresses `block` has written (blocks run one after the other: a new one starts afresh, once,
        under the lock, though all its threads see it new)."""
        if block != self.block:
            with self.locks[0]:
                if block != self.block:
                    self.written = set()
                    self.block = block  # after: a thread that sees the new block finds its set
        return self.written


class RaceCheckedArray:
    """An array of a simulated kernel (an argument, a view of one, or a shared array) that raises Race
    at an access that conflicts with another thread's access to the same element (_Accesses): a read
    after another thread's write, a write after another thread's read or write, with no order between
    them. What compute-sanitizer's racecheck reports for shared memory on a GPU, and the same for global
    memory between blocks, which the simulator, running blocks one after the other, would otherwise
    let pass. A write that leaves the element as it was (threads setting one flag) and atomics do not
    count: their order changes nothing. A read of a shared array's element that no thread of the block
    wrote raises UninitializedRead. A thread's block and barriers passed are BlockThread.block and
    .barriers (race_checked)."""

    def __init__(self, raw: np.ndarray, accesses: _Accesses, what: str):
        self.raw, self.accesses, self.what = raw, accesses, what
        self.shape, self.dtype, self.ndim, self.size = raw.shape, raw.dtype, raw.ndim, raw.size
        self._base = raw.__array_interface__["data"][0]
        self._steps = tuple(zip(raw.shape, raw.strides))

    def __len__(self):
        return len(self.raw)

    def _address(self, key) -> int:
        if not isinstance(key, tuple):
            n, stride = self._steps[0]
            return self._base + (int(key) % n) * stride
        return self._base + sum((int(i) % n) * stride for i, (n, stride) in zip(key, self._steps))

    def _element(self, key) -> str:
        """The element at `key`, for a report: the array's kind, dtype and shape, and its indices."""
        indices = [int(i) for i in (key if isinstance(key, tuple) else (key,))]
        return f"{self.what} {self.dtype}{list(self.shape)}, element {indices}"

    def _raise(self, key, found):
        what, other = found
        block, thread, phase = _Accesses.who()
        where = f"in block {block}" if other[0] == block else f"of block {block}"
        raise Race(f"{self._element(key)}: thread {thread} {where} {what} thread {other[1]} of block {other[0]} "
                   f"(barriers passed: {phase} and {other[2]}), with nothing ordering the two")

    def __getitem__(self, key):
        value = self.raw[key]
        if isinstance(value, np.ndarray) and value.ndim:  # a view: checked as the array it is part of
            return RaceCheckedArray(value, self.accesses, self.what)
        me = _Accesses.who()
        try:
            found = self.accesses.read(self._address(key), me)
        except UninitializedRead as e:
            raise UninitializedRead(f"{self._element(key)}: thread {me[1]} of block {me[0]} {e}") from None
        if found:
            self._raise(key, found)
        return value

    def atomic(self, key):
        """The raw array, for an atomic operation on element `key` (it initializes the element, and its
        order among other atomics' does not matter)."""
        if self.accesses.blocks_apart:
            self.accesses.block_written(_Accesses.who()[0]).add(self._address(key))
        return self.raw

    def __setitem__(self, key, value):
        def store():
            before = self.raw[key].tobytes()
            self.raw[key] = value
            return self.raw[key].tobytes() != before

        found = self.accesses.write(self._address(key), _Accesses.who(), store)
        if found:
            self._raise(key, found)


class _BlockBarrier:
    """The cuda.syncthreads() of one simulated block: it releases the block's threads once every thread
    still running has arrived (a thread that has returned takes no part, as on a GPU). Threads wait
    on a condition, and so does the launch for the block's end: nothing polls."""

    def __init__(self, threads: int):
        self.changed = threading.Condition()
        self.running, self.arrived, self.generation = threads, 0, 0
        self.failure = None  # (exception, traceback) of the first thread that raised

    def arrive(self):
        with self.changed:
            if self.failure:
                raise RuntimeError("abort flag set on syncthreads call")
            generation = self.generation
            self.arrived += 1
            self._release_if_all_arrived()
            while generation == self.generation and not self.failure:
                self.changed.wait()
            if self.failure:
                raise RuntimeError("abort flag set on syncthreads clear")

    def leave(self, exception):
        with self.changed:
            self.running -= 1
            if exception and not self.failure:
                self.failure = exception
            self._release_if_all_arrived()
            self.changed.notify_all()

    def _release_if_all_arrived(self):
        if self.running and self.arrived == self.running:
            self.arrived, self.generation = 0, self.generation + 1
            self.changed.notify_all()

    def wait(self):
        """Until every thread has returned, or one has raised."""
        with self.changed:
            while self.running and not self.failure:
                self.changed.wait()


def blocks_without_polling(monkeypatch):
    """Within the test, a simulated block's threads meet at a _BlockBarrier. numba-cuda's BlockManager
    instead polls its threads in a loop that holds the GIL until they have all returned, which took
    half the interpreter from the threads it waits for. As there, the first exception of a thread is
    raised by the launch, the other threads stop at their next barrier, and a thread ends only by
    returning or raising."""
    from numba.cuda.simulator import kernel

    def run(manager, grid_point, *args):
        threads = [kernel.BlockThread(lambda: manager._f(*args), manager, grid_point, block_point, manager._debug)
                   for block_point in np.ndindex(*manager._block_dim)]
        manager.barrier = _BlockBarrier(len(threads))
        for thread in threads:
            thread.start()
        manager.barrier.wait()
        for thread in threads:  # those still running stop at their next barrier or end
            thread.join()
        if manager.barrier.failure:
            exception, traceback = manager.barrier.failure
            raise exception.with_traceback(traceback)

    thread_run = kernel.BlockThread.run

    def run_thread(thread):
        try:
            thread_run(thread)  # sets thread.exception instead of raising
        finally:
            thread._manager.barrier.leave(thread.exception)

    monkeypatch.setattr(kernel.BlockManager, "run", run)
    monkeypatch.setattr(kernel.BlockThread, "run", run_thread)
    monkeypatch.setattr(kernel.BlockThread, "syncthreads", lambda thread: thread._manager.barrier.arrive())


def race_checked(monkeypatch):
    """Within the test, the arrays of simulated kernels are checked for races (RaceCheckedArray): the
    arguments of a launch (launch_as_a_gpu), and every cuda.shared.array, one array per block and call
    site.

    One array for certain: the simulator's own FakeCUDAShared.array looks the call site up and creates
    the array in two steps, so two threads could each create one (the later replacing the earlier in
    its table) and one would then work in an array the others never see (a shared sum read garbage
    once threads switched often: conftest's switch interval). It also named the call site by
    extracting the whole stack, where the caller's frame says the same."""
    from numba import types as numba_types
    from numba.cuda.simulator import kernel, kernelapi
    from numba.np import numpy_support

    simulators = kernelapi.FakeCUDAShared.array
    lock = threading.Lock()
    # the files of frames between a cuda.syncthreads() and the kernel that are not kernel code
    not_kernel_code = (os.path.dirname(os.path.dirname(kernel.__file__)), __file__)  # numba.cuda's, this one

    def array(self, shape, dtype, alignment=None):
        if alignment is not None or shape == 0:  # refused, or the one buffer of dynamic shared memory
            return simulators(self, shape, dtype, alignment)
        caller = sys._getframe(1)
        site = caller.f_code.co_filename, caller.f_lineno
        with lock:
            if site not in self._allocations:
                kind = numpy_support.as_dtype(dtype) if isinstance(dtype, numba_types.Type) else dtype
                self._allocations[site] = RaceCheckedArray(np.empty(shape, kind), _Accesses(blocks_apart=True),
                                                           "shared array")
            return self._allocations[site]

    monkeypatch.setattr(kernelapi.FakeCUDAShared, "array", array)
    monkeypatch.setattr(_State, "race_checked", True)

    start, syncthreads = kernel.BlockThread.__init__, kernel.BlockThread.syncthreads

    def named(thread, *args):
        start(thread, *args)
        thread.block, thread.barriers = tuple(thread.blockIdx), 0

    def counted(thread):
        site = _kernel_frames(sys._getframe(2), not_kernel_code)  # past the simulator's cuda.syncthreads()
        first = _State.barrier_sites.setdefault((thread.block, thread.barriers), site)
        if first != site:
            raise DivergentBarrier(f"block {thread.block}: thread {tuple(thread.threadIdx)} reached barrier "
                                   f"{thread.barriers} at {_where(site)}, another thread of its block at "
                                   f"{_where(first)}")
        syncthreads(thread)
        thread.barriers += 1

    monkeypatch.setattr(kernel.BlockThread, "__init__", named)
    monkeypatch.setattr(kernel.BlockThread, "syncthreads", counted)

    def on_the_raw_array(atomic):
        return lambda self, array, index, *args: atomic(
            self, array.atomic(index) if isinstance(array, RaceCheckedArray) else array, index, *args)

    for name in ("add", "sub", "and_", "or_", "xor", "inc", "dec", "exch", "max", "min", "nanmax", "nanmin", "cas"):
        monkeypatch.setattr(kernelapi.FakeCUDAAtomic, name, on_the_raw_array(getattr(kernelapi.FakeCUDAAtomic, name)))


def _kernel_frames(frame, not_kernel_code: tuple[str, ...]) -> tuple:
    """(file, line) of `frame` and its callers out to the kernel, past the frames of files that start
    with one of `not_kernel_code` (the simulator's device function calls, this module's launch check):
    a call site in kernel code. The thread's start ends it."""
    sites = []
    while frame is not None and frame.f_code.co_filename != threading.__file__:
        if not frame.f_code.co_filename.startswith(not_kernel_code):
            sites.append((frame.f_code.co_filename, frame.f_lineno))
        frame = frame.f_back
    return tuple(sites)


def _where(site: tuple) -> str:
    return " <- ".join(f"{file.rsplit('/', 1)[-1]}:{line}" for file, line in site)


class _RandomState(np.random.RandomState):
    """NumPy's RandomState with CuPy's `dtype` argument to standard_normal, drawing device arrays."""

    def standard_normal(self, size=None, dtype=np.float64):
        return _on_device(super().standard_normal(size).astype(dtype))

    def randint(self, *args, **kwargs):
        return _on_device(super().randint(*args, **kwargs))


class _MemoryPool:
    """CuPy's memory pool, as far as the backend and bench/gpu.py ask: host memory is not counted."""

    def free_all_blocks(self):
        pass

    def used_bytes(self):
        return 0

    def free_bytes(self):
        return 0


class StandInGraph:
    """A CUDA graph of one decode step, stood in for: recorded by running the step once under
    recording() (so nothing in it may cross to the host) on the capturing `stream` (so every kernel
    must launch on it), replayed by running it again the same way, into the recorded output. Like a
    real replay it sees the host as it was when recording (cache.length then: a step that read the
    position from the host instead of the device buffer would repeat the recorded position) and
    leaves it alone."""

    def __init__(self, step, cache, stream=None):
        self.step, self.cache, self.launches = step, cache, 0
        self.stream = stream or _Stream()
        self.recorded_length = cache.length
        with self.stream, recording():
            self.output = step()

    def launch(self, stream):
        length = self.cache.length
        self.cache.length = self.recorded_length
        with self.stream, recording():
            np.copyto(self.output, self.step())
        self.cache.length = length
        self.launches += 1


def stand_in_graphs(monkeypatch, cuda_graph) -> list:
    """Within the test, cuda_graph.capture records decode steps as StandInGraphs, which go into the
    returned list: each GraphDecoder's (the one caller of capture) with its own cache, as generate()
    makes them, on the stream that cuda_graph records on."""
    graphs, caches = [], []
    record = cuda_graph.GraphDecoder._record

    def recording(decoder):
        caches.append(decoder.cache)
        record(decoder)

    def capture(step):
        graphs.append(StandInGraph(step, caches[-1], cuda_graph._capture_stream()))
        return graphs[-1], graphs[-1].output, []

    monkeypatch.setattr(cuda_graph.GraphDecoder, "_record", recording)
    monkeypatch.setattr(cuda_graph, "capture", capture)
    return graphs


class _Event:
    """A CUDA event, as bench/gpu.py times with them: the host's clock when recorded (the simulator
    runs each kernel as it is launched)."""

    def record(self, stream=None):
        self.time = time.perf_counter()

    def synchronize(self):
        pass


class _ExternalStream:
    """numba.cuda.external_stream(ptr), which the simulator lacks: Numba's wrapper of CuPy's stream."""

    def __init__(self, ptr: int):
        self.ptr = ptr


def _elapsed_ms(start: _Event, end: _Event) -> float:
    return (end.time - start.time) * 1e3


class _Stream:
    """A CUDA stream (cupy.cuda.Stream): a handle `ptr` of its own (never 0, the default stream's);
    within `with`, CuPy's current stream. It cannot capture: the simulator has no CUDA graphs
    (StandInGraph stands in)."""

    _handles = itertools.count(0x5000)

    def __init__(self, non_blocking=False):
        self.ptr = next(self._handles)

    def __enter__(self):
        _State.streams.append(self.ptr)
        return self

    def __exit__(self, *exc):
        _State.streams.pop()
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

    def operands(self, a, b) -> tuple:
        """a and b as cuBLAS multiplies them."""
        if a.dtype == b.dtype == np.float32 and self.get_compute_type(np.float32) == self.TF32:
            return tf32.round_to_tf32(a), tf32.round_to_tf32(b)
        return a, b

    def matmul(self, a, b, out=None):
        return np.matmul(*self.operands(a, b), out=out)


CUDA_R_32F, CUDA_R_16F, CUDA_R_16BF = 0, 2, 14  # cudaDataType (library_types.h), apart from the engine's


class _Cublas:
    """cupy.cuda.cublas as far as the backend calls it: gemmEx on the host addresses of NumPy arrays,
    with cuBLAS's column-major semantics (op, leading dimensions), bf16, fp16 or float32 operands,
    float32 results. Products of bf16 and fp16 values are exact in float32 and sums are float32's, as
    with CUBLAS_COMPUTE_32F on a GPU (whose order of summing differs)."""

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
        """The column-major rows x cols matrix at `address` with leading dimension ld, as float32."""
        itemsize = np.dtype(dtype).itemsize
        flat = np.ctypeslib.as_array((ctypes.c_char * ((ld * (cols - 1) + rows) * itemsize)).from_address(address))
        m = np.lib.stride_tricks.as_strided(flat.view(dtype), (rows, cols), (itemsize, ld * itemsize))
        if dtype == np.uint16:  # bf16 bits
            m = (m.astype(np.uint32) << np.uint32(16)).view(np.float32)
        return m.astype(np.float32)

    def gemmEx(self, handle, transa, transb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb, beta, C, Ctype, ldc,
               computeType, algo):
        assert self.pointer_mode == self.CUBLAS_POINTER_MODE_HOST and Ctype == CUDA_R_32F
        assert computeType == self.CUBLAS_COMPUTE_32F and algo == self.CUBLAS_GEMM_DEFAULT
        types_ = {CUDA_R_16BF: np.uint16, CUDA_R_16F: np.float16, CUDA_R_32F: np.float32}
        alpha_, beta_ = (np.ctypeslib.as_array((ctypes.c_float * 1).from_address(p))[0] for p in (alpha, beta))
        a = self._matrix(A, types_[Atype], *((k, m) if transa == self.CUBLAS_OP_T else (m, k)), lda)
        b = self._matrix(B, types_[Btype], *((n, k) if transb == self.CUBLAS_OP_T else (k, n)), ldb)
        product = (a.T if transa == self.CUBLAS_OP_T else a) @ (b.T if transb == self.CUBLAS_OP_T else b)
        flat = np.ctypeslib.as_array((ctypes.c_float * (ldc * (n - 1) + m)).from_address(C))
        c = np.lib.stride_tricks.as_strided(flat, (m, n), (4, 4 * ldc))
        c[:] = alpha_ * product + (beta_ * c if beta_ else 0)  # beta = 0: C is not read, as in cuBLAS


def _uninitialized(a):
    """a, a new device array, filled as poisoned() fills an output: what an allocation holds on a GPU is
    whatever was there, so a kernel that reads before it writes must not find zeros."""
    if a.dtype.kind in "fiu":
        a.fill(poisoned((), a.dtype)[()])
    return _on_device(a)


_MAKERS = ("empty", "zeros", "ones", "full", "arange", "empty_like", "zeros_like", "ones_like", "full_like",
           "concatenate", "stack", "ascontiguousarray", "copy", "pad")


def scratch_poisoned(monkeypatch, modules) -> None:
    """The kernel tests call launchers with NumPy arrays, and a launcher makes its scratch arrays (the
    attention splits' partial results, argmax's per-block bests) with the module of its arguments
    (common_cuda.array_module): with NumPy, they are filled with garbage, as new GPU memory holds, so a
    kernel that reads scratch no launch wrote shows. The garbage is every byte 0x7F (as poisoned()'s
    integers; a float32 of 3.4e38), not NaN: the kernels' max and comparisons pass over a NaN (as
    attention's combine does with a split whose max is NaN or -inf), and so would hide the read."""
    numpy = types.ModuleType("numpy, its empty arrays garbage")
    numpy.__dict__.update(np.__dict__)
    numpy.empty = lambda shape, dtype=float, order="C": _garbage(np.empty(shape, dtype))
    for name in modules:
        module = importlib.import_module(name)
        if hasattr(module, "array_module"):
            plain = module.array_module
            monkeypatch.setattr(module, "array_module", lambda a, plain=plain: numpy if plain(a) is np else plain(a))


def _garbage(a: np.ndarray) -> np.ndarray:
    a.reshape(-1).view(np.uint8).fill(0x7F)
    return a


def _device_arrays_in(make, name: str):
    """CuPy's `name`, which takes CuPy arrays only (its first argument an array, or a sequence of them):
    a NumPy array there is a TypeError, as in CuPy ("Only cupy arrays can be concatenated"; its
    ascontiguousarray is typed for a cupy.ndarray), not a silent host-to-device copy."""
    def call(arrays, *args, **kwargs):
        if any(not isinstance(a, DeviceArray) for a in ([arrays] if isinstance(arrays, np.ndarray) else arrays)):
            raise TypeError(f"cupy.{name}: only CuPy arrays are taken, not host (NumPy) arrays")
        return _on_device(make(arrays, *args, **kwargs))
    return call


def _numpys_own(frame) -> bool:
    return frame.f_globals.get("__name__", "").startswith("numpy")


def no_implicit_host_copies(monkeypatch):
    """Within the test, np.asarray, np.array, np.asanyarray and np.ascontiguousarray refuse a device
    array, or a list or tuple holding one, with CuPy's TypeError: a CuPy array reaches the host only
    by .get() or cupy.asnumpy (its __array__ raises), where NumPy takes its own subclass silently.
    NumPy's own functions may convert (the stand-in cupy's functions are NumPy's: with CuPy, NumPy
    would hand such a call to CuPy's function of the same name)."""
    def refusing(name):
        convert = _NUMPY[name]

        def call(a, *args, **kwargs):
            held = [a] if not isinstance(a, (list, tuple)) else a
            if any(isinstance(e, DeviceArray) for e in held) and not _numpys_own(sys._getframe(1)):
                raise TypeError(f"np.{name} of a device array: implicit conversion to a NumPy array is not "
                                f"allowed (with CuPy: .get() or cupy.asnumpy)")
            return convert(a, *args, **kwargs)
        return call
    for name in _NUMPY:
        monkeypatch.setattr(np, name, refusing(name))


def cupy_on_the_simulator(monkeypatch):
    """Within the test, `import cupy` gives numpy_as_cupy(), the CUDA backend is imported anew with it,
    kernels refuse host arrays (device_arrays_only) and NumPy refuses device arrays
    (no_implicit_host_copies)."""
    monkeypatch.setitem(sys.modules, "cupy", numpy_as_cupy())
    no_implicit_host_copies(monkeypatch)
    for module in ("gptoss_np.backend_cuda", "gptoss_np.cuda_graph"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    device_arrays_only(monkeypatch)


def numpy_as_cupy(device_arrays: bool = True) -> types.ModuleType:
    """A `cupy` module made of NumPy, its arrays DeviceArray (the simulator's kernels take NumPy arrays);
    with device_arrays=False, plain NumPy arrays, for the CPU backend standing in for the GPU's."""
    shim = types.ModuleType("cupy")
    shim.__dict__.update({name: getattr(np, name) for name in dir(np) if not name.startswith("__")})
    on_device = _on_device if device_arrays else (lambda a: a)
    for name in _MAKERS:  # the functions that make arrays make device arrays
        shim.__dict__[name] = (lambda make: lambda *args, **kwargs: on_device(make(*args, **kwargs)))(getattr(np, name))
    if device_arrays:
        # uninitialized device memory holds garbage: here poisoned()'s, so a read of it shows
        shim.empty = lambda shape, dtype=float, order="C": _uninitialized(np.empty(shape, dtype, order))
        shim.empty_like = lambda a, dtype=None: _uninitialized(np.empty_like(a, dtype))
        shim.ndarray, shim.asarray, shim.asnumpy = DeviceArray, _to_device, _to_host
        for name in ("ascontiguousarray", "concatenate", "stack"):
            shim.__dict__[name] = _device_arrays_in(getattr(np, name), name)
    else:
        shim.asarray, shim.asnumpy = lambda a, dtype=None: np.array(a, dtype=dtype), np.asarray
    shim.argsort = lambda a: on_device(np.argsort(a, kind="stable"))  # CuPy's sort is stable
    shim.random = types.SimpleNamespace(RandomState=_RandomState)
    pool = _MemoryPool()
    shim.get_default_memory_pool = lambda: pool
    compute = _State.compute = _ComputeTypes()
    shim.matmul = lambda a, b, out=None: on_device(compute.matmul(a, b, out=out))
    shim._core = types.SimpleNamespace(get_compute_type=compute.get_compute_type,
                                       set_compute_type=compute.set_compute_type,
                                       _routines_linalg=types.SimpleNamespace(COMPUTE_TYPE_TF32=compute.TF32))
    device = types.SimpleNamespace(id=0, synchronize=lambda: None)
    shim.cuda = types.SimpleNamespace(
        Device=lambda: device, Stream=_Stream, Event=_Event, get_elapsed_time=_elapsed_ms,
        using_allocator=lambda allocator: contextlib.nullcontext(),
        set_allocator=lambda allocator=None: None,
        get_current_stream=lambda: types.SimpleNamespace(ptr=_State.streams[-1]),
        cublas=_Cublas(), device=types.SimpleNamespace(get_cublas_handle=lambda: 0),
        runtime=types.SimpleNamespace(getDeviceProperties=lambda i: {"name": b"Numba CUDA simulator", "major": 9},
                                      memGetInfo=lambda: (FREE_BYTES, 2 * FREE_BYTES)))
    return shim
