"""The CPU's two thread pools: NumPy's BLAS and the engine's Numba kernels take turns on the same cores.

A forward pass on the CPU alternates BLAS matrix products (NumPy's `@`: prefill's dense projections
and attention) with Numba's parallel kernels (the MXFP4 experts, decode's GEMVs), and each pool's idle
threads spin a while before they sleep. Numba's spin is kept short in kernels/__init__.py. OpenBLAS, the
BLAS of NumPy's wheels, spins its idle workers for 2**28 cycles (about 0.1 s) after each call; a Numba
kernel that starts meanwhile shares cores with the spinners and runs at the pace of its slowest thread,
about half speed. On a 2-core box, with workers that sleep at once, a 128-token prefill ran 1.6x
faster and the decode steps right after a prefill 1.3-1.4x (bench/NOTES.md, "CPU: threads").

OpenBLAS reads how long its workers spin (OPENBLAS_THREAD_TIMEOUT, log2 of the cycles, 4 to 30) as it
loads. Two ways to the shortest spin:
  - `load_numpy_with_short_blas_spin`, when gptoss_np is imported before NumPy: NumPy is imported
    then, with the variable set while its OpenBLAS loads;
  - `shorten_blas_spin`, when a model is loaded on the CPU: for an OpenBLAS loaded earlier, it sets
    the variable, has OpenBLAS read its environment again and stops the workers; the next BLAS call
    starts them again, with the short spin. (OpenBLAS stops and restarts them the same way around a
    fork.) Newer builds (NumPy 2.5's OpenBLAS 0.3.34) hide the entry points this takes; there it
    warns, once, saying to import gptoss_np first.
The environment is left as it was, and a user who sets OPENBLAS_THREAD_TIMEOUT keeps that setting.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
from pathlib import Path

log = logging.getLogger(__name__)

TIMEOUT_VARIABLE = "OPENBLAS_THREAD_TIMEOUT"
SHORTEST_SPIN = 4  # log2 of the cycles an idle OpenBLAS worker spins: 16 cycles, then it sleeps
PTHREADS = 1  # openblas_get_parallel() of a build with its own threads (an OpenMP build's spin is OpenMP's)
_lock = threading.Lock()  # two models loaded at once in two threads change OpenBLAS once
_short_from_the_start: set[str] = set()  # the OpenBLAS libraries that loaded with the short spin
_warned = False  # that an OpenBLAS loaded earlier cannot be changed


def load_numpy_with_short_blas_spin() -> None:
    """Import NumPy, whose OpenBLAS reads OPENBLAS_THREAD_TIMEOUT as it loads, with the variable set to
    the shortest spin; nothing happens where NumPy is imported already or the user set the variable.
    gptoss_np's __init__ calls this before anything imports NumPy."""
    if "numpy" in sys.modules or TIMEOUT_VARIABLE in os.environ:
        return
    os.environ[TIMEOUT_VARIABLE] = str(SHORTEST_SPIN)
    try:
        import numpy  # noqa: F401
    finally:
        del os.environ[TIMEOUT_VARIABLE]  # OpenBLAS keeps what it read; the environment is as it was
    _short_from_the_start.update(_loaded_openblas())


def shorten_blas_spin() -> list[str]:
    """Have every loaded OpenBLAS put its idle worker threads to sleep at once; returns the libraries
    changed. Nothing changes where no OpenBLAS with its own threads is loaded (another BLAS, or one on
    OpenMP's threads; macOS and Windows are not looked at), where OPENBLAS_THREAD_TIMEOUT is set, where
    OpenBLAS loaded with the short spin, or a second time; an OpenBLAS that hides the entry points
    this takes is left as it is, with a warning. Stopping the workers is safe while no other thread is
    inside a BLAS call (gptoss_np.load calls this)."""
    changed, unchangeable = [], []
    with _lock:
        if TIMEOUT_VARIABLE in os.environ:
            return changed
        for path in sorted(set(_loaded_openblas()) - _short_from_the_start):
            try:
                lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD)
            except OSError:
                continue
            if _threading(lib) != PTHREADS:  # OpenMP's threads, or not an OpenBLAS
                continue
            try:
                timeout, read_env, stop_workers = lib.openblas_thread_timeout, lib.openblas_read_env, \
                    lib.blas_thread_shutdown_
            except AttributeError:
                unchangeable.append(path)
                continue
            if timeout() != 0:  # set at start, or done already
                continue
            os.environ[TIMEOUT_VARIABLE] = str(SHORTEST_SPIN)
            try:
                read_env()
            finally:
                del os.environ[TIMEOUT_VARIABLE]  # OpenBLAS keeps what it read; the environment is as it was
            stop_workers()
            changed.append(path)
            log.info("%s: idle BLAS threads now sleep at once instead of spinning ~0.1 s beside Numba's",
                     Path(path).name)
        _warn_once(unchangeable)
        return changed


def _warn_once(unchangeable: list[str]) -> None:
    global _warned
    if unchangeable and not _warned:
        _warned = True
        log.warning("%s loaded before gptoss_np was imported, and this OpenBLAS offers no way to shorten its idle "
                    "threads' spin afterwards: they spin after each BLAS call beside the engine's CPU kernels, "
                    "which slows a prompt's prefill (1.6x on 2 cores). Import gptoss_np before NumPy, or set "
                    "%s=%d before starting Python.", ", ".join(Path(p).name for p in unchangeable),
                    TIMEOUT_VARIABLE, SHORTEST_SPIN)


def _threading(lib) -> int | None:
    """openblas_get_parallel(): 0 sequential, 1 its own threads (pthreads), 2 OpenMP's; None if unknown.
    Its name carries the prefix and suffix of the build (NumPy's wheels: scipy_ ... 64_)."""
    for prefix in ("", "scipy_"):
        for suffix in ("", "64_"):
            get = getattr(lib, f"{prefix}openblas_get_parallel{suffix}", None)
            if get is not None:
                return get()
    return None


def _loaded_openblas() -> list[str]:
    """Paths of the OpenBLAS libraries mapped into this process (Linux's /proc/self/maps)."""
    try:
        with open("/proc/self/maps") as maps:
            fields = [line.split(maxsplit=5) for line in maps]  # address, perms, offset, device, inode, path
    except OSError:
        return []
    paths = {f[5].strip() for f in fields if len(f) == 6}
    return sorted(p for p in paths if "openblas" in Path(p).name.lower() and ".so" in Path(p).name)
