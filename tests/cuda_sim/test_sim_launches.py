"""The simulator's launch checks (sim.launch_as_a_gpu, on in every simulator test): a launch that a GPU
would refuse, or fault in, fails here too, and one it would run runs."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from numba import cuda

from cuda_sim import sim


@cuda.jit
def _copy_words(words, out):
    i = cuda.grid(1)
    if i < words.shape[0]:
        out[i] = words[i]


def test_a_wide_view_must_be_aligned_to_its_items():
    """A uint64 view of bytes starting 4 bytes into a buffer: a GPU faults at its first load."""
    data = np.arange(5, dtype=np.uint64).view(np.uint8)  # 8-byte aligned, as CuPy's (256) are
    out = np.zeros(4, np.uint64)
    _copy_words[1, 32](data[8:40].view(np.uint64), out)
    np.testing.assert_array_equal(out, data[8:40].view(np.uint64))
    with pytest.raises(ValueError, match=r"arguments \[0\] are not aligned.*cudaErrorMisalignedAddress"):
        _copy_words[1, 32](data[4:36].view(np.uint64), out)


def test_launches_past_cudas_limits_or_on_empty_arrays_are_refused():
    words, out = np.zeros(4, np.uint64), np.zeros(4, np.uint64)
    with pytest.raises(ValueError, match="block .* threads"):
        _copy_words[1, 2048](words, out)
    with pytest.raises(ValueError, match="cudaErrorInvalidConfiguration"):
        _copy_words[(1, 70000), 32](words, out)
    with pytest.raises(ValueError, match="empty arrays"):
        _copy_words[1, 32](words[:0], out)


@cuda.jit
def _rotate_twice(x, out, fail_at):
    """Threads from x.size on return at once; the others pass x through shared memory twice, each
    step behind a barrier. Thread fail_at (if any) indexes past `out` before the second barrier."""
    buf = cuda.shared.array(16, np.float32)
    i, n = cuda.threadIdx.x, x.shape[0]
    if i >= n:
        return
    buf[i] = x[i]
    cuda.syncthreads()
    value = buf[(i + 1) % n]
    if i == fail_at:
        out[out.shape[0] + i] = value
    cuda.syncthreads()
    buf[i] = value
    cuda.syncthreads()
    out[i] = buf[(i + 1) % n]


def test_a_barrier_waits_for_the_threads_still_running():
    """sim.blocks_without_polling: threads that returned take no part in later barriers, as on a GPU."""
    x = np.arange(10, dtype=np.float32)
    out = np.full(10, np.nan, np.float32)
    _rotate_twice[1, 16](x, out, -1)
    np.testing.assert_array_equal(out, np.roll(x, -2))


def test_a_thread_that_raises_fails_the_launch_and_the_others_stop():
    """The first thread's exception is the launch's; the threads at the barrier do not hang."""
    x = np.arange(10, dtype=np.float32)
    out = np.full(10, np.nan, np.float32)
    with pytest.raises(IndexError, match=r"tid=\[3, 0, 0\]"):
        _rotate_twice[1, 16](x, out, 3)
    assert np.isnan(out).all()  # no thread got past the barrier after the failure


def test_grids_and_blocks_of_no_threads_are_refused():
    """A GPU refuses a launch of no blocks or of blocks of no threads (cudaErrorInvalidConfiguration)."""
    words, out = np.zeros(4, np.uint64), np.zeros(4, np.uint64)
    for grid, block in ((0, 32), ((2, 0), 32), (1, 0), (1, (4, 0))):
        with pytest.raises(ValueError, match="grid|block"):
            _copy_words[grid, block](words, out)


def test_host_arrays_are_refused_under_device_arrays_only(monkeypatch):
    """sim.device_arrays_only: a kernel launched with a NumPy array raises (Numba would copy it to the GPU
    and back at each launch); the stand-in cupy's device arrays launch."""
    cp = sim.numpy_as_cupy()
    words = cp.asarray(np.arange(4, dtype=np.uint64))
    out = cp.zeros(4, cp.uint64)
    _copy_words[1, 32](words.view(np.ndarray), out.view(np.ndarray))  # allowed until then
    sim.device_arrays_only(monkeypatch)
    for host in ((np.zeros(4, np.uint64), out), (words, np.zeros(4, np.uint64))):
        with pytest.raises(TypeError, match="host"):
            _copy_words[1, 32](*host)
    _copy_words[1, 32](words, out)
    assert cp.asnumpy(out).tolist() == [0, 1, 2, 3]


def test_launches_are_recorded_with_their_argument_types():
    """What sim.assert_launched_as_checked compares with SIGNATURES: each kernel's types, by launch."""
    words = np.zeros((4, 2), np.uint64)
    _copy_words[1, 32](words[:, 0], np.zeros(4, np.uint64))
    _copy_words[1, 32](words[:, 1].copy(), np.zeros(4, np.uint64))
    assert sim.launched() == {"test_sim_launches._copy_words": {("uint64[:]", "uint64[::1]"),
                                                               ("uint64[::1]", "uint64[::1]")}}
    assert "test_sim_launches._copy_words" in sim._State.ever_launched


def test_kernels_must_launch_on_cupys_current_stream(monkeypatch):
    """A kernel launched on another stream than CuPy's current one is unordered with CuPy's work, and
    left out of a graph that stream captures (it runs once, while recording, and never in a replay):
    common_cuda.stream_of gives the current one, for a device array."""
    from gptoss_np.kernels.common_cuda import stream_of
    cp = sim.numpy_as_cupy()
    monkeypatch.setitem(sys.modules, "cupy", cp)
    words, out = cp.arange(4, dtype=cp.uint64), cp.zeros(4, cp.uint64)
    _copy_words[1, 32](words, out)  # the default stream, current outside any other
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        _copy_words[1, 32, stream_of(out)](words, out)
        for other in (0, cuda.external_stream(cp.cuda.Stream().ptr)):
            with pytest.raises(ValueError, match="not on CuPy's current one"):
                _copy_words[1, 32, other](words, out)
    with pytest.raises(ValueError, match="not on CuPy's current one"):
        _copy_words[1, 32, cuda.external_stream(stream.ptr)](words, out)
    assert cp.cuda.get_current_stream().ptr == 0 and stream.ptr != 0
    cache = types.SimpleNamespace(length=0)
    graph = sim.StandInGraph(lambda: _copy_words[1, 32, stream_of(out)](words, out) or out, cache)
    graph.launch(cp.cuda.get_current_stream())
    with pytest.raises(ValueError, match="not on CuPy's current one"):
        sim.StandInGraph(lambda: _copy_words[1, 32](words, out) or out, cache)
    np.testing.assert_array_equal(cp.asnumpy(out), np.arange(4))
