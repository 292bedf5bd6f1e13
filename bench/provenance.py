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


def cpu_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name, with its x86 family and model numbers where /proc/cpuinfo gives them: the
    dev boxes are VMs whose model name may say only "AMD EPYC", which covers Zen 2 to Zen 5."""
    try:
        first = cpuinfo.read_text().split("\n\n")[0]  # the first processor's block
    except OSError:
        first = ""
    fields = {key.strip(): value.strip() for key, value in
              (line.split(":", 1) for line in first.splitlines() if ":" in line)}
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def machine(ops) -> str:
    """The machine a model on `ops` runs on: the GPU's name, or the CPU's with its thread count."""
    if ops.name == "cuda":
        return ops.device_name
    return f"{cpu_name()}, {os.cpu_count()} threads"
