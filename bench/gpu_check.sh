#!/usr/bin/env bash
# The GPU session's device call (all parts: under 8.5 minutes on an H100; call the device tool with
# timeout_s=540): install the project, run the gpu tests, then the 20b-shaped benchmark, then, with
# the time left, the MoE dispatch benchmark and the notebooks on the GPU. JSON and logs land under
# $OUT (the device tool's output folder).
#
#   bash bench/gpu_check.sh                  # every part, from the repository root, on a machine with a GPU
#   bash bench/gpu_check.sh bench moe        # only these parts (of: tests bench moe notebooks), e.g. a rerun
#   bash bench/gpu_check.sh 120b             # the gpt-oss-120b shape (issue 6: fits 80 GB, decode >= 250 tok/s)
#   bash bench/gpu_check.sh sanitize         # compute-sanitizer's memcheck, synccheck, racecheck (bench/sanitize.py)
#
# $OUT/gpu_check.json: device, date, commit, gpu tests passed/failed, rel errors, copy bandwidth,
# prefill tok/s at 128 / 2k / 8k tokens, decode tok/s at 128 / 4k / 32k context with bytes per token
# and % of the floor, one decode step's time per op, transformers' bf16 decode on the same GPU,
# weights / KV cache / peak GPU memory, each decode kernel's GB/s; a part that fails records its
# error there and the next one runs. Written section by section; the table is printed last.
# $OUT/moe-dispatch-<date>-cuda.json: issue 5's table on the GPU.
# The notebooks need modules the device image lacks: `bash bench/device_wheels.sh` here first, and
# name .whl in the call's carry; they are installed from there.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# Every launch runs on its CuPy arrays' stream (kernels/common_cuda.stream_of). numba-cuda >= 0.30 (what
# pyproject.toml asks) takes CuPy arrays through DLPack; older ones, should the device image hold one,
# take them through the CUDA Array Interface and synchronize their stream at every launch, which a
# stream capturing a CUDA graph refuses. versions.txt says which ran.
export NUMBA_CUDA_ARRAY_INTERFACE_SYNC=0
# the commit measured: the device machine's copy of the tree has no .git, so device_wheels.sh notes it
# in .whl/commit (run it after the last commit) or GPTOSS_COMMIT is set in the call
[ -z "${GPTOSS_COMMIT:-}" ] && [ -s .whl/commit ] && export GPTOSS_COMMIT=$(cat .whl/commit)
parts=" ${*:-tests bench moe notebooks} "
wants() { [[ "$parts" == *" $1 "* ]]; }
# seconds for the whole script; the benchmark and then the optional parts use what is left (a rerun on
# the still-warm machine, with the device time that is left: GPTOSS_LIMIT=150 bash bench/gpu_check.sh moe)
LIMIT=${GPTOSS_LIMIT:-510}

python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -3
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        2>&1 | tail -3 && export PYTHONPATH=/tmp/site
fi
# the device tool returns at most 8 files from $OUT: the card and the versions share one
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/versions.txt"
python3 -c "import importlib.metadata as m; print(*sorted({d.metadata['Name'] + ' ' + d.version for d in m.distributions()
    if d.metadata['Name'].lower().startswith(('cupy', 'numba', 'cuda-', 'torch', 'transformers'))}))" 2>&1 | tee -a "$OUT/versions.txt"
python3 -c "import importlib.util as u; print('notebook modules missing:', ' '.join(m for m in
    ['nbclient', 'nbformat', 'ipykernel', 'matplotlib', 'bpe_openai', 'tokenizers'] if u.find_spec(m) is None) or 'none')" \
    2>&1 | tee -a "$OUT/versions.txt"

