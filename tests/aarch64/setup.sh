#!/usr/bin/env bash
# An AArch64 Python with the engine's dependencies, run by qemu-user on this x86-64 machine, for
# tests/test_aarch64.py: the CPU engine's ARM code (the MXFP4 decode by NEON's table lookup) runs
# nowhere else here. Needs root and Debian's package registry (apt-get; it adds arm64 to dpkg's
# architectures), and PyPI (pip).
#
#   bash tests/aarch64/setup.sh DIR          # under a minute; writes DIR/python
#   GPTOSS_AARCH64_PYTHON=DIR/python python -m pytest tests/test_aarch64.py
#
# DIR/python is a wrapper: qemu-user runs Debian's arm64 python3 on DIR/root, with the dependencies'
# aarch64 wheels in DIR/site. The emulated CPU is a Neoverse N1 (Graviton2's: NEON, no SVE): qemu 7.2's
# default CPU has SME, and there OpenBLAS's SME kernels returned NaNs in float32 matrix products (with
# its Neoverse N1 kernels forced, the same emulated CPU gave none: bench/NOTES.md).
set -euo pipefail
dir=$(mkdir -p "$1" && cd "$1" && pwd)
export DEBIAN_FRONTEND=noninteractive
fail() { echo "tests/aarch64/setup.sh: $*" >&2; exit 1; }
quiet() { grep -v "$1" || true; }  # (grep's status when it prints nothing is no failure; pipefail
                                   # gives the status of what it reads from)

if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
fi
apt-get update -qq -o Acquire::Retries=3
apt-get install -y -qq -o Acquire::Retries=3 --no-install-recommends qemu-user-static > /dev/null
qemu=$(command -v qemu-aarch64-static || command -v qemu-aarch64) || fail "qemu-user has no qemu-aarch64"

# Debian's python3 for arm64 and what it and the wheels load (its dependencies, found by apt), unpacked:
# nothing is installed
version=$(apt-cache depends python3-minimal:arm64 | sed -n 's/.*Depends: python\(3\.[0-9]*\)-minimal.*/\1/p' | head -1)
[ -n "$version" ] || fail "apt knows no python3-minimal:arm64"
depends=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces \
          --no-enhances "python$version-minimal:arm64" "libpython$version-stdlib:arm64" libstdc++6:arm64)
mapfile -t packages < <(grep -x '[^ <].*:arm64' <<< "$depends" | sort -u)
rm -rf "$dir/debs" "$dir/root" "$dir/site" && mkdir -p "$dir/debs" "$dir/root"
(cd "$dir/debs" && apt-get download -qq "${packages[@]}" 2>&1 | quiet unsandboxed) \
    || fail "apt-get download of ${#packages[@]} arm64 packages failed"
for deb in "$dir"/debs/*.deb; do
    dpkg-deb -x "$deb" "$dir/root"
done
rm -rf "$dir/debs"

platforms=()
for p in manylinux_2_34 manylinux_2_28 manylinux_2_17 manylinux2014; do
    platforms+=(--platform "${p}_aarch64")
done
python3 -m pip install -q --only-binary=:all: --python-version "$version" --implementation cp "${platforms[@]}" \
    --target "$dir/site" numpy numba tokenizers tqdm bpe-openai pytest 2>&1 | quiet "is ignored\|as the 'root' user" \
    || fail "pip could not fetch the aarch64 wheels"

cat > "$dir/root/usr/bin/python" <<EOF
#!/usr/bin/env bash
# python$version for AArch64 under qemu-user (tests/aarch64/setup.sh); as sys.executable it runs
# subprocesses under qemu too
export PYTHONPATH="$dir/site"\${PYTHONPATH:+:\$PYTHONPATH}
export QEMU_CPU=neoverse-n1
exec "$qemu" -L "$dir/root" -0 "\$0" "$dir/root/usr/bin/python$version" "\$@"
EOF
chmod +x "$dir/root/usr/bin/python"
ln -sf root/usr/bin/python "$dir/python"
"$dir/python" -c "import platform, numba, numpy, pytest, tokenizers, tqdm, bpe_openai
print('tests/aarch64/setup.sh:', platform.machine(), 'Python', platform.python_version(), 'numba', numba.__version__)"
