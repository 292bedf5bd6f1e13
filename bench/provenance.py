"""What a benchmark's JSON says it measured: the commit and the machine."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent


def commit() -> str:
    """The commit measured: GPTOSS_COMMIT (gpu_check.sh sets it: the device machine's copy of the tree
    has no .git), else git's word (with -dirty for uncommitted changes), else "unknown"."""
    if os.environ.get("GPTOSS_COMMIT"):
        return os.environ["GPTOSS_COMMIT"]
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=HERE)
    except OSError:  # no git
        return "unknown"
    return done.stdout.strip() or "unknown"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(ops) -> str:
    """The machine a model on `ops` runs on: the GPU's name, or the CPU's with its thread count."""
    if ops.name == "cuda":
        return ops.device_name
    return f"{cpu_name()}, {os.cpu_count()} threads"
