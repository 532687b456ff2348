#!/usr/bin/env bash
# One pass of every GPU check, for a lent GPU machine with little time (about 15 minutes
# of device time per session, machine start included): finishes within GPU_CHECK_BUDGET_S
# seconds (default 450, under 8 minutes), each step under its own timeout so that one hung
# step cannot eat the others' time. Steps, in order of what they are worth:
#   versions   torch, CUDA, cuDNN and the GPU
#   bench      scripts/bench_gpu_runs.py --engine learn2learn batched on the 1-shot grid
#              (3 timed meta-updates, 16 evaluation tasks per run and engine, no estimate:
#              `bench_gpu_runs.py --compare CSV` adds it later on any machine)
#   tests      pytest tests/test_cuda.py (skipped without a GPU) and tests/maml (the batched
#              engine's tests; they run on the CPU, they take no device)
#   ops-plain, ops-acdc-net
#              scripts/count_ops.py (ATen operators per meta-update of each engine; counted
#              on the CPU, the same on any machine)
# Every step's output goes to $OUT/<step>.log (the device tool brings back what is under
# $OUT; /tmp/gpu_check when OUT is unset), the bench's table to $OUT/gpu_runs_1shot.csv.
# Exits 1 if any step failed, timed out (exit 124) or was skipped, after running all it could.
#
#     bash scripts/gpu_check.sh
#
# Its interpreter, the first that applies (the repository is put on PYTHONPATH, so
# metaacdc itself need not be installed):
#   GPU_CHECK_PYTHON   an interpreter that already has torch and the project's other
#                      dependencies (learn2learn, higher, gym, pandas, pytest, ...)
#   .venv/bin/python   as it finds it
#   python3 + .whl/    where there is no .venv but a folder .whl/ (made here by
#                      scripts/device_wheels.sh): its wheels are installed, without the
#                      network, into /tmp/site (step `wheels`), which goes on PYTHONPATH
#                      after the repository; for a machine whose python3 has torch and the
#                      rest but not learn2learn, higher and gym, such as the lent
#                      nvidia-h200 one (its python3 is CPython 3.12; .whl/ is built for
#                      it). There, through the device tool:
#                          run(command="bash scripts/gpu_check.sh", carry=[".whl"],
#                              timeout_s=480)
#   make venv          otherwise it creates .venv (scripts/bootstrap.sh, step `venv`),
#                      installing torch's CUDA build and the project's tools from the
#                      package registry: this assumes the machine can reach it (or has the
#                      wheels cached) and that it fits in the budget.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT_DIR=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT_DIR"
DEADLINE=$((SECONDS + ${GPU_CHECK_BUDGET_S:-450}))
PY=${GPU_CHECK_PYTHON:-.venv/bin/python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
FAILED=()

# step NAME CAP COMMAND...: run COMMAND under `timeout` (CAP seconds, less if the budget
# has less left), its output in $OUT_DIR/NAME.log, and show the log's tail.
step() {
    local name=$1 cap=$2 left=$((DEADLINE - SECONDS)) started=$SECONDS rc=0
    shift 2
    if [ "$left" -lt 15 ]; then
        echo "== $name: skipped, the budget is spent"
        FAILED+=("$name (skipped)")
        return 0
    fi
    if [ "$cap" -gt "$left" ]; then
        cap=$left
    fi
    echo "== $name (at most ${cap}s): $*"
    timeout --kill-after=10 "$cap" "$@" >"$OUT_DIR/$name.log" 2>&1 || rc=$?
    tail -n 40 "$OUT_DIR/$name.log"
    if [ "$rc" -ne 0 ]; then
        FAILED+=("$name (exit $rc)")
    fi
    echo "== $name: exit $rc after $((SECONDS - started))s"
}

if [ -z "${GPU_CHECK_PYTHON:-}" ] && [ ! -x "$PY" ]; then
    if [ -d .whl ]; then
        step wheels 60 python3 -m pip install -q --no-index --no-deps --no-compile \
            --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        PY=python3
        export PYTHONPATH="$PYTHONPATH:/tmp/site"
    else
        step venv 240 make venv
    fi
fi
step versions 30 "$PY" -c '
import torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())
print("GPU:", torch.cuda.get_device_properties(0) if torch.cuda.is_available() else "none")
'
step bench 200 "$PY" scripts/bench_gpu_runs.py --engine learn2learn batched --shots 1 \
    --updates 3 --eval-tasks 16 --no-estimate \
    --csv "$OUT_DIR/gpu_runs_1shot.csv"
step tests 150 "$PY" -m pytest -q tests/test_cuda.py tests/maml
step ops-plain 40 "$PY" scripts/count_ops.py --conv plain
step ops-acdc-net 40 "$PY" scripts/count_ops.py --conv acdc-net

if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "gpu_check: not all passed: ${FAILED[*]}; logs in $OUT_DIR" >&2
    exit 1
fi
echo "gpu_check: all steps passed in ${SECONDS}s; logs in $OUT_DIR"
