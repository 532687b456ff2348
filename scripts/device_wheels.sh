#!/usr/bin/env bash
# Fills .whl/ with the wheels that python3 on a lent nvidia-h200 machine lacks to import and
# test metaacdc; there scripts/gpu_check.sh installs them into /tmp/site (docs/gpu.md,
# "Running the GPU checks on a lent machine"). Run it here, where PyPI is reachable:
#
#     bash scripts/device_wheels.sh
#
# That machine cannot fetch anything. Its python3 (CPython 3.12, x86-64) already has torch,
# torchvision, numpy, scipy, pandas, pillow, pyyaml, tqdm, filelock, matplotlib, requests,
# cloudpickle, pytest and pytest-timeout (/work/.library/device/KINDS.md), but not these,
# pinned to the versions of the project's .venv:
#   higher, gym-notices   pure-Python wheels from PyPI
#   gym                   published as an sdist only: built here into a pure-Python wheel
#   learn2learn           built here for CPython 3.12 (DEVICE_WHEELS_PYTHON, default pyenv's
#                         3.12.1): its published C does not compile on Python >= 3.11, so, as
#                         in scripts/bootstrap.sh, the C is regenerated from the .pyx with
#                         cython<3; then tagged manylinux for the newest glibc its extensions
#                         need
# Everything is built in a throwaway folder under /tmp; .whl/ is replaced only once all
# wheels are built and checked, so it never holds two versions of one package. Fails if
# the wheels exceed 40 MiB: a run carries at most 64 MiB, the working tree included.
set -euo pipefail
cd "$(dirname "$0")/.."

PY312=${DEVICE_WHEELS_PYTHON:-/root/.pyenv/versions/3.12.1/bin/python3.12}
DEST=.whl
LIMIT_MIB=40
PURE=(higher==0.2.1 gym-notices==0.1.0)
SDIST_ONLY=(gym==0.26.2)
L2L_VERSION=0.2.0
# learn2learn's setup.py imports setuptools and (through it) distutils; its .pyx use
# neither numpy's C API nor anything of Cython 3.
BUILD_TOOLS=("cython<3" setuptools wheel)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64
    manylinux2014_x86_64 manylinux1_x86_64)

# As in bootstrap.sh: a preinstalled wheel found through find-links must not be taken
# over the registry's.
export PIP_FIND_LINKS= PIP_DISABLE_PIP_VERSION_CHECK=1

die() {
    echo "device_wheels: $*" >&2
    exit 1
}

py=$(command -v "$PY312") || die "no $PY312; set DEVICE_WHEELS_PYTHON to a CPython 3.12"
PY312=$py
"$PY312" -c 'import sys
sys.exit(sys.implementation.name != "cpython" or sys.version_info[:2] != (3, 12))' ||
    die "$PY312 is not CPython 3.12, the device's python3; set DEVICE_WHEELS_PYTHON to one"

exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qxF /.whl/ "$exclude" 2>/dev/null || echo /.whl/ >>"$exclude"

build=$(mktemp -d /tmp/device_wheels.XXXXXX)
trap 'rm -rf "$build"' EXIT
wheels=$build/wheels
mkdir -p "$wheels"

echo "device_wheels: pure-Python wheels: ${PURE[*]}"
platform_args=()
for p in "${PLATFORMS[@]}"; do
    platform_args+=(--platform "$p")
done
"$PY312" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platform_args[@]}" -d "$wheels" "${PURE[@]}"

echo "device_wheels: build tools in a throwaway venv (${BUILD_TOOLS[*]})"
"$PY312" -m venv "$build/venv"
vpy=$build/venv/bin/python
"$vpy" -m pip install -q "${BUILD_TOOLS[@]}"

echo "device_wheels: ${SDIST_ONLY[*]} (sdist only) into a wheel"
"$vpy" -m pip wheel -q --no-deps --no-build-isolation --no-binary :all: -w "$wheels" \
    "${SDIST_ONLY[@]}"

