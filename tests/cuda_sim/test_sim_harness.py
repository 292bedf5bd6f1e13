"""The simulator tests' own helpers (sim.py), each on a known-bad input: a helper that stopped doing its
job would make the kernel tests that lean on it pass whatever the kernels do. Poisoned outputs must
show an unwritten element, assert_close must fail on one, the `cupy` stand-in must refuse what CuPy
refuses, launch records must be what the sm_90 check compares, and the scratch and TF32 stand-ins must
be what a GPU gives."""

from __future__ import annotations

import types

import numpy as np
import pytest

from cuda_sim import sim
from gptoss_np import tf32

CAPTURE = "cudaErrorStreamCaptureUnsupported"


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_poisoned_floats_are_nan(dtype):
    a = sim.poisoned((3, 5), dtype)
    assert a.shape == (3, 5) and a.dtype == dtype and np.isnan(a).all()


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint8, np.uint16, np.uint32])
def test_poisoned_integers_are_the_documented_bytes(dtype):
    """Signed: every byte 0x7F (an index past any array); unsigned: all ones (bf16 bits of a NaN)."""
    a = sim.poisoned((2, 3), dtype)
    assert a.shape == (2, 3) and a.dtype == dtype
    if np.dtype(dtype).kind == "i":
        assert (a.view(np.uint8) == 0x7F).all()
    else:
        assert (a == np.iinfo(dtype).max).all()


def test_assert_close_fails_on_an_unwritten_element_or_an_error_past_rtol():
    ref = np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4)
    big = float(np.abs(ref).max())
    sim.assert_close(ref.copy(), ref)
    for bad in (np.nan, np.inf):
        out = ref.copy()
        out[1, 2] = bad
        with pytest.raises(AssertionError):
            sim.assert_close(out, ref)
        with pytest.raises(AssertionError):  # not even where the reference has it too
            sim.assert_close(out, np.where(np.isnan(out) | np.isinf(out), out, ref))
    out = ref.copy()
    out.reshape(-1)[7:8].view(np.uint8).fill(0x7F)  # garbage as scratch_poisoned's: 3.4e38, finite
    with pytest.raises(AssertionError):
        sim.assert_close(out, ref)
    for rtol in (1e-5, 1e-3):
        out = ref.astype(np.float64)
        out[2, 3] += 3 * rtol * big  # past rtol of the largest magnitude (and of the element)
        with pytest.raises(AssertionError):
            sim.assert_close(out, ref, rtol=rtol)
        out[2, 3] = ref[2, 3] + 0.5 * rtol * big
        sim.assert_close(out, ref, rtol=rtol)
    out = ref.astype(np.float64)
    out[0, 0] += 3e-5 * big
    with pytest.raises(AssertionError):  # the default is 1e-5
        sim.assert_close(out, ref)


def test_fake_cupy_refuses_host_arrays_among_device_arrays():
    """CuPy's ufuncs take CuPy arrays and scalars, not NumPy arrays ("Unsupported type
    <class 'numpy.ndarray'>"): arithmetic mixing the two raises TypeError, an out= on the host too."""
    cp = sim.numpy_as_cupy()
    a = cp.zeros(4, cp.float32)
    assert isinstance(a, sim.DeviceArray)
    for mixed in (lambda: a + np.ones(4, np.float32), lambda: np.ones(4, np.float32) * a,
                  lambda: np.add(a, 1, out=np.empty(4, np.float32)), lambda: a @ np.ones((4, 2), np.float32),
                  lambda: cp.matmul(a[None], np.ones((4, 2), np.float32))):
        with pytest.raises(TypeError, match="host"):
            mixed()
    # device results stay on the device, elements and reductions included (CuPy gives 0-d arrays)
    for result in (a + 1, a + np.float32(1), a[1], a.sum(), a.reshape(2, 2).T, a.astype(np.int32)):
        assert isinstance(result, sim.DeviceArray), type(result)
    assert (a + 2.5).dtype == np.float32  # a Python float does not widen a float32 array, as in CuPy
    host = np.arange(3, dtype=np.int64)
    device, narrowed = cp.asarray(host), cp.asarray(host, dtype=cp.int32)
    host[0] = 7  # copies: the host's later writes do not reach them
    for a, dtype in ((device, np.int64), (narrowed, np.int32)):
        assert isinstance(a, sim.DeviceArray) and a.dtype == dtype and cp.asnumpy(a).tolist() == [0, 1, 2]
    assert cp.asarray(device) is device  # a device array as it is
    assert type(cp.asnumpy(device)) is np.ndarray and type(device.get()) is np.ndarray


def test_fake_cupy_allocations_hold_garbage():
    """New GPU memory holds whatever was there: cupy.empty and empty_like as poisoned() fills."""
    cp = sim.numpy_as_cupy()
    for dtype in (np.float32, np.int32, np.uint16):
        for a in (cp.empty((2, 3), dtype), cp.empty_like(np.zeros((2, 3), dtype))):
            assert isinstance(a, sim.DeviceArray) and a.dtype == dtype
            np.testing.assert_array_equal(cp.asnumpy(a).view(np.uint8), sim.poisoned((2, 3), dtype).view(np.uint8))


