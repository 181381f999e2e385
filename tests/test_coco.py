"""COCO transfer (issue 31) on the shared detection harness: the configs against the official MoCo COCO configs,
the mini COCO through Detectron2's own loader, bad layouts refused in one line, and (slow) a 2-trial tiny Mask R-CNN
run killed mid-trial and resumed, with box and mask AP per trial, a summary and a "coco" results record."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import yaml
from test_run_voc import TINY_OPTS, _subprocess_env, cpu_run_args, kill_when

from mocoeval.data import coco as coco_data
from mocoeval.data.make_mini_data import TEST_SIZES
from mocoeval.data.mini_images import pixel_polygons
from mocoeval.transfer.detection import modeling as d2_modeling
from mocoeval.transfer.detection.benchmark import BENCHMARKS
from mocoeval.transfer.detection.run_coco import main as run_coco_main

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
COCO = BENCHMARKS["coco"]
# Few RoIs (TINY_OPTS) and no score threshold: a barely trained 81-way classifier scores every class ~1/81,
# under Detectron2's 0.05, and would predict nothing.
COCO_TINY_OPTS = [*TINY_OPTS, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]

# What each YAML sets itself (flattened), as facebookresearch/moco detection/configs/coco_R_50_C4_2x{,_moco}.yaml
# (WEIGHTS "" as in our VOC configs: the command sets --weights); 1x: the MoCo v1 paper's 90k schedule.
MOCO_INPUT = {
    "MODEL.PIXEL_MEAN": [123.675, 116.280, 103.530],
    "MODEL.PIXEL_STD": [58.395, 57.120, 57.375],
    "MODEL.WEIGHTS": "",
    "MODEL.RESNETS.STRIDE_IN_1X1": False,
    "INPUT.FORMAT": "RGB",
}
ONE_X = {"SOLVER.STEPS": "(60000, 80000)", "SOLVER.MAX_ITER": 90000}
YAML_VALUES = {
    "coco_R_50_C4_2x.yaml": {
        "_BASE_": "Base-RCNN-C4-BN.yaml",
        "MODEL.MASK_ON": True,
        "MODEL.WEIGHTS": "",
        "INPUT.MIN_SIZE_TRAIN": "(640, 672, 704, 736, 768, 800)",
        "INPUT.MIN_SIZE_TEST": 800,
        "DATASETS.TRAIN": "('coco_2017_train',)",
        "DATASETS.TEST": "('coco_2017_val',)",
        "SOLVER.STEPS": "(120000, 160000)",
        "SOLVER.MAX_ITER": 180000,
    },
    "coco_R_50_C4_2x_moco.yaml": {"_BASE_": "coco_R_50_C4_2x.yaml", **MOCO_INPUT},
    "coco_R_50_C4_1x.yaml": {"_BASE_": "coco_R_50_C4_2x.yaml", **ONE_X},
    "coco_R_50_C4_1x_moco.yaml": {"_BASE_": "coco_R_50_C4_2x_moco.yaml", **ONE_X},
}
# Resolved: Base-RCNN-C4-BN (pinned by test_voc_configs) + the COCO values + the Detectron2 defaults they rely on.
RESOLVED = {
    "MODEL.ROI_HEADS.NAME": "Res5ROIHeadsExtraNorm",
    "MODEL.RESNETS.NORM": "naiveSyncBN",
    "MODEL.BACKBONE.FREEZE_AT": 0,
    "TEST.PRECISE_BN.ENABLED": True,
    "MODEL.MASK_ON": True,
    "SOLVER.IMS_PER_BATCH": 16,
    "SOLVER.BASE_LR": 0.02,
    "SOLVER.WARMUP_ITERS": 1000,  # Detectron2's default
    "INPUT.MIN_SIZE_TRAIN": (640, 672, 704, 736, 768, 800),
    "INPUT.MIN_SIZE_TEST": 800,
    "INPUT.MAX_SIZE_TRAIN": 1333,
    "INPUT.MAX_SIZE_TEST": 1333,
    "INPUT.MASK_FORMAT": "polygon",
    "DATASETS.TRAIN": ("coco_2017_train",),
    "DATASETS.TEST": ("coco_2017_val",),
    "MODEL.ROI_HEADS.NUM_CLASSES": 80,
    "MODEL.RESNETS.OUT_FEATURES": ["res4"],
    "MODEL.RESNETS.DEPTH": 50,
    "SOLVER.WEIGHT_DECAY": 1e-4,
    "SOLVER.MOMENTUM": 0.9,
    "SOLVER.GAMMA": 0.1,
    "TEST.EVAL_PERIOD": 0,
}
SCHEDULE = {"2x": ((120000, 160000), 180000), "1x": ((60000, 80000), 90000)}
CAFFE2_INPUT = {
    "INPUT.FORMAT": "BGR",
    "MODEL.PIXEL_MEAN": [103.530, 116.280, 123.675],
    "MODEL.PIXEL_STD": [1.0, 1.0, 1.0],
    "MODEL.RESNETS.STRIDE_IN_1X1": True,
}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


# ------------------------------------------------------------------------------------------------ configs


@pytest.mark.parametrize("name", sorted(YAML_VALUES))
def test_yaml_sets_exactly_the_official_values(name):
    assert _flatten(yaml.safe_load((CONFIGS / name).read_text())) == YAML_VALUES[name]


@pytest.mark.parametrize("schedule", ["2x", "1x"])
@pytest.mark.parametrize("layout", ["torchvision", "caffe2"])
def test_default_configs_resolve_to_the_protocol(schedule, layout):
    path = COCO.config_for(layout, schedule)
    assert path.name == f"coco_R_50_C4_{schedule}{'_moco' if layout == 'torchvision' else ''}.yaml"
    cfg = d2_modeling.load_config(path)
    steps, max_iter = SCHEDULE[schedule]
    inputs = {k: MOCO_INPUT[k] for k in CAFFE2_INPUT} if layout == "torchvision" else CAFFE2_INPUT
    for key, value in {**RESOLVED, **inputs, "SOLVER.STEPS": steps, "SOLVER.MAX_ITER": max_iter}.items():
        got = _get(cfg, key)
        if isinstance(value, list) and isinstance(value[0], float):
            assert list(got) == pytest.approx(value, rel=1e-12), key
        else:
            assert got == value, key
    assert COCO.default_schedule == "2x"  # the official MoCo COCO config


def test_coco_constants_are_detectron2s():
    from detectron2.data.datasets.builtin import _PREDEFINED_SPLITS_COCO
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    assert coco_data.COCO_THING_CATEGORIES == tuple((c["id"], c["name"]) for c in COCO_CATEGORIES if c["isthing"])
    assert all(coco_data.COCO_SPLITS[k] == _PREDEFINED_SPLITS_COCO["coco"][k] for k in coco_data.COCO_SPLITS)
    names = {n for _, n in coco_data.COCO_THING_CATEGORIES}
    assert set(coco_data.VOC_TO_COCO.values()) <= names and len(set(coco_data.VOC_TO_COCO.values())) == 20


# ------------------------------------------------------------------------------------------------ data


def test_pixel_polygons_rasterise_to_exactly_the_pixels():
    rng = np.random.default_rng(0)
    mask = rng.random((23, 31)) < 0.4  # holes, islands, single pixels
    mask[5:15, 3:20] = True
    mask[8:11, 8:12] = False
    rle = mask_util.merge(mask_util.frPyObjects(pixel_polygons(mask), *mask.shape))
    assert np.array_equal(mask_util.decode(rle).astype(bool), mask)


def test_mini_coco_loads_through_detectron2_with_every_mask_inside_its_box(mini_data_root):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.structures import BoxMode

    from mocoeval.data.layout import check_coco_root

    assert check_coco_root(mini_data_root)["coco_2017_val"]["images"] == TEST_SIZES["coco_val"]
    coco_data.register_coco_datasets(mini_data_root)
    allowed = {cid for cid, n in coco_data.COCO_THING_CATEGORIES if n in coco_data.VOC_TO_COCO.values()}
    to_id = {v: k for k, v in MetadataCatalog.get("coco_2017_train").thing_dataset_id_to_contiguous_id.items()}
    for split, n_images in (("coco_2017_train", TEST_SIZES["coco_train"]), ("coco_2017_val", TEST_SIZES["coco_val"])):
        dicts = DatasetCatalog.get(split)  # Detectron2's load_coco_json
        assert len(dicts) == n_images and all(Path(d["file_name"]).is_file() for d in dicts)
        n_instances = 0
        for d in dicts:
            for ann in d["annotations"]:
                n_instances += 1
                assert ann["bbox_mode"] == BoxMode.XYWH_ABS and ann["iscrowd"] == 0
                assert to_id[ann["category_id"]] in allowed
                x, y, w, h = ann["bbox"]
                polys = ann["segmentation"]
                assert polys and all(len(p) >= 6 and len(p) % 2 == 0 for p in polys)
                xs = np.concatenate([p[0::2] for p in polys])
                ys = np.concatenate([p[1::2] for p in polys])
                assert xs.min() >= x and xs.max() <= x + w and ys.min() >= y and ys.max() <= y + h
                pixels = mask_util.decode(mask_util.merge(mask_util.frPyObjects(polys, d["height"], d["width"])))
                rows, cols = np.nonzero(pixels)
                # the mask is the object's pixels and the box is their extent: it touches all four sides
                assert (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1) == (x, y, x + w, y + h)
        assert n_instances >= n_images


def _break(root: Path, how: str) -> str:
    coco = root / "coco"
    val_json = coco / "annotations" / "instances_val2017.json"
    if how == "no image folder":
        shutil.rmtree(coco / "val2017")
        return "val2017: missing coco_2017_val image folder"
    if how == "no json":
        val_json.unlink()
        return "instances_val2017.json: missing annotation file"
    if how == "malformed json":
        val_json.write_text('{"images": [')
        return "instances_val2017.json: malformed json"
    data = json.loads(val_json.read_text())
    if how == "image absent":
        (coco / "val2017" / data["images"][0]["file_name"]).unlink()
        return f"{data['images'][0]['file_name']}: missing image (image {data['images'][0]['id']}"
    if how == "not COCO's categories":
        data["categories"] = data["categories"][:20]
    val_json.write_text(json.dumps(data))
    return "categories are not COCO's 80"


@pytest.mark.parametrize(
    "how", ["no image folder", "no json", "malformed json", "image absent", "not COCO's categories"]
)
def test_bad_coco_layouts_are_refused_in_one_line(how, tmp_path, mini_data_root, random_r50_pkl, capsys):
    root = tmp_path / "data"
    shutil.copytree(mini_data_root / "coco", root / "coco")
    expected = _break(root, how)
    with pytest.raises(SystemExit) as e:
        run_coco_main(
            [
                "--weights",
                str(random_r50_pkl),
                "--dataset-root",
                str(root),
                "--device",
                "cpu",
                "--output-dir",
                str(tmp_path / "out"),
                "--dry-run",
            ]
        )
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error: ") and expected in err, err
    assert not (tmp_path / "out").exists()


def test_schedule_flag_and_non_coco_datasets(tmp_path, mini_data_root, random_r50_pkl, capsys):
    common = [
        "--weights",
        str(random_r50_pkl),
        "--dataset-root",
        str(mini_data_root),
        "--device",
        "cpu",
        "--output-dir",
        str(tmp_path / "out"),
        "--dry-run",
    ]
    for extra, message in [
        (["--schedule", "1x", "--config-file", str(CONFIGS / "coco_R_50_C4_1x_moco.yaml")], "--schedule"),
        (["--opts", "DATASETS.TEST", "('voc_2007_test',)"], "'voc_2007_test'"),
        (["--opts", "MODEL.MASK_ON", "False"], "MASK_ON"),
    ]:
        with pytest.raises(SystemExit):
            run_coco_main([*common, *extra])
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert run_coco_main([*common, "--schedule", "1x"]) == 0 and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ trials


@pytest.mark.slow
def test_two_trials_killed_and_resumed_write_box_and_mask_ap_a_summary_and_a_record(
    tmp_path, random_r50_pkl, mini_data_root, store
):
    """Trial 1 finishes, trial 2 is SIGKILLed after its first timed resume point; the same command skips trial 1,
    resumes trial 2 from that point and writes the summary and one "coco" record with both AP families."""
    out = tmp_path / "run"
    command = cpu_run_args(
        random_r50_pkl,
        out,
        mini_data_root,
        "--trials",
        "2",
        "--checkpoint-minutes",
        "1e-9",
        "--opts",
        *COCO_TINY_OPTS,
        "SOLVER.MAX_ITER",
        "4",
    )
    t2 = out / "trial_2"
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "transfer" / "run_coco.py"), *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_subprocess_env(store),
        cwd=REPO,
    )
    try:
        kill_when(proc, (t2 / "last_checkpoint").exists, "trial 2's checkpoint")
    finally:
        proc.kill()
        proc.wait()
    assert (out / "trial_1" / "metrics.json").exists() and not (t2 / "metrics.json").exists()
    resume_iter = int((t2 / "last_checkpoint").read_text().strip()[len("model_") : -len(".pth")]) + 1

    assert run_coco_main(command) == 0
    assert "trial 1/2 (seed 0): finished earlier, skipped" in (out / "log.txt").read_text()
    for i in (1, 2):
        m = json.loads((out / f"trial_{i}" / "metrics.json").read_text())
        assert m["seed"] == i - 1 and m["iterations"] == 4
        assert all(0.0 <= m[k] <= 100.0 for k in COCO.metrics), m
    assert json.loads((t2 / "metrics.json").read_text())["resumed_from_iter"] == resume_iter
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["metrics"]) == list(COCO.metrics) and summary["metrics"]["mask_AP"]["n"] == 2
    assert "coco_2017_val" in summary["dataset"]
    records = list(store.glob("*_coco_*.json"))
    assert len(records) == 1
    rec = json.loads(records[0].read_text())
    assert rec["stage"] == "coco" and rec["seeds"] == [0, 1] and rec["source_sha256"] == "0" * 64
    assert rec["config_hash"] and rec["config"] and [t["trial"] for t in rec["trials"]] == [1, 2]
    for key in COCO.metrics:
        assert rec["metrics"][key] == pytest.approx(summary["metrics"][key]["mean"])
        assert rec["metrics"][f"{key}_std"] == pytest.approx(summary["metrics"][key]["std"])
        assert len(rec["metrics"]["per_trial"][key]) == 2
    assert rec["metrics"]["n_trials"] == 2


def test_a_default_coco_run_is_the_tables_official_protocol():
    """run_coco.py's default configs hash as the tables' official COCO identity (so its rows meet the paper)."""
    from mocoeval import CONFIG_DIR
    from mocoeval.results.identity import config_hash, official_config_hash
    from mocoeval.transfer.detection.config import build_config

    for variant, name in (("d", "coco_R_50_C4_2x_moco.yaml"), ("supervised", "coco_R_50_C4_2x.yaml")):
        cfg, _ = build_config(CONFIG_DIR / name, device="cuda", weights="")
        assert config_hash(cfg) == official_config_hash(variant, "coco")