# Every part launches Numba kernels on CuPy arrays: try one first. Should the image's numba-cuda fail
# (older releases compile nothing with numba 0.68), the one CI tests, carried in .whl/fallback/, goes
# first on PYTHONPATH. versions.txt says what happened.
smoke_launch() {
    timeout 120 python3 - <<'EOF'
import cupy as cp
from numba import cuda

import gptoss_np.kernels.common_cuda  # noqa: F401 (numba-cuda 0.30 compiles nothing with NumPy 2.5 without it)


@cuda.jit
def index_twice(x):
    i = cuda.grid(1)
    if i < x.size:
        x[i] = 2 * i


x = cp.zeros(100, cp.float32)
index_twice[4, 32](x)
assert float(x.sum()) == 99 * 100, float(x.sum())
print("smoke launch: a Numba kernel ran on a CuPy array")
EOF
}
if ! smoke_launch >> "$OUT/versions.txt" 2>&1 && compgen -G ".whl/fallback/*.whl" > /dev/null; then
    echo "the image's numba-cuda failed the smoke launch: using $(cd .whl/fallback && ls)" | tee -a "$OUT/versions.txt"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site-numba-cuda \
        .whl/fallback/*.whl 2>&1 | tail -3
    export PYTHONPATH=/tmp/site-numba-cuda${PYTHONPATH:+:$PYTHONPATH}
    smoke_launch >> "$OUT/versions.txt" 2>&1 || echo "the carried numba-cuda failed it too" | tee -a "$OUT/versions.txt"
fi
tail -1 "$OUT/versions.txt"

# A part's time limit sends SIGINT first: pytest then stops at the test it is in and still writes its
# JUnit XML and summary, gpu.py's traceback says where it was (its JSON is saved section by section)
skipped() { echo "gpu_check.sh: $1 skipped: $2" | tee -a "$OUT/versions.txt"; }
tests_exit=""
if wants tests; then
    timeout -s INT -k 15 240 python3 -m pytest -q -rfE -m gpu tests/test_gpu.py -p no:cacheprovider --durations=5 \
        --junitxml="$OUT/gpu_tests.xml" 2>&1 | tee "$OUT/gpu_tests.log" | tail -40
    tests_exit=${PIPESTATUS[0]}
    [ "$tests_exit" -eq 124 ] && echo "gpu_check.sh: the gpu tests were cut off at 240 s" | tee -a "$OUT/versions.txt"
fi
budget=$((LIMIT - SECONDS - 15))
if wants bench && [ "$budget" -le 60 ]; then
    skipped bench "${budget} s left"
elif wants bench; then
    tests=()
    [ -s "$OUT/gpu_tests.xml" ] && tests=(--tests "$OUT/gpu_tests.xml" --tests-exit "${tests_exit:-0}")
    timeout -s INT -k 15 "$budget" python3 bench/gpu.py --json "$OUT/gpu_check.json" "${tests[@]}" --profile \
        --variants --transformers 2>&1 | tee "$OUT/gpu_bench.log" | tail -60
fi
if wants 120b; then  # not among the default parts: ~65 GB of weights to draw, its own call
    timeout 300 python3 bench/gpu.py --json "$OUT/gpu_check_120b.json" --preset gpt-oss-120b --contexts 128,1024 \
        --prompts 128 --decode 16 2>&1 | tee "$OUT/gpu_bench_120b.log" | tail -40
fi
if wants sanitize; then  # not among the default parts: its own call, ~1-5 min (the three tools' slowdowns are unmeasured)
    for tool in memcheck synccheck racecheck; do
        echo "== compute-sanitizer --tool $tool"
        timeout 150 compute-sanitizer --tool "$tool" --error-exitcode 9 python3 bench/sanitize.py 2>&1 | tail -40
        echo "== exit ${PIPESTATUS[0]} (0: clean, 9: errors found, 124: timed out)"
    done 2>&1 | tee "$OUT/sanitize.log"
fi
# with the time left: the MoE dispatch timings (issue 5)
left=$((LIMIT - SECONDS))
if wants moe && [ "$left" -le 45 ]; then
    skipped moe "${left} s left"
elif wants moe; then  # its JSON is written after each row
    timeout -s INT -k 15 "$left" python3 bench/moe_dispatch.py --device cuda --out "$OUT" \
        --checkpoint /tmp/moe-dispatch 2>&1 | tee "$OUT/moe_dispatch.log" | tail -25
fi
# then, if the notebooks' modules are here and time is left, the walkthroughs on the GPU (issue 7)
left=$((LIMIT - SECONDS))
if wants notebooks && ! grep -q "notebook modules missing: none" "$OUT/versions.txt"; then
    skipped notebooks "modules missing (versions.txt): bash bench/device_wheels.sh here, and carry .whl"
elif wants notebooks && [ "$left" -le 120 ]; then
    skipped notebooks "${left} s left"
elif wants notebooks; then
    if folder=$(python3 -c "from gptoss_np import embedded; print(embedded.default_checkpoint())"); then
        GPTOSS_NOTEBOOK_CHECKPOINT="$folder" GPTOSS_NOTEBOOK_DEVICE=cuda timeout -s INT -k 15 "$left" python3 -m \
            pytest -q -p no:cacheprovider tests/test_notebooks.py -k runs_top 2>&1 | tee "$OUT/notebooks.log" | tail -15
    else
        skipped notebooks "the embedded checkpoint could not be built (above)"
    fi
fi
echo "gpu_check.sh: ${SECONDS} s"
