"""The walkthrough notebooks of examples/notebooks: each runs top to bottom, and is committed stripped.

Running them needs nbclient, nbformat, ipykernel (the `python3` kernel) and matplotlib. They use the
default cache (`$GPTOSS_NP_CACHE` or ~/.cache/gptoss_np), so the embedded model is written once.
With GPTOSS_NOTEBOOK_CHECKPOINT set (a checkpoint folder), they run on it instead, on
GPTOSS_NOTEBOOK_DEVICE ("auto" unless set): bench/gpu_check.sh runs them so on a GPU.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

FOLDER = Path(__file__).resolve().parent.parent / "examples" / "notebooks"
NOTEBOOKS = sorted(FOLDER.glob("*.ipynb"))
EXPECTED = ["01_mxfp4", "02_attention_sinks", "03_rope_yarn", "04_moe_routing", "05_generation"]
CELL_TIMEOUT_S = 300
CHECKPOINT = os.environ.get("GPTOSS_NOTEBOOK_CHECKPOINT")
DEVICE = os.environ.get("GPTOSS_NOTEBOOK_DEVICE", "auto")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # the colours of IPython's tracebacks


def test_the_five_notebooks_are_there():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_stripped_and_on_the_embedded_model(path):
    cells = json.loads(path.read_text())["cells"]
    code = [cell for cell in cells if cell["cell_type"] == "code"]
    for i, cell in enumerate(code):
        assert cell["outputs"] == [], f"{path.name}: code cell {i} has outputs (clear them before committing)"
        assert cell["execution_count"] is None, f"{path.name}: code cell {i} has an execution count"
    assert "CHECKPOINT = None" in "".join(code[0]["source"]), f"{path.name}: the first code cell must set CHECKPOINT = None"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_runs_top_to_bottom(path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(path, as_version=4)
    if CHECKPOINT:  # the first code cell sets CHECKPOINT and DEVICE
        first = next(cell for cell in notebook.cells if cell.cell_type == "code")
        first.source = f"CHECKPOINT = {CHECKPOINT!r}\nDEVICE = {DEVICE!r}\n"
    client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as error:
        pytest.fail(f"{path.name} failed:\n{_ANSI.sub('', str(error))}", pytrace=False)
