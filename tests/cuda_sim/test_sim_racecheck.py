"""The simulator's race check (sim.RaceCheckedArray, on in every simulator test): it must catch a
missing cuda.syncthreads(), blocks that depend on each other and reads of shared memory that nothing
wrote, and let be what has no race."""

from __future__ import annotations

import numpy as np
import pytest
from numba import cuda

from cuda_sim.sim import DivergentBarrier, Race, UninitializedRead


@cuda.jit
def _neighbour_sum(x, out, barrier):
    """out[i] = x[i] + x[i + 1 mod n] through shared memory; without the barrier, thread i may read
    its neighbour's element before the neighbour wrote it."""
    buf = cuda.shared.array(8, np.float32)
    i = cuda.threadIdx.x
    buf[i] = x[i]
    if barrier:
        cuda.syncthreads()
    out[i] = buf[i] + buf[(i + 1) % cuda.blockDim.x]


@cuda.jit
def _flag_and_count(x, out):
    """Every thread with a positive value sets one flag (all write 1) and counts itself atomically."""
    flag = cuda.shared.array(1, np.int32)
    count = cuda.shared.array(1, np.int32)
    i = cuda.threadIdx.x
    if i == 0:
        flag[0] = 0
        count[0] = 0
    cuda.syncthreads()
    if x[i] > 0:
        flag[0] = 1
        cuda.atomic.add(count, 0, 1)
    cuda.syncthreads()
    if i == 0:
        out[0], out[1] = flag[0], count[0]


@cuda.jit
def _prefix(x, out):
    """out[b] = x[b] + out[b - 1]: each block reads what the block before it wrote, which the
    simulator (blocks in order) gets right and a GPU (blocks in any order, at once) does not."""
    b = cuda.blockIdx.x
    if cuda.threadIdx.x == 0:
        out[b] = x[b] + (out[b - 1] if b > 0 else np.float32(0))


@cuda.jit
def _overlapping_rows(x, out):
    """Block b writes rows b and b + 1 of out: two blocks write each inner row."""
    b, i = cuda.blockIdx.x, cuda.threadIdx.x
    for r in range(b, min(b + 2, out.shape[0])):
        out[r, i] = x[b, i]


@cuda.jit
def _overlapping_row_views(x, out):
    """_overlapping_rows through views of the rows (out[r], then an element of it)."""
    b, i = cuda.blockIdx.x, cuda.threadIdx.x
    for r in range(b, min(b + 2, out.shape[0])):
        row = out[r]
        row[i] = x[b, i]


def test_a_missing_barrier_is_a_race():
    x, out = np.arange(8, dtype=np.float32), np.zeros(8, np.float32)
    _neighbour_sum[1, 8](x, out, True)
    np.testing.assert_array_equal(out, x + np.roll(x, -1))
    # the neighbour's element read after its write (a race) or before (uninitialized, then a race)
    with pytest.raises((Race, UninitializedRead), match="reads what was written by|overwrites what was read by|"
                                                        "no thread of its block has written"):
        _neighbour_sum[1, 8](x, out, False)


def test_a_shared_flag_and_atomics_are_no_race():
    out = np.zeros(2, np.int32)
    _flag_and_count[1, 8](np.array([1, -1, 2, 3, -4, 5, -6, 7], np.float32), out)
    assert out.tolist() == [1, 5]


def test_blocks_depending_on_each_other_race():
    x = np.arange(1, 5, dtype=np.float32)
    with pytest.raises(Race, match="reads what was written by thread 0 of block"):
        _prefix[4, 2](x, np.zeros(4, np.float32))
    with pytest.raises(Race, match="overwrites what was written by"):
        _overlapping_rows[3, 4](np.arange(12, dtype=np.float32).reshape(3, 4), np.zeros((3, 4), np.float32))
    with pytest.raises(Race, match="overwrites what was written by"):  # a view is checked as its array
        _overlapping_row_views[3, 4](np.arange(12, dtype=np.float32).reshape(3, 4), np.zeros((3, 4), np.float32))


@cuda.jit
def _tail_sum(x, out):
    """out[0] = the sum of x through a shared array of 8, of which only len(x) elements are written."""
    buf = cuda.shared.array(8, np.float32)
    i = cuda.threadIdx.x
    if i < x.shape[0]:
        buf[i] = x[i]
    cuda.syncthreads()
    if i == 0:
        total = np.float32(0)
        for j in range(8):
            total += buf[j]
        out[0] = total


def test_a_read_of_what_no_thread_wrote_is_uninitialized():
    with pytest.raises(UninitializedRead, match=r"shared array float32\[8\], element \[5\]: thread 0 of block"):
        _tail_sum[1, 8](np.ones(5, np.float32), np.zeros(1, np.float32))


@cuda.jit(device=True)
def _staged(buf, x, i):
    """buf[i] = x[i], then a barrier: a device function with a cuda.syncthreads() of its own."""
    buf[i] = x[i]
    cuda.syncthreads()


@cuda.jit
def _halves(x, out, diverge):
    """out[i] = x[i] + x[i + 1 mod n] through shared memory; with `diverge`, the even threads stage
    through one call of _staged and the odd ones through another: their barriers differ."""
    buf = cuda.shared.array(8, np.float32)
    i = cuda.threadIdx.x
    if diverge and i % 2 == 0:
        _staged(buf, x, i)
    else:
        _staged(buf, x, i)
    out[i] = buf[i] + buf[(i + 1) % cuda.blockDim.x]


def test_threads_of_a_block_at_different_barriers_diverge():
    """The simulator releases a barrier once every thread of the block waits at one, whichever
    call each waits at; a GPU does not."""
    x, out = np.arange(8, dtype=np.float32), np.zeros(8, np.float32)
    _halves[1, 8](x, out, False)
    np.testing.assert_array_equal(out, x + np.roll(x, -1))
    with pytest.raises(DivergentBarrier, match=r"reached barrier 0 at test_sim_racecheck.py:\d+ <- "
                                               r"test_sim_racecheck.py:\d+, another thread"):
        _halves[1, 8](x, out, True)


@cuda.jit
def _read_then_overwritten(x, out, flag, reader):
    """Thread `reader` reads buf[1]; the other thread waits on an atomic flag that the reader sets after
    its read, then overwrites buf[1]. In that order every time: a write after another thread's read,
    with no barrier between (an atomic orders nothing here, as there is no fence: racecheck reports
    it on a GPU). The wait is bounded, so that a reader that raised cannot leave its block hanging."""
    buf = cuda.shared.array(2, np.float32)
    i = cuda.threadIdx.x
    buf[i] = x[i]
    cuda.syncthreads()
    if i == reader:
        out[0] = buf[1]
        cuda.atomic.exch(flag, 0, 1)
    else:
        spins = 0
        while cuda.atomic.add(flag, 0, 0) == 0 and spins < 1_000_000:
            spins += 1
        buf[1] = x[1] + np.float32(1)


@pytest.mark.parametrize("reader", [0, 1])
def test_a_write_after_another_threads_read_is_a_race(reader):
    """Whichever of the two threads comes first."""
    with pytest.raises(Race, match=rf"shared array float32\[2\], element \[1\]: thread {1 - reader} in block "
                                   rf"\(0, 0, 0\) overwrites what was read by thread {reader} of block"):
        _read_then_overwritten[1, 2](np.arange(2, dtype=np.float32), np.zeros(1, np.float32), np.zeros(1, np.int32),
                                     reader)
