#!/usr/bin/env bash
# One pretraining epoch per setting on a 4,000-image imagenet-mini (the `make demo-science` data), then one
# table row each: loss vs ln(K+1), contrastive top-1, key spread (1 = keys uniform on the sphere, 0 = one
# point) and kNN top-1. It reproduces "Collapse" in results/claim-in-miniature/lab-notes.md: the figures behind
# the demo-science diagnosis.
#   bash scripts/collapse_sweep.sh [OUT]        (~25 min on 2 CPU cores)
# Every row is plain `pretrain/train_moco.py` with flags; override the data with DATA=... .
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-datasets-science}
OUT=${1:-output/collapse-sweep}
export MOCOEVAL_RESULTS_DIR=$OUT/runs  # keep these probes out of the project's result tables
"$PY" -m mocoeval.data.make_mini_data --root "$DATA" --imagenet-train-per-class 200 --imagenet-val-per-class 50 -q
BASE="--config configs/pretrain/d.yaml --image-size 64 --epochs 1 --batch-size 64 --lr 0.03 --moco-k 256
      --moco-m 0.99 --seed 0 --channels-last --knn-data $DATA/imagenet-mini --print-freq 10"
declare -A ROWS=(
  [r50-v2]=""
  [r50-v2-lr0.0075]="--lr 0.0075"
  [r50-v2-m0.999]="--moco-m 0.999"
  [r50-v2-T0.07]="--moco-t 0.07"
  [r50-v2-bnsplits8]="--bn-splits 8"
  [r50-v1]="--config configs/pretrain/moco_v1.yaml"
  [r18-v2]="-a resnet18"
)
for name in "${!ROWS[@]}"; do
  [ -f "$OUT/$name/metrics.json" ] && continue
  echo "=== $name: ${ROWS[$name]}"
  # shellcheck disable=SC2086
  "$PY" pretrain/train_moco.py "$DATA/imagenet-mini" $BASE ${ROWS[$name]} --output-dir "$OUT/$name" 2>&1 \
    | grep -E "step (10|62)/|done in|collapsed" || true
done
"$PY" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
print(f"\n| setting | loss (ln(K+1) = 5.55) | contrastive top-1 | key spread | kNN top-1 |\n|---|---|---|---|---|")
for m in sorted(Path(sys.argv[1]).glob("*/metrics.json")):
    h = json.loads(m.read_text())["history"][-1]
    print(f"| {m.parent.name} | {h['loss']:.3f} | {h['acc1']:.1f}% | {h['key_spread']:.3f} | {h.get('knn_top1', float('nan')):.1f}% |")
PY
