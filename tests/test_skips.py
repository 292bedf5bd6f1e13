"""CI's guard against skips (tests/conftest.py): with GPTOSS_SKIPS_ALLOWED set, a skip that it does not
allow fails the run and is named; tests marked gpu may always skip."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest

from conftest import ROOT


@pytest.mark.parametrize("allowed, code", [(None, 0), ("", 1), ("tests/test_python312.py", 0)])
def test_only_allowed_skips_pass_in_ci(allowed, code):
    """tests/test_python312.py skips without its Python 3.12, and tests/test_gpu.py without a GPU."""
    env = {k: v for k, v in os.environ.items() if k not in ("GPTOSS_PY312_PYTHON", "GPTOSS_SKIPS_ALLOWED")}
    if allowed is not None:
        env["GPTOSS_SKIPS_ALLOWED"] = allowed
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_python312.py",
                           "tests/test_gpu.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == code, done.stdout[-3000:] + done.stderr[-3000:]
    heading = "skips that GPTOSS_SKIPS_ALLOWED does not allow"
    assert (heading in done.stdout) == (code == 1)
    if code == 1:  # the one skip named, not the gpu tests'
        named = done.stdout.split(heading)[1]
        assert "tests/test_python312.py::" in named and "test_gpu.py" not in named


def test_a_module_skipped_whole_is_checked_too(monkeypatch):
    """A module skipped at collection (importorskip at its top) is reported by pytest_collectreport, not
    pytest_runtest_logreport: the guard must see it there too, and let an allowed prefix by."""
    import conftest
    report = types.SimpleNamespace(skipped=True, nodeid="tests/test_harmony.py",
                                   longrepr=("tests/test_harmony.py", 19, "Skipped: could not import 'bpe_openai'"))
    for allowed, expected in (("", ["tests/test_harmony.py: Skipped: could not import 'bpe_openai'"]),
                              ("tests/test_python312.py tests/test_harmony", [])):
        monkeypatch.setattr(conftest, "SKIPS_ALLOWED", allowed)
        monkeypatch.setattr(conftest, "unexpected_skips", [])
        conftest.pytest_collectreport(report)
        assert conftest.unexpected_skips == expected
    monkeypatch.setattr(conftest, "SKIPS_ALLOWED", None)  # outside CI: every skip may pass
    conftest.pytest_collectreport(report)
    assert conftest.unexpected_skips == []


def test_only_tests_marked_gpu_skip_as_gpu_tests(monkeypatch):
    """A test whose parametrize id (or folder) is "gpu" has "gpu" among its keywords without the mark:
    its skip is checked as any other's."""
    import conftest
    monkeypatch.setattr(conftest, "SKIPS_ALLOWED", "")
    monkeypatch.setattr(conftest, "unexpected_skips", [])
    monkeypatch.setattr(conftest, "gpu_marked", {"tests/test_gpu.py::test_logits"})
    for nodeid in ("tests/test_gpu.py::test_logits", "tests/test_x.py::test_y[gpu]"):
        conftest.pytest_runtest_logreport(types.SimpleNamespace(
            skipped=True, nodeid=nodeid, keywords={"gpu": 1, nodeid.rsplit("::")[-1]: 1}, longrepr=("f", 1, "no GPU")))
    assert conftest.unexpected_skips == ["tests/test_x.py::test_y[gpu]: no GPU"]
