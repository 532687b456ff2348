#!/usr/bin/env bash
# One pass of every GPU check, for a lent GPU machine with little time (about 15 minutes
# of device time per session, machine start included): finishes within GPU_CHECK_BUDGET_S
# seconds (default 450, under 8 minutes), each step under its own timeout so that one hung
# step cannot eat the others' time; a step the budget no longer reaches is skipped. Steps:
#   versions   torch, CUDA, cuDNN and the GPU
#   cuda-tests pytest tests/test_cuda.py (skipped without a GPU; CUDA-graph capture included)
#   bench      scripts/bench_gpu_runs.py --engine learn2learn batched --cuda-graphs on off
#              over the paper grid, both shot settings (3 timed meta-updates and 10
#              evaluation tasks per run and arm, no estimate: `bench_gpu_runs.py --compare
#              CSV` adds it, and the verdicts on the targets, later on any machine); the
#              table goes to $OUT/gpu_runs.csv, rewritten after every arm, so a bench cut
#              by its timeout keeps the runs it measured (the 1-shot half comes first)
#   curve-jobs-1, curve-jobs-4
#              wall time of `metaacdc curve --jobs 1`, then `--jobs 4`, on the same short
#              synthetic grid (Conv4 and Conv6, plain and ACDC-net, 1-shot, 20 meta-updates,
#              2 validations of 10 tasks, 50 test tasks, 32 px): each step's closing line
#              gives its seconds; the run folders go to a scratch folder, not $OUT
#   ops-plain, ops-acdc-net
#              scripts/count_ops.py (ATen operators per meta-update of each engine; counted
#              on the CPU, the same on any machine)
#
# The bench's time, worked out from the H100 measurements of the learn2learn engine
# (docs/gpu-runs-h100/gpu_runs.csv; the batched engine has no GPU figure yet, so it is
# assumed at half the learn2learn engine's time per meta-update and 0.3x its time per
# evaluation task, as it launches a quarter of the operators and adapts the 10 tasks in one
# call). Over the 20 runs the learn2learn engine takes 6.37 s per meta-update summed and
# 1.02 s per evaluation task summed. Per run and arm: 2 warm-up + 3 timed meta-updates, and
# a warm-up + a timed evaluation of 10 tasks (two warm-ups with graphs on):
#   learn2learn:        5 x 6.37 + 2 x 10 x 1.02                  = 52 s
#   batched, off:       5 x 3.19 + 2 x 10 x 0.30                  = 22 s
#   batched, on:        about 3.5 eager updates (2 warm-ups and the capture inside the first
#                       call) = 3.5 x 3.19 = 11 s, plus 5 replays (~1 s), plus the
#                       evaluation: one eager call, a capture (2 warm-up calls + recording)
#                       and a replay, about 4 eager calls = 4 x 10 x 0.30 = 12 s  -> 24 s
#   set-up:             60 run-arms x ~0.5 s (model, episodes, gc, empty_cache) = 30 s,
#                       plus ~15 s of imports and CUDA context
#   total               about 145 s on the first H100's host; its second start was up to
#                       1.3-2.2x slower per step, hence the cap of 200 s (the 5-shot tail is
#                       what a slow host loses). The other steps: versions ~10 s, cuda-tests
#                       ~60 s, the two curve steps ~40 + ~25 s, the operator counts ~15 s
#                       each: about 365 s expected within the 450.
#
# Every step's output goes to $OUT/<step>.log (the device tool brings back what is under
# $OUT; /tmp/gpu_check when OUT is unset). Exits 1 if any step failed, timed out (exit 124)
# or was skipped, after running all it could.
#
#     bash scripts/gpu_check.sh             # on the GPU machine
#     bash scripts/gpu_check.sh --dry-run   # anywhere, on the CPU (or GPU_CHECK_DRY_RUN=1)
#
# The dry run checks this script without a GPU: the same steps at toy size on the CPU
# (bench_gpu_runs.py --dry-run over Conv4 and ResNet10, 1-shot; the curve steps with
# 16 px images, one inner step, 2 meta-updates and 4 test tasks, --jobs 1 then --jobs 2, on
# --device cpu), with every step's timeout tripled and a budget of 900 s by default; its
# numbers mean nothing.
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

