"""CUDA kernels in Numba's simulator: collected only when NUMBA_ENABLE_CUDASIM=1 was set before numba
was imported, which tests/test_kernels_cuda.py does by running this folder in a subprocess
(`NUMBA_ENABLE_CUDASIM=1 python3 -m pytest tests/cuda_sim`). A plain `pytest` run skips the folder.
The folder is a package (its __init__.py), so this conftest does not shadow tests/conftest.py.

The simulator runs every GPU thread as a Python thread, so the launch shapes are shrunk here: a few
threads per block and blocks of a few rows, which also makes the inputs' tails partial blocks.
"""

from __future__ import annotations

import os
import sys

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    collect_ignore_glob = ["test_*.py"]
else:
    # The simulated threads of a block take turns under the GIL: switching every 0.5 ms (not 5, the
    # interpreter's default) interleaves them more, which once showed a race in the simulator's own
    # shared arrays (sim.race_checked), for ~10% more time. (Before sim.blocks_without_polling, the
    # simulator's block manager polled its threads holding the GIL, and a switch interval of 50 us
    # was what made the folder run in minutes.)
    sys.setswitchinterval(5e-4)

SMALL_LAUNCHES = {
    # TILE_THREADS (4, 4): 16-row W tiles, so their rotated column groups wrap; with MIN_TILE_PAIRS 4 the
    # launcher picks tiles of 1-4 thread rows by pairs per expert
    "mxfp4_cuda": dict(GEMV_LANES=4, GEMV_WARPS=2, TILE_THREADS=(4, 4), MIN_TILE_PAIRS=4),
    # SPLIT_BELOW_N = 0: the toy models' small matrices would all take the row split, a block a row,
    # which the simulator runs slowly; test_kernel_bf16_cuda covers both paths
    "bf16_cuda": dict(GEMV_LANES=4, GEMV_WARPS=2, UNROLL=2, K_CHUNK=48, WIDEN_THREADS=16, SPLIT_BELOW_N=0),
    "bf16x3_cuda": dict(THREADS=16),
    "fp16x2_cuda": dict(SPLIT_THREADS=8, THREADS=16),
    "attention_cuda": dict(THREADS=16, ROWS=8, KEYS=4, KEYS_PER_SPLIT=8, MIN_SPLITS=4, SCORE_KEYS=2, OUT_ROWS=4),
    "norm_rope_cuda": dict(THREADS=16),
    "moe_cuda": dict(THREADS=32, ROUTE_THREADS=4, SORT_THREADS=8),
    "sampling_cuda": dict(THREADS=8, ARGMAX_BLOCKS=3),
    "kv_cache_cuda": dict(THREADS=8),
}


@pytest.fixture(autouse=True)
def small_launches(request, monkeypatch):
    """SMALL_LAUNCHES, except in tests marked shipped_launches: those run the block shapes, tiles and
    chunks a GPU runs (setting only the sizes from which a launcher picks a path or a grid, to keep
    to a few blocks), so that a kernel that works only with the simulator's small blocks shows."""
    import importlib
    shipped = request.node.get_closest_marker("shipped_launches") is not None
    for module, values in SMALL_LAUNCHES.items():
        m = importlib.import_module(f"gptoss_np.kernels.{module}")
        if not shipped:
            for name, value in values.items():
                monkeypatch.setattr(m, name, value)
        if hasattr(m, "SHARED_ALIGN"):  # the simulator's shared arrays take no alignment
            monkeypatch.setattr(m, "SHARED_ALIGN", None)


@pytest.fixture(autouse=True)
def gpu_launch_limits(monkeypatch):
    """Every simulated launch within CUDA's limits on grids and blocks (sim.launch_as_a_gpu), its
    arrays checked for races (sim.race_checked), its blocks' threads meeting at barriers that nothing
    polls (sim.blocks_without_polling), the scratch arrays that launchers make poisoned
    (sim.scratch_poisoned)."""
    from cuda_sim import sim
    sim.launch_as_a_gpu(monkeypatch)
    sim.blocks_without_polling(monkeypatch)  # before race_checked, which wraps its syncthreads
    sim.race_checked(monkeypatch)
    sim.scratch_poisoned(monkeypatch, [f"gptoss_np.kernels.{module}" for module in SMALL_LAUNCHES])


def pytest_sessionfinish(session):
    """The kernels this session launched, one "module.kernel" a line, into the file that
    GPTOSS_SIM_LAUNCHED names (test_simulator checks that every kernel ran)."""
    path = os.environ.get("GPTOSS_SIM_LAUNCHED")
    if path and os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        from cuda_sim import sim
        with open(path, "w") as f:
            f.write("".join(f"{name}\n" for name in sorted(sim._State.ever_launched)))
