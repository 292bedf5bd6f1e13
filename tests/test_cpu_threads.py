"""OpenBLAS's idle worker threads sleep at once in gptoss_np's process (gptoss_np/cpu_threads.py).

Each check runs in a fresh Python, as a user's process would: it makes a BLAS call, waits 20 ms, and
counts the threads still running. OpenBLAS's workers spin for about 0.1 s after a call by default, so
they are running then. Where gptoss_np is imported before NumPy, they must be asleep from the start;
where NumPy comes first, once the engine has loaded a model on the CPU, or, with an OpenBLAS that
hides the entry points that takes (NumPy 2.5's), the engine warns, saying what to do."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or (os.cpu_count() or 1) < 2,
                                reason="reads /proc/self/task; OpenBLAS starts no workers on one core")

NUMPY_FIRST, GPTOSS_NP_FIRST = "numpy first", "gptoss_np first"

SCRIPT = """
import ctypes, json, logging, os, sys, time
from pathlib import Path
if sys.argv[1] == "gptoss_np first":
    import gptoss_np
import numpy as np
import gptoss_np
from gptoss_np import cpu_threads, embedded

warnings = []
class Kept(logging.Handler):
    def emit(self, record):
        warnings.append(record.getMessage())
logging.getLogger("gptoss_np.cpu_threads").addHandler(Kept())

def running_threads():
    a = np.ones((512, 512), np.float32)
    a @ a  # large enough for OpenBLAS to use its workers
    time.sleep(0.02)
    states = []
    for task in Path("/proc/self/task").iterdir():
        if int(task.name) != os.getpid():
            stat = (task / "stat").read_text()
            states.append(stat[stat.rindex(")") + 2])  # the state follows the name in parentheses
    return states.count("R")

before = running_threads()
gptoss_np.load(embedded.default_checkpoint(), device="cpu")
after = running_threads()
x = np.random.default_rng(0).standard_normal((300, 200))
product_ok = bool(np.allclose(x @ x.T, np.einsum("ik,jk->ij", x, x)))  # BLAS still works, workers restarted
libraries = cpu_threads._loaded_openblas()
print(json.dumps(dict(before=before, after=after, env=os.environ.get("OPENBLAS_THREAD_TIMEOUT"),
                      libraries=libraries, again=cpu_threads.shorten_blas_spin(), product_ok=product_ok,
                      warnings=[w for w in warnings if "idle threads" in w],
                      changeable=all(hasattr(ctypes.CDLL(p), "blas_thread_shutdown_") for p in libraries))))
