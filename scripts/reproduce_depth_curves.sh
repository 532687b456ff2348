#!/usr/bin/env bash
# Reproduce the paper's depth curves on a GPU, end to end (design §5):
#   1. print the estimated GPU hours and peak GPU memory of each run (metaacdc/estimate.py);
#   2. prepare miniImageNet at 84 px (Conv4/Conv6) and 224 px (ResNets);
#   3. meta-train the 20 runs {conv4, conv6, resnet10, resnet18, resnet34} x {plain MAML,
#      ACDC-net} x {5-way 1-shot, 5-way 5-shot} with configs/closerlook.yaml;
#   4. test every run on the 3,000 frozen tasks of episodes/ (mean ± 95% CI);
#   5. write the table (curve.csv, curve.md) and the plot (curve.png, with CloserLook's and
#      the MAML paper's published MAML numbers as reference series).
# Every step is resumable: rerun the same command after an interruption; prepared splits,
# finished runs and finished evaluations are kept, an unfinished run continues from its
# last checkpoint.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: scripts/reproduce_depth_curves.sh MINIIMAGENET_ROOT [OUT_DIR [CURVE_OPTION...]]

  MINIIMAGENET_ROOT  your miniImageNet files, in any layout `metaacdc data prepare` reads
                     (split CSVs + images, the three pickles, or train/val/test folders;
                     see data/README.md). Not shipped: ImageNet terms of access apply.
  OUT_DIR            run folders and the report (default runs/closerlook)
  CURVE_OPTION...    passed to `metaacdc curve`, e.g. --device cuda:1, --stop-after 5000
                     (spread the grid over several sessions), --backbones conv4 resnet10

environment: METAACDC (default: .venv/bin/metaacdc if present, else metaacdc),
             CACHE (prepared data, default cache), DRY_RUN=1 (print the commands only)
EOF
}

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    usage
    exit 0
fi
if [[ $# -lt 1 ]]; then
    echo "reproduce_depth_curves.sh: error: give the folder of your miniImageNet files" >&2
    usage >&2
    exit 2
fi
if [[ ! -d $1 ]]; then
    echo "reproduce_depth_curves.sh: error: MINIIMAGENET_ROOT '$1' is not a directory" >&2
    usage >&2
    exit 2
fi
ROOT=$(cd "$1" && pwd)
shift
OUT=runs/closerlook
if [[ $# -gt 0 && $1 != -* ]]; then
    OUT=$1
    shift
fi
case $OUT in /*) ;; *) OUT=$PWD/$OUT ;; esac
CACHE=${CACHE:-cache}
case $CACHE in /*) ;; *) CACHE=$PWD/$CACHE ;; esac

cd "$(dirname "$0")/.."  # configs/ and episodes/ are read from the repository
if [[ -z ${METAACDC:-} ]]; then
    if [[ -x .venv/bin/metaacdc ]]; then METAACDC=.venv/bin/metaacdc; else METAACDC=metaacdc; fi
fi

run() {
    echo "+ $*"
    if [[ -z ${DRY_RUN:-} ]]; then "$@"; fi
}

GRID=(--config configs/closerlook.yaml --tasks 3000 --out "$OUT" "$@")

echo "== 1/4 estimate (before anything runs)"
run "$METAACDC" curve "${GRID[@]}" --estimate

echo "== 2/4 prepare miniImageNet at 84 px and 224 px (kept if already done)"
for size in 84 224; do
    run "$METAACDC" data prepare --source miniimagenet --root "$ROOT" --image-size "$size" \
        --out "$CACHE/miniimagenet-$size" --no-progress
done

echo "== 3/4 train, resume or skip the 20 runs; test each on the frozen episodes; report"
run "$METAACDC" curve "${GRID[@]}" \
    --data "$CACHE/miniimagenet-84" "$CACHE/miniimagenet-224" \
    --episodes episodes/miniimagenet-test-5w1s-15q.json episodes/miniimagenet-test-5w5s-15q.json

echo "== 4/4 done: $OUT/curve.md, $OUT/curve.csv, $OUT/curve.png"
