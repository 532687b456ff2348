#!/usr/bin/env bash
# Creates .venv with everything metaacdc needs (design §7). Idempotent: `make` reruns it
# only when this file or pyproject.toml changed since the last successful run.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
PY=${PYTHON:-python3}
TORCH_PINS=(torch==2.15.0 torchvision==0.29.2)
STAMP="$VENV/.bootstrap-stamp"

# A preinstalled CPU-only torch wheel found through find-links would be picked over the
# registry's build, and the registry's torchvision cannot import against it.
export PIP_FIND_LINKS=

rm -f "$STAMP"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -qq --disable-pip-version-check)

# Installing torch's CUDA build takes about 6 GB in .venv and, while pip unpacks it, about
# 2 GB more under $TMPDIR (measured peak: 8.0 GB on one disk). Say so up front instead of
# letting pip fail half-way with "No space left on device".
free_gb() { df -Pk "$1" | awk 'NR == 2 { printf "%d", $4 / 1048576 }'; }
disk_of() { stat -c %d "$1"; }
need_disk() {
    local tmp=${TMPDIR:-/tmp} venv_gb tmp_gb
    venv_gb=$(free_gb "$VENV")
    tmp_gb=$(free_gb "$tmp")
    if [ "$(disk_of "$VENV")" = "$(disk_of "$tmp")" ]; then
        [ "$venv_gb" -ge 8 ] && return
        echo "bootstrap: installing torch needs about 8 GB free on the disk of $VENV and" \
            "$tmp; it has $venv_gb GB. Free some space, or set TMPDIR to another disk." >&2
    else
        [ "$venv_gb" -ge 6 ] && [ "$tmp_gb" -ge 2 ] && return
        echo "bootstrap: installing torch needs about 6 GB free for $VENV (it has" \
            "$venv_gb GB) and 2 GB for $tmp (it has $tmp_gb GB). Free some space." >&2
    fi
    exit 1
}
has_torch='import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)'
"$VENV/bin/python" -c "$has_torch" || need_disk

echo "bootstrap: torch and torchvision (resolved together from the registry)"
"${PIP[@]}" "${TORCH_PINS[@]}"

if ! "$VENV/bin/python" -c "import learn2learn" 2>/dev/null; then
    echo "bootstrap: learn2learn 0.2.0 (C regenerated from .pyx with cython<3)"
    "${PIP[@]}" "cython<3" setuptools wheel numpy gym scipy requests tqdm
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    "$VENV/bin/python" -m pip download -qq --no-deps --no-binary :all: \
        learn2learn==0.2.0 -d "$build"
    tar -xzf "$build"/learn2learn-0.2.0.tar.gz -C "$build"
    cython_bin="$PWD/$VENV/bin/cython"
    (cd "$build/learn2learn-0.2.0" && "$cython_bin" -3 learn2learn/data/*.pyx)
    "${PIP[@]}" --no-deps --no-build-isolation "$build/learn2learn-0.2.0"
fi

echo "bootstrap: metaacdc and its development tools"
"${PIP[@]}" -e ".[dev]"

"$VENV/bin/python" -c "import torch, torchvision, learn2learn, higher, metaacdc" 2>/dev/null
sha256sum pyproject.toml scripts/bootstrap.sh > "$STAMP"
echo "bootstrap: done ($VENV)"