echo "device_wheels: learn2learn $L2L_VERSION for CPython 3.12 (C regenerated with cython<3)"
"$vpy" -m pip download -q --no-deps --no-binary :all: "learn2learn==$L2L_VERSION" -d "$build"
tar -xzf "$build/learn2learn-$L2L_VERSION.tar.gz" -C "$build"
src=$build/learn2learn-$L2L_VERSION
(cd "$src" && "$build/venv/bin/cython" -3 learn2learn/data/*.pyx)
# Its find_packages() would also ship its own top-level package `tests`, which on
# PYTHONPATH could stand in for this repository's.
rm -rf "$src/tests"
"$vpy" -m pip wheel -q --no-deps --no-build-isolation -w "$build/l2l" "$src"
l2l=$(echo "$build"/l2l/learn2learn-*.whl)
[ -f "$l2l" ] || die "learn2learn built no wheel"
others=$("$vpy" -m zipfile -l "$l2l" | awk 'NR > 1 { split($1, p, "/"); print p[1] }' |
    sort -u | grep -vxE 'learn2learn(-[0-9.]+\.dist-info)?' || true)
[ -z "$others" ] || die "learn2learn's wheel holds more than learn2learn: $others"

# Tag it manylinux_2_N (N: the newest glibc symbol version its extensions use, at least
# 17), so that pip on a machine with an older glibc refuses it rather than the import
# failing later. The extensions must link nothing beyond the C library.
mkdir "$build/l2l/x"
(cd "$build/l2l/x" && "$vpy" -m zipfile -e "$l2l" .)
mapfile -t sos < <(find "$build/l2l/x" -name '*.so')
[ "${#sos[@]}" -eq 3 ] || die "expected 3 extension modules in $l2l, found ${#sos[@]}"
for so in "${sos[@]}"; do
    case $so in
    *.cpython-312-x86_64-linux-gnu.so) ;;
    *) die "$so is not built for cpython-312-x86_64-linux-gnu" ;;
    esac
done
extra=$(objdump -p "${sos[@]}" | awk '/NEEDED/ { print $2 }' | sort -u |
    grep -vxE 'lib(c|m|pthread|dl)\.so\.[0-9]+' || true)
[ -z "$extra" ] || die "learn2learn's extensions link more than the C library: $extra"
glibc=$(objdump -T "${sos[@]}" | grep -o 'GLIBC_2\.[0-9]*' | sort -t. -k2,2n -u | tail -1)
minor=${glibc#GLIBC_2.}
[ "${minor:-0}" -ge 17 ] 2>/dev/null || minor=17
"$vpy" -m wheel tags --remove --platform-tag "manylinux_2_${minor}_x86_64" "$l2l" >/dev/null
mv "$build"/l2l/learn2learn-*.whl "$wheels/"

# Each wheel: a pure one, or one for CPython 3.12 on x86-64 Linux; one of each package.
names=()
for whl in "$wheels"/*.whl; do
    base=${whl##*/}
    case $base in
    *-py3-none-any.whl | *-cp312-cp312-manylinux*_x86_64.whl) ;;
    *) die "$base is neither pure Python nor built for CPython 3.12 on x86-64 Linux" ;;
    esac
    names+=("${base%%-*}")
done
dupes=$(printf '%s\n' "${names[@]}" | tr 'A-Z-' 'a-z_' | sort | uniq -d)
[ -z "$dupes" ] || die "more than one wheel of: $dupes"

total=$(du -cb "$wheels"/*.whl | tail -1 | cut -f1)
total_mib=$(awk -v b="$total" 'BEGIN { printf "%.1f", b / 1048576 }')
[ "$total" -le $((LIMIT_MIB * 1048576)) ] ||
    die "the wheels take $total_mib MiB, over the $LIMIT_MIB MiB kept for them; .whl/ is unchanged"

mkdir -p "$DEST"
rm -f "$DEST"/*.whl
mv "$wheels"/*.whl "$DEST/"
du -b "$DEST"/*.whl | awk '{ printf "  %8.1f KiB  %s\n", $1 / 1024, $2 }'
# What a run carries besides: tracked and untracked-not-ignored files (deleted ones skipped).
tree=$(git ls-files -z -co --exclude-standard | du -cb --files0-from=- 2>/dev/null |
    tail -1 | cut -f1 || true)
tree_mib=$(awk -v b="${tree:-0}" 'BEGIN { printf "%.1f", b / 1048576 }')
echo "device_wheels: $DEST/ holds $total_mib MiB; with the working tree ($tree_mib MiB) a run" \
    "carrying $DEST sends about $(awk -v a="$total_mib" -v b="$tree_mib" 'BEGIN { print a + b }')" \
    "MiB of its 64"
