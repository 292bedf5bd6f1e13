#!/usr/bin/env bash
# A venv of Python 3.12 with the newest NumPy, numba and numba-cuda that pip finds, as on the GPU machine
# (Python 3.12, NumPy 2.5; CI's own Python is 3.11, whose newest NumPy is 2.4), for
# tests/test_python312.py. It holds this checkout (editable) and the test extra's packages but torch and
# transformers (no CPU wheel of torch for 3.12 lies on this machine) and the notebook runner.
#
#   bash tests/python312/setup.sh DIR      # then GPTOSS_PY312_PYTHON=DIR/bin/python
#
# Exit status 3: this machine has no python3.12 (the tests are then skipped); any other failure says
# which step failed.
set -euo pipefail
dir=${1:?usage: setup.sh DIR}
repo=$(cd "$(dirname "$0")/../.." && pwd)
# python3.12 on the PATH, else one that pyenv holds (its shim runs only the versions it is set to)
python=python3.12
if ! "$python" -c "" 2> /dev/null; then
    python=$(ls -d "$(pyenv root 2> /dev/null || echo /nonexistent)"/versions/3.12*/bin/python3.12 2> /dev/null | tail -1)
fi
[ -n "$python" ] && "$python" -c "" 2> /dev/null || { echo "python312/setup.sh: no python3.12 on this machine" >&2; exit 3; }
"$python" -m venv "$dir" || { echo "python312/setup.sh: $python -m venv $dir failed" >&2; exit 1; }
"$dir/bin/python" -m pip install -q -e "$repo[cudasim]" pytest tiktoken "openai-harmony==0.0.8" ml_dtypes 2>&1 \
    | grep -v "is ignored" || true
"$dir/bin/python" -c "import gptoss_np, ml_dtypes, numba.cuda, openai_harmony, pytest, tiktoken" \
    || { echo "python312/setup.sh: pip did not install what the tests import (above)" >&2; exit 1; }
echo "python312/setup.sh: $("$dir/bin/python" -c 'import sys, numpy, numba; print("Python", sys.version.split()[0], "NumPy", numpy.__version__, "numba", numba.__version__)') in $dir"
