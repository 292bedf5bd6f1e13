#!/usr/bin/env bash
# Wheels that the device image lacks for running the notebooks there (issue 7): nbclient, nbformat,
# ipykernel and what they need, and bpe-openai (the embedded model's tokenizer); and, in .whl/fallback/,
# the numba-cuda that CI tests (2 MB), which gpu_check.sh installs only if the image's own cannot
# launch a Numba kernel on a CuPy array (older numba-cuda releases compile nothing with numba 0.68).
# Run it here, where pip reaches a package index; the wheels land in .whl/ (ignored through
# .git/info/exclude, ~55 MB, under the device tool's 64 MiB), and travel when the device call names it:
#
#   bash bench/device_wheels.sh
#   run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=540)
#
# gpu_check.sh installs them (into /tmp/site, on PYTHONPATH) when .whl/ holds any. The device's
# python3 is CPython 3.12 on x86-64 (/work/.library/device/KINDS.md), with the packages listed there.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir .whl
platforms=()
for p in manylinux_2_34 manylinux_2_28 manylinux_2_27 manylinux_2_26 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${p}_x86_64")
done
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
    -d .whl nbclient nbformat ipykernel bpe-openai 2>&1 | grep -v "is ignored" || true
# the device image has these (KINDS.md): keep its versions rather than shadow them
for name in attrs packaging psutil pygments python_dateutil six typing_extensions; do
    rm -f .whl/"${name}"-*.whl
done
mkdir .whl/fallback
python3 -m pip download -q --only-binary=:all: --no-deps --python-version 3.12 --implementation cp "${platforms[@]}" \
    -d .whl/fallback "numba-cuda>=0.30" 2>&1 | grep -v "is ignored" || true
git describe --always --dirty > .whl/commit  # the device machine's copy of the tree has no .git
ls .whl | grep -q '^bpe_openai-' || { echo "device_wheels.sh: bpe-openai was not downloaded" >&2; exit 1; }
echo "device_wheels.sh: $(ls .whl/*.whl | wc -l) wheels and $(ls .whl/fallback) as fallback, $(du -sh .whl | cut -f1) in .whl/"