"""


def run(order: str, env_extra: dict | None = None, script: str = SCRIPT, *args: str) -> dict:
    """`script` in a fresh Python, its arguments `order` and `args`, without the OPENBLAS_THREAD_TIMEOUT
    of this process (with env_extra's): the JSON of its last line."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"} | (env_extra or {})
    done = subprocess.run([sys.executable, "-c", script, order, *args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    if not result["libraries"]:
        pytest.skip("NumPy's BLAS here is not OpenBLAS")
    return result


def test_loading_on_the_cpu_puts_idle_blas_threads_to_sleep():
    r = run(NUMPY_FIRST)
    assert r["before"] >= 1, f"OpenBLAS's workers did not spin after a call to begin with: {r}"
    if r["changeable"]:
        assert r["after"] == 0, f"BLAS threads still running 20 ms after a call: {r}"
        assert r["warnings"] == []
    else:  # an OpenBLAS that hides its entry points: the user is told what to do, once
        assert r["after"] >= 1
        assert len(r["warnings"]) == 1 and "Import gptoss_np before NumPy" in r["warnings"][0], r
    assert r["env"] is None, "the process's environment must be left as it was"
    assert r["again"] == [], "a second call changes nothing"
    assert r["product_ok"]


def test_importing_gptoss_np_before_numpy_loads_openblas_with_idle_threads_asleep():
    r = run(GPTOSS_NP_FIRST)
    assert r["before"] == 0 and r["after"] == 0, f"BLAS threads still running 20 ms after a call: {r}"
    assert r["env"] is None, "the process's environment must be left as it was"
    assert r["warnings"] == [] and r["again"] == []
    assert r["product_ok"]


@pytest.mark.parametrize("order", [NUMPY_FIRST, GPTOSS_NP_FIRST])
def test_a_users_openblas_thread_timeout_is_kept(order):
    r = run(order, {"OPENBLAS_THREAD_TIMEOUT": "28"})  # OpenBLAS's own default spin, asked for explicitly
    assert r["env"] == "28"
    assert r["after"] >= 1, f"the user's spin setting was overridden: {r}"
    assert r["warnings"] == []


CALLS = """
import ctypes, json, logging, os, sys
if sys.argv[1] == "gptoss_np first":
    import gptoss_np
import numpy as np
from gptoss_np import cpu_threads

records = []
class Kept(logging.Handler):
    def emit(self, record):
        records.append([record.levelname, record.getMessage()])
logging.getLogger("gptoss_np.cpu_threads").addHandler(Kept())
libraries = cpu_threads._loaded_openblas()
changeable = all(hasattr(ctypes.CDLL(p), "blas_thread_shutdown_") for p in libraries)
if sys.argv[2] == "entry points hidden":  # as NumPy 2.5's OpenBLAS has them
    class Hidden(ctypes.CDLL):
        def __getattr__(self, name):
            if name in ("openblas_thread_timeout", "openblas_read_env", "blas_thread_shutdown_"):
                raise AttributeError(name)
            return super().__getattr__(name)
    ctypes.CDLL = Hidden
elif sys.argv[2] == "variable set in the process":
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = "28"
np.ones((256, 256)) @ np.ones((256, 256))
calls = [cpu_threads.shorten_blas_spin(), cpu_threads.shorten_blas_spin()]
print(json.dumps(dict(calls=calls, libraries=libraries, changeable=changeable, records=records,
                      env=os.environ.get("OPENBLAS_THREAD_TIMEOUT"))))
"""


def calls(order: str, case: str) -> dict:
    """Two calls of shorten_blas_spin in a fresh Python: what each returned, and what was logged."""
    return run(order, None, CALLS, case)


def test_shorten_blas_spin_returns_the_libraries_it_changed():
    """Called where NumPy came first: the first call changes every OpenBLAS loaded and says which, the second
    none (an OpenBLAS that hides the entry points it takes is left as it is, with one warning)."""
    r = calls(NUMPY_FIRST, "as loaded")
    if r["changeable"]:
        assert r["calls"] == [r["libraries"], []] and r["records"] == []
    else:
        assert r["calls"] == [[], []] and len(r["records"]) == 1


def test_a_variable_the_user_sets_in_the_process_is_kept():
    """OPENBLAS_THREAD_TIMEOUT set after NumPy loaded: nothing changes, and the variable stays."""
    r = calls(NUMPY_FIRST, "variable set in the process")
    assert r["calls"] == [[], []] and r["env"] == "28" and r["records"] == []


@pytest.mark.parametrize("order", [NUMPY_FIRST, GPTOSS_NP_FIRST])
def test_an_openblas_that_hides_its_entry_points_warns_once_if_it_loaded_first(order):
    """Emulated here (ctypes finds no openblas_thread_timeout, openblas_read_env, blas_thread_shutdown_):
    nothing changes; loaded before gptoss_np, one warning says what to do; loaded by it, none is needed."""
    r = calls(order, "entry points hidden")
    assert r["calls"] == [[], []]
    if order == GPTOSS_NP_FIRST:
        assert r["records"] == []
    else:
        assert len(r["records"]) == 1 and r["records"][0][0] == "WARNING", r
        assert "Import gptoss_np before NumPy" in r["records"][0][1]