def test_recording_refuses_what_a_cuda_graph_capture_cannot_hold():
    cp = sim.numpy_as_cupy()
    a = cp.arange(4, dtype=cp.float32)
    host, swap = np.ones(4, np.float32), cp.asarray([2, 1])
    with sim.recording():
        b = a * 2 + cp.asarray(a)  # work on the device only is recorded
        b[1:3] = b[swap] + 0 * b[None, 1:3]  # device index arrays, slices and scalars
        b[0] = 0
        for crossing in (lambda: float(a[1]), lambda: int(a[1]), lambda: bool(a[1]), lambda: a.item(0),
                         lambda: a.tolist(), lambda: a.get(), lambda: cp.asnumpy(a), lambda: cp.asarray(host),
                         lambda: range(4)[a[1]], lambda: a[np.array([0, 2])], lambda: a[[0, 2]],
                         lambda: a[a > 1], lambda: a.__setitem__(np.array([1]), 0),
                         lambda: a.__setitem__(slice(0, 4), host)):
            with pytest.raises(RuntimeError, match=CAPTURE):
                crossing()
    assert float(b[1]) == 6.0 and cp.asnumpy(b).tolist() == [0, 6, 3, 9]  # and after it, all of that works


def test_launched_records_the_types_a_gpu_compiles_for():
    """numba_types: the signature test_kernels_cuda.SIGNATURES writes; a strided view is not ::1."""
    m = np.zeros((4, 6), np.float32)
    assert sim.numba_types((m, m[:, ::2], m[1], m[:, 1], 3, 2.0, True, np.bool_(False), np.float32(1),
                            np.int32(2))) == ("float32[:, ::1]", "float32[:, :]", "float32[::1]", "float32[:]", "int64",
                                              "float64", "boolean", "boolean", "float32", "int32")


def test_assert_launched_as_checked_refuses_other_types_and_no_launches(monkeypatch):
    from test_kernels_cuda import SIGNATURES
    kernel, signature = next(iter(SIGNATURES.items()))
    other = tuple(t.replace("::1", ":") for t in signature)
    monkeypatch.setattr(sim._State, "launched", {kernel: {signature}})
    sim.assert_launched_as_checked()
    monkeypatch.setattr(sim._State, "launched", {kernel: {signature}, "bench_own.kernel": {("float64",)}})
    sim.assert_launched_as_checked(own_module="bench_own")
    for launched in ({kernel: {signature, other}}, {kernel: {other}}, {}):
        monkeypatch.setattr(sim._State, "launched", launched)
        with pytest.raises(AssertionError):
            sim.assert_launched_as_checked()


def test_launchers_scratch_arrays_hold_garbage():
    """sim.scratch_poisoned (conftest): a launcher's own np.empty scratch is every byte 0x7F, not zeros."""
    from gptoss_np.kernels import attention_cuda, sampling_cuda
    for module in (attention_cuda, sampling_cuda):
        xp = module.array_module(np.zeros(1, np.float32))
        for dtype in (np.float32, np.int32):
            assert (xp.empty((3, 2), dtype).view(np.uint8) == 0x7F).all()
    assert np.empty is not xp.empty  # NumPy itself is left alone


def test_fake_cupy_matmul_rounds_to_tf32_in_tf32_mode(monkeypatch):
    """cuBLAS in TF32 mode multiplies the operands rounded to TF32; the default is float32's products.
    CuPy's `a @ b` is its matmul, in the same mode."""
    monkeypatch.setattr(sim._State, "compute", sim._State.compute)  # the TF32 mode set here ends with the test
    cp = sim.numpy_as_cupy()
    rng = np.random.default_rng(0)
    a, b = (cp.asarray(rng.standard_normal(shape).astype(np.float32)) for shape in ((3, 16), (16, 5)))
    exact = np.matmul(a.view(np.ndarray), b.view(np.ndarray))
    np.testing.assert_array_equal(cp.asnumpy(cp.matmul(a, b)), exact)
    np.testing.assert_array_equal(cp.asnumpy(a @ b), exact)
    cp._core.set_compute_type(cp.float32, cp._core._routines_linalg.COMPUTE_TYPE_TF32)
    rounded = np.matmul(tf32.round_to_tf32(a.view(np.ndarray)), tf32.round_to_tf32(b.view(np.ndarray)))
    out = cp.empty((3, 5), cp.float32)
    cp.matmul(a, b, out=out)
    np.testing.assert_array_equal(cp.asnumpy(out), rounded)
    np.testing.assert_array_equal(cp.asnumpy(a @ b), rounded)
    assert not np.array_equal(rounded, exact)


