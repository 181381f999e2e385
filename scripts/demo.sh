#!/usr/bin/env bash
# The whole pipeline on the embedded mini datasets, with exactly the commands a user runs on real data:
#   data -> pretrain (MoCo v1 and v2) -> linear eval (+ random init) -> convert -> VOC trials -> COCO trials -> tables.
# Only sizes and schedules differ from the paper's protocol, and they come from the environment, set by
# the Makefile's `demo` / `demo-science` targets (the one place they are written down). Re-running resumes:
# every stage skips or continues finished work.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${DEMO_OUT:?}" "${DEMO_DATA:?}" "${DEMO_DATA_FLAGS?}" "${DEMO_VARIANTS:?}" "${DEMO_PRETRAIN_FLAGS?}"
: "${DEMO_LINEAR_FLAGS?}" "${DEMO_RANDOM_SEEDS:?}" "${DEMO_RANDOM_INITS:?}" "${DEMO_VOC_TRIALS:?}" "${DEMO_VOC_OPTS?}"
: "${DEMO_COCO_TRIALS:?}" "${DEMO_COCO_OPTS?}"
PY=${PY:-.venv/bin/python}
export MOCOEVAL_RESULTS_DIR=${MOCOEVAL_RESULTS_DIR:-$DEMO_OUT/results/runs}
export DETECTRON2_DATASETS=$DEMO_DATA
IMAGENET=$DEMO_DATA/imagenet-mini
T0=$(date +%s)
declare -a TIMES=()
echo "demo settings (Makefile DEMO_*; output in $DEMO_OUT, data in $DEMO_DATA):"
for v in DEMO_DATA_FLAGS DEMO_VARIANTS DEMO_PRETRAIN_FLAGS DEMO_LINEAR_FLAGS DEMO_RANDOM_SEEDS DEMO_RANDOM_INITS \
         DEMO_VOC_TRIALS DEMO_VOC_OPTS DEMO_COCO_TRIALS DEMO_COCO_OPTS; do
  printf '  %-20s %s\n' "$v" "${!v}"
done

stage() {  # stage NAME: print a banner; stage_done records how long the previous stage took
  STAGE_NAME=$1; STAGE_T0=$(date +%s)
  echo; echo "=== [demo $(date +%H:%M:%S)] $1"
}
stage_done() { TIMES+=("$(printf '%-54s %5d s' "$STAGE_NAME" $(( $(date +%s) - STAGE_T0 )))"); }
# A random-init row per residual-BN init G in DEMO_RANDOM_INITS (1: torchvision's init; G: the network a
# --residual-bn-init G pretraining starts from); its runs' names carry G unless it is 1.
random_name() { if [ "$1" = 1 ]; then echo "random-init_seed$2"; else echo "random-init_residual-bn-$1_seed$2"; fi; }
run() { echo "+ $*"; "$@"; }

stage "1/7 mini datasets"
# shellcheck disable=SC2086
run "$PY" -m mocoeval.data.make_mini_data --root "$DEMO_DATA" $DEMO_DATA_FLAGS -q
stage_done

weights=()
for v in $DEMO_VARIANTS; do
  stage "2/7 pretrain $v (configs/pretrain/$v.yaml)"
  # shellcheck disable=SC2086
  run "$PY" pretrain/train_moco.py "$IMAGENET" --config "configs/pretrain/$v.yaml" $DEMO_PRETRAIN_FLAGS \
      --output-dir "$DEMO_OUT/pretrain/$v" --resume auto
  weights+=("$v:$DEMO_OUT/pretrain/$v/final.pth.tar")
  stage_done
done

for w in "${weights[@]}"; do
  v=${w%%:*}; ckpt=${w#*:}
  stage "3/7 linear eval $v"
  # shellcheck disable=SC2086
  run "$PY" transfer/run_linear.py "$IMAGENET" --weights "$ckpt" $DEMO_LINEAR_FLAGS \
      --output-dir "$DEMO_OUT/linear/$v" --resume auto
  stage_done
done
for g in $DEMO_RANDOM_INITS; do
  for s in $DEMO_RANDOM_SEEDS; do
    stage "3/7 linear eval random init, seed $s, residual BN $g"
    # shellcheck disable=SC2086
    run "$PY" transfer/run_linear.py "$IMAGENET" --random-init --seed "$s" --residual-bn-init "$g" \
        $DEMO_LINEAR_FLAGS --output-dir "$DEMO_OUT/linear/$(random_name "$g" "$s")" --resume auto
    stage_done
  done
done

stage "4/7 convert to Detectron2"
mkdir -p "$DEMO_OUT/d2"
pkls=()
for w in "${weights[@]}"; do
  v=${w%%:*}; ckpt=${w#*:}
  run "$PY" convert/to_d2.py "$ckpt" "$DEMO_OUT/d2/$v.pkl"
  pkls+=("$DEMO_OUT/d2/$v.pkl")
done
# The VOC random-init rows: one seed (the first), the same backbones as their linear rows.
first_seed=${DEMO_RANDOM_SEEDS%% *}
for g in $DEMO_RANDOM_INITS; do
  pkl=$DEMO_OUT/d2/$(random_name "$g" "$first_seed").pkl
  run "$PY" convert/to_d2.py "random-init:$first_seed" "$pkl" --residual-bn-init "$g"
  pkls+=("$pkl")
done
stage_done

for pkl in "${pkls[@]}"; do
  name=$(basename "$pkl" .pkl)
  stage "5/7 VOC07+12 -> VOC07 test, $DEMO_VOC_TRIALS trials: $name"
  # shellcheck disable=SC2086
  run "$PY" transfer/run_voc.py --weights "$pkl" --trials "$DEMO_VOC_TRIALS" --output-dir "$DEMO_OUT/voc/$name" \
      --opts $DEMO_VOC_OPTS
  stage_done
done

for pkl in "${pkls[@]}"; do
  name=$(basename "$pkl" .pkl)
  stage "6/7 COCO train2017 -> val2017 (Mask R-CNN), $DEMO_COCO_TRIALS trial(s): $name"
  # shellcheck disable=SC2086
  run "$PY" transfer/run_coco.py --weights "$pkl" --trials "$DEMO_COCO_TRIALS" --output-dir "$DEMO_OUT/coco/$name" \
      --opts $DEMO_COCO_OPTS
  stage_done
done

stage "7/7 tables and plots"
run "$PY" results/make_tables.py --runs "$MOCOEVAL_RESULTS_DIR" --out "$DEMO_OUT/results"
stage_done

echo; echo "=== [demo] done in $(( $(date +%s) - T0 )) s; time per stage:"
printf '  %s\n' "${TIMES[@]}"
echo "tables: $DEMO_OUT/results/ablation.md (also .csv, .tex, plots *.png); runs: $DEMO_OUT/"
