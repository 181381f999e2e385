"""`make demo` end to end at the tiniest sizes: every stage's artefact and the tables exist."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "DEMO_DATA_FLAGS": "--voc2007-trainval 8 --voc2007-test 6 --voc2012-trainval 4 --voc-short-side 96 "
    "--imagenet-train-per-class 4 --imagenet-val-per-class 2 --coco-train 6 --coco-val 4 "
    "--coco-short-side 96 --workers 1",
    "DEMO_VARIANTS": "moco_v1 d",
    "DEMO_PRETRAIN_FLAGS": "--image-size 32 --epochs 1 --batch-size 16 --moco-k 16 --moco-m 0.99 --seed 0 "
    "--workers 0 --print-freq 1",
    "DEMO_LINEAR_FLAGS": "--image-size 32 --epochs 1 --batch-size 16 --lr 0.01 --feature-norm --workers 0",
    "DEMO_RANDOM_SEEDS": "0",
    "DEMO_RANDOM_INITS": "1 0.1",
    "DEMO_VOC_TRIALS": "1",
    "DEMO_VOC_OPTS": "SOLVER.IMS_PER_BATCH 2 SOLVER.MAX_ITER 2 SOLVER.STEPS (1,) SOLVER.WARMUP_ITERS 1 "
    "INPUT.MIN_SIZE_TRAIN (96,) INPUT.MAX_SIZE_TRAIN 128 INPUT.MIN_SIZE_TEST 96 "
    "INPUT.MAX_SIZE_TEST 128 TEST.PRECISE_BN.NUM_ITER 1 MODEL.RPN.PRE_NMS_TOPK_TRAIN 100 "
    "MODEL.RPN.POST_NMS_TOPK_TRAIN 16 MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE 8 "
    "MODEL.RPN.PRE_NMS_TOPK_TEST 100 MODEL.RPN.POST_NMS_TOPK_TEST 5 "
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION 7 DATALOADER.NUM_WORKERS 0",
    "DEMO_COCO_TRIALS": "1",
    "DEMO_COCO_OPTS": "SOLVER.IMS_PER_BATCH 2 SOLVER.MAX_ITER 2 SOLVER.STEPS (1,) SOLVER.WARMUP_ITERS 1 "
    "INPUT.MIN_SIZE_TRAIN (96,) INPUT.MAX_SIZE_TRAIN 128 INPUT.MIN_SIZE_TEST 96 "
    "INPUT.MAX_SIZE_TEST 128 TEST.PRECISE_BN.NUM_ITER 1 MODEL.RPN.POST_NMS_TOPK_TRAIN 16 "
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE 8 MODEL.RPN.POST_NMS_TOPK_TEST 5 "
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION 7 MODEL.ROI_HEADS.SCORE_THRESH_TEST 0.0 "
    "DATALOADER.NUM_WORKERS 0",
}


def test_makefile_demo_passes_every_setting_to_the_pipeline():
    """The demo's overrides live in the Makefile and all reach scripts/demo.sh."""
    out = subprocess.run(["make", "-n", "demo"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if "scripts/demo.sh" in ln)
    script = (REPO_ROOT / "scripts" / "demo.sh").read_text()
    for name in TINY:
        assert f"{name}=" in line and f"${{{name}" in script, name
    science = subprocess.run(
        ["make", "-n", "demo-science"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "DEMO_OUT=output/demo-science" in science
    # its pretraining flags are ones train_moco.py accepts (a typo would surface only hours into the run)
    from mocoeval.pretrain.config import parse_config

    flags = shlex.split(re.search(r'DEMO_PRETRAIN_FLAGS="([^"]*)"', science).group(1))
    args, _ = parse_config(
        ["datasets-science/imagenet-mini", "--config", str(REPO_ROOT / "configs" / "pretrain" / "d.yaml"), *flags]
    )
    assert args.image_size == 64 and args.moco_k <= 4000 // 10  # K <= 10% of the 4,000 training images


@pytest.mark.slow
def test_demo_pipeline_end_to_end(tmp_path):
    out, data = tmp_path / "demo", tmp_path / "data"
    env = dict(os.environ, **TINY, DEMO_OUT=str(out), DEMO_DATA=str(data), PY=sys.executable)
    env.pop("MOCOEVAL_RESULTS_DIR", None)
    proc = subprocess.run(
        ["bash", "scripts/demo.sh"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "time per stage" in proc.stdout

    assert (data / "mini_data.json").is_file()
    for v in ("moco_v1", "d"):
        assert (out / "pretrain" / v / "final.pth.tar").exists()
        assert json.loads((out / "linear" / v / "metrics.json").read_text())["sanity_check"] == "passed"
        assert (out / "d2" / f"{v}.pkl").is_file()
        summary = json.loads((out / "voc" / v / "summary.json").read_text())
        assert summary["metrics"]["AP50"]["n"] == 1
        assert json.loads((out / "coco" / v / "summary.json").read_text())["metrics"]["mask_AP"]["n"] == 1
    for name in ("random-init_seed0", "random-init_residual-bn-0.1_seed0"):
        assert (out / "linear" / name / "metrics.json").is_file()
        assert (out / "voc" / name / "summary.json").is_file()
        assert (out / "coco" / name / "summary.json").is_file()

    records = [json.loads(p.read_text()) for p in (out / "results" / "runs").glob("*.json")]
    stages = sorted(r["stage"] for r in records)
    assert stages == ["coco"] * 4 + ["linear"] * 4 + ["pretrain"] * 2 + ["voc"] * 4
    table = (out / "results" / "ablation.md").read_text()
    # the demo's short schedules are not the protocol: every row says so in its label
    assert "| random init [linear: " in table and "| random init [residual_bn_init 0.1; linear: " in table
    assert "| MoCo v1 [linear: " in table and "VOC: MAX_ITER 2" in table
    for name in ("ablation.csv", "ablation.tex", "ablation_vs_paper.csv", "ablation_coco_vs_paper.csv"):
        assert (out / "results" / name).is_file()
    # Each random-init row's records of both stages are the same backbone: they join; the two rows do not.
    for scale in (None, 0.1):
        rand = [
            r
            for r in records
            if r["variant"]["name"] == "random-init" and r["variant"].get("residual_bn_init") == scale
        ]
        assert len(rand) == 3 and len({r["source_sha256"] for r in rand}) == 1  # linear, VOC, COCO
    assert len({r["source_sha256"] for r in records if r["variant"]["name"] == "random-init"}) == 2