def test_a_stand_in_graph_replays_what_it_recorded():
    """sim.StandInGraph: a replay sees the host as it was when recording (a step that took the position
    from the host repeats the recorded one), writes into the recorded output, leaves the host alone,
    and the step may not cross to the host."""
    cp = sim.numpy_as_cupy()
    cache = types.SimpleNamespace(length=5)
    token = cp.zeros(1, cp.int64)
    graph = sim.StandInGraph(lambda: cp.full(2, cache.length, cp.int64) + token, cache)
    output = graph.output
    cache.length, token[0] = 9, 1
    graph.launch(None)
    assert graph.output is output and cp.asnumpy(output).tolist() == [6, 6]
    assert cache.length == 9 and graph.launches == 1
    with pytest.raises(RuntimeError, match=CAPTURE):
        sim.StandInGraph(lambda: cp.full(1, int(token[0]), cp.int64), cache)
    steps = []  # a step that crosses to the host from its second run on: the replay is recorded too
    graph = sim.StandInGraph(lambda: steps.append(0) or cp.full(1, len(steps) > 1 and int(token[0]), cp.int64), cache)
    with pytest.raises(RuntimeError, match=CAPTURE):
        graph.launch(None)


def test_fake_cupy_joins_and_lays_out_device_arrays_only():
    """CuPy's concatenate, stack and ascontiguousarray take CuPy arrays only (TypeError for a NumPy one:
    "Only cupy arrays can be concatenated"); its copy and pad give device arrays."""
    cp = sim.numpy_as_cupy()
    a, host = cp.arange(4, dtype=cp.float32), np.arange(4, dtype=np.float32)
    for result in (cp.concatenate([a, a]), cp.stack([a, a]), cp.ascontiguousarray(a[::2], dtype=cp.float64),
                   cp.copy(a), cp.pad(a, (0, 2))):
        assert isinstance(result, sim.DeviceArray), type(result)
    for mixed in (lambda: cp.concatenate([a, host]), lambda: cp.stack([host, a]), lambda: cp.ascontiguousarray(host),
                  lambda: cp.ascontiguousarray(host, dtype=cp.float32)):
        with pytest.raises(TypeError, match="host"):
            mixed()


def test_numpy_refuses_to_take_device_arrays_as_host_arrays(monkeypatch):
    """np.asarray(a CuPy array) is CuPy's TypeError ("Implicit conversion to a NumPy array is not
    allowed"), where NumPy would view its own subclass: under no_implicit_host_copies each converter
    refuses a device array and a list holding one, takes host data as before, and lets NumPy's own
    functions convert (the stand-in's functions are NumPy's, which CuPy's replace)."""
    cp = sim.numpy_as_cupy()
    a = cp.arange(4, dtype=cp.float32)
    sim.no_implicit_host_copies(monkeypatch)
    for convert in (np.asarray, np.array, np.asanyarray, np.ascontiguousarray):
        for given in (a, [a, a], (a[0], a[1])):
            with pytest.raises(TypeError, match="implicit conversion"):
                convert(given)
        assert convert([1.0, 2.0]).tolist() == [1.0, 2.0]
    assert type(a.get()) is np.ndarray and cp.asnumpy(a).tolist() == [0, 1, 2, 3]
    assert isinstance(cp.pad(a, (0, 1)), sim.DeviceArray) and isinstance(cp.stack([a, a]), sim.DeviceArray)
    monkeypatch.undo()
    assert type(np.asarray(a)) is np.ndarray  # what NumPy does without the guard, which hid the copy


def test_fake_cupy_refuses_a_scatter_that_writes_an_element_twice():
    """Through index arrays CuPy writes repeated elements in no defined order (NumPy: the last wins),
    so a scatter must name each element once; reads, slices and distinct indices are as NumPy's."""
    cp = sim.numpy_as_cupy()
    a = cp.zeros((4, 3), cp.float32)
    a[cp.asarray([2, 0])] = cp.ones((2, 3), cp.float32)
    a[cp.asarray([1, 3]), cp.asarray([2, 2])] = 5
    a[:, 0] = 7  # no index array
    assert cp.asnumpy(a).tolist() == [[7, 1, 1], [7, 0, 5], [7, 1, 1], [7, 0, 5]]
    assert cp.asnumpy(a[cp.asarray([1, 1])]).tolist() == [[7, 0, 5]] * 2  # reading twice is fine
    for index in (cp.asarray([2, 2]), cp.asarray([0, -4]), (cp.asarray([1, 1]), cp.asarray([0, 0])),
                  (slice(None), cp.asarray([2, 1, 2]))):
        with pytest.raises(ValueError, match="more than once"):
            a[index] = 0
    b = cp.zeros(6, cp.float32)
    b[cp.asarray([5, 1])] += cp.ones(2, cp.float32)  # a read and a write through distinct indices
    assert cp.asnumpy(b).tolist() == [0, 1, 0, 0, 0, 1]