DRY_RUN=${GPU_CHECK_DRY_RUN:-0}
if [ "${1:-}" = "--dry-run" ]; then
    DRY_RUN=1
elif [ -n "${1:-}" ]; then
    echo "usage: bash scripts/gpu_check.sh [--dry-run]" >&2
    exit 2
fi
if [ "$DRY_RUN" = 1 ]; then
    BUDGET=${GPU_CHECK_BUDGET_S:-900} CAP_SCALE=3
else
    BUDGET=${GPU_CHECK_BUDGET_S:-450} CAP_SCALE=1
fi
OUT_DIR=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT_DIR"
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_curve.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT
DEADLINE=$((SECONDS + BUDGET))
PY=${GPU_CHECK_PYTHON:-.venv/bin/python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
FAILED=()

# step NAME CAP COMMAND...: run COMMAND under `timeout` (CAP x CAP_SCALE seconds, less if
# the budget has less left), its output in $OUT_DIR/NAME.log, and show the log's tail.
step() {
    local name=$1 cap=$(($2 * CAP_SCALE)) left=$((DEADLINE - SECONDS)) started=$SECONDS rc=0
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

# The short grid of the curve steps: what `curve` has no flag for, in a config file (kept
# with the logs, so the steps can be rerun as they were).
CURVE_CONFIG="$OUT_DIR/curve-jobs.yaml"
if [ "$DRY_RUN" = 1 ]; then
    BENCH=(--dry-run --shots 1 --backbones conv4 resnet10)
    CURVE=(--meta-updates 2 --image-size 16 --tasks 4 --device cpu)
    WIDE_JOBS=2
    printf '%s\n' 'val_every: 1' 'val_tasks: 2' 'meta_batch: 2' 'inner_steps: 1' \
        'test_inner_steps: 1' 'queries: 2' 'test_queries: 2' 'workers: 0' \
        'synthetic_images_per_class: 4' >"$CURVE_CONFIG"
else
    BENCH=(--shots 1 5 --updates 3 --eval-tasks 10 --no-estimate)
    CURVE=(--meta-updates 20 --image-size 32 --tasks 50)
    WIDE_JOBS=4
    # 20 images per class (16 queries + 1 shot fit) keep generating the data short
    printf '%s\n' 'val_every: 10' 'val_tasks: 10' 'synthetic_images_per_class: 20' \
        >"$CURVE_CONFIG"
fi

step versions 30 "$PY" -c '
import torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())
print("GPU:", torch.cuda.get_device_properties(0) if torch.cuda.is_available() else "none")
'
step cuda-tests 100 "$PY" -m pytest -q tests/test_cuda.py
step bench 200 "$PY" scripts/bench_gpu_runs.py --engine learn2learn batched \
    --cuda-graphs on off "${BENCH[@]}" --csv "$OUT_DIR/gpu_runs.csv"
for jobs in 1 "$WIDE_JOBS"; do
    step "curve-jobs-$jobs" 60 "$PY" -m metaacdc curve --config "$CURVE_CONFIG" \
        --dataset synthetic --backbones conv4 conv6 --shots 1 "${CURVE[@]}" \
        --out "$SCRATCH/jobs-$jobs" --jobs "$jobs"
done
step ops-plain 40 "$PY" scripts/count_ops.py --conv plain
step ops-acdc-net 40 "$PY" scripts/count_ops.py --conv acdc-net

if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "gpu_check: not all passed: ${FAILED[*]}; logs in $OUT_DIR" >&2
    exit 1
fi
echo "gpu_check: all steps passed in ${SECONDS}s; logs in $OUT_DIR"
