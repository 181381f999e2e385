"""Table 1's supervised row: Detectron2's MSRA Caffe2 R-50.pkl with the official supervised config, and
torchvision's supervised ResNet-50 with the MoCo config; a config whose input settings contradict the weights
is refused. The Caffe2 file here is randomly initialised with R-50.pkl's blob names."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_run_voc import REPO, TINY_OPTS, _load_script, _subprocess_env

from mocoeval.convert.detectron2_weights import (
    C2_CLASSIFIER,
    C2_RESNET50_SHAPES,
    D2_RESNET50_SHAPES,
    check_input_settings,
    read_weights,
)
from mocoeval.runtime.errors import UserError
from mocoeval.transfer.detection import config as voc_config
from mocoeval.transfer.detection import modeling as d2_modeling
from mocoeval.transfer.detection import trial as voc_trial
from mocoeval.transfer.detection.verify import load_into_detector

CAFFE2_INPUT = {
    "FORMAT": "BGR",
    "PIXEL_MEAN": [103.530, 116.280, 123.675],
    "PIXEL_STD": [1.0, 1.0, 1.0],
    "STRIDE_IN_1X1": True,
}


def _inputs(cfg) -> dict:
    return {
        "FORMAT": cfg.INPUT.FORMAT,
        "PIXEL_MEAN": list(cfg.MODEL.PIXEL_MEAN),
        "PIXEL_STD": list(cfg.MODEL.PIXEL_STD),
        "STRIDE_IN_1X1": cfg.MODEL.RESNETS.STRIDE_IN_1X1,
    }


def _caffe2_blobs(seed: int = 0) -> dict:
    """Random R50 blobs under R-50.pkl's names: He-init convs, BN scale 1 / bias 0, the ImageNet classifier."""
    rng = np.random.default_rng(seed)
    blobs = {}
    for name, shape in C2_RESNET50_SHAPES.items():
        if name.endswith("_w"):
            fan_in = int(np.prod(shape[1:]))
            blobs[name] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        else:
            blobs[name] = np.full(shape, 1.0 if name.endswith("_s") else 0.0, np.float32)
    blobs["fc1000_w"] = (rng.standard_normal((1000, 2048)) * 0.01).astype(np.float32)
    blobs["fc1000_b"] = np.zeros(1000, np.float32)
    return blobs


@pytest.fixture(scope="module")
def caffe2_pkl(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("caffe2") / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": _caffe2_blobs()}, f, protocol=2)  # R-50.pkl is a Python 2 pickle
    return path


def test_supervised_config_pins_the_official_constants():
    cfg = d2_modeling.load_config(d2_modeling.SUPERVISED_VOC_CONFIG)
    assert d2_modeling.SUPERVISED_VOC_CONFIG.name == "pascal_voc_R_50_C4_24k.yaml"
    assert _inputs(cfg) == CAFFE2_INPUT
    assert cfg.MODEL.WEIGHTS == "" and cfg.MODEL.MASK_ON is False and cfg.MODEL.ROI_HEADS.NUM_CLASSES == 20
    assert cfg.MODEL.ROI_HEADS.NAME == "Res5ROIHeadsExtraNorm" and cfg.MODEL.RESNETS.NORM == "naiveSyncBN"
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 0 and cfg.TEST.PRECISE_BN.ENABLED
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == tuple(range(480, 801, 32)) and cfg.INPUT.MIN_SIZE_TEST == 800
    assert tuple(cfg.DATASETS.TRAIN) == ("voc_2007_trainval", "voc_2012_trainval")
    assert tuple(cfg.DATASETS.TEST) == ("voc_2007_test",)
    assert (
        cfg.SOLVER.IMS_PER_BATCH,
        cfg.SOLVER.BASE_LR,
        tuple(cfg.SOLVER.STEPS),
        cfg.SOLVER.MAX_ITER,
        cfg.SOLVER.WARMUP_ITERS,
    ) == (16, 0.02, (18000, 22000), 24000, 100)
    # the MoCo config is this one plus exactly the four input overrides
    moco = d2_modeling.load_config(d2_modeling.DEFAULT_VOC_CONFIG)
    for key, value in [
        ("INPUT.FORMAT", "RGB"),
        ("MODEL.PIXEL_MEAN", [123.675, 116.280, 103.530]),
        ("MODEL.PIXEL_STD", [58.395, 57.120, 57.375]),
        ("MODEL.RESNETS.STRIDE_IN_1X1", False),
    ]:
        cfg.merge_from_list([key, value])
    assert cfg.dump() == moco.dump()
    assert d2_modeling.VOC_CONFIG_FOR_LAYOUT == {
        "torchvision": d2_modeling.DEFAULT_VOC_CONFIG,
        "caffe2": d2_modeling.SUPERVISED_VOC_CONFIG,
    }


def test_caffe2_names_are_what_detectron2_renames_to_the_r50():
    from detectron2.checkpoint.c2_model_loading import convert_basic_c2_names

    names = list(C2_RESNET50_SHAPES)
    assert len(names) == 53 + 53 * 2  # 53 convs, 53 frozen BNs as scale + bias
    assert {
        "conv1_w",
        "res_conv1_bn_s",
        "res_conv1_bn_b",
        "res2_0_branch2a_w",
        "res2_0_branch2a_bn_s",
        "res2_0_branch1_w",
        "res2_0_branch1_bn_b",
        "res5_2_branch2c_bn_s",
    } <= set(names)
    renamed = dict(zip(names, convert_basic_c2_names(names)))
    assert set(renamed.values()) == {k for k in D2_RESNET50_SHAPES if not k.endswith(("running_mean", "running_var"))}
    assert all(C2_RESNET50_SHAPES[c2] == D2_RESNET50_SHAPES[d2] for c2, d2 in renamed.items())


def test_caffe2_pkl_recognised_gets_the_supervised_config_and_loads(caffe2_pkl):
    layout, blobs = read_weights(caffe2_pkl)
    assert layout == "caffe2" and set(C2_CLASSIFIER) <= set(blobs)
    weights = voc_trial.check_weights(caffe2_pkl)
    assert weights.layout == "caffe2" and weights.variant["name"] == "supervised"
    config_file = d2_modeling.VOC_CONFIG_FOR_LAYOUT[weights.layout]
    cfg, _ = voc_config.build_config(config_file, [], device="cpu", weights=weights.path)
    assert _inputs(cfg) == CAFFE2_INPUT
    check_input_settings(cfg, weights.layout, config_file)
    # only the new heads and (no running stats in Caffe2 files) BN statistics are missing; fc1000 is unused
    unused, report = voc_trial.preflight_weights(cfg, weights)
    assert unused == ["fc1000.bias", "fc1000.weight"]  # Detectron2's renaming of C2_CLASSIFIER
    assert "RPN (6), box predictor (4), res5 norm (4)" in report
    assert "BN running statistics start at mean 0 / var 1 (not in Caffe2 files): 106" in report
    # ... and the blobs landed where they belong: stem and res2-4 in the backbone, res5 in the RoI head
    model, _, _ = load_into_detector(caffe2_pkl, config_file)
    np.testing.assert_array_equal(model.backbone.stem.conv1.weight.detach().numpy(), blobs["conv1_w"])
    np.testing.assert_array_equal(model.roi_heads.res5[2].conv3.weight.detach().numpy(), blobs["res5_2_branch2c_w"])
    assert float(model.backbone.res4[0].conv1.norm.running_var.max()) == 1.0


def test_caffe2_without_bn_stats_only_tolerated_for_caffe2():
    missing = ["backbone.res2.0.conv1.norm.running_mean", "roi_heads.res5.0.conv1.norm.running_var"]
    assert voc_trial.check_loaded_keys(missing, [], "R-50.pkl", "caffe2") == []
    with pytest.raises(UserError, match="running_mean"):
        voc_trial.check_loaded_keys(missing, [], "w.pkl")
    with pytest.raises(UserError, match=r"conv1\.norm\.weight"):
        voc_trial.check_loaded_keys(["backbone.res2.0.conv1.norm.weight"], [], "R-50.pkl", "caffe2")


def test_incomplete_caffe2_pkl_refused(tmp_path):
    blobs = _caffe2_blobs()
    del blobs["res4_5_branch2c_w"]
    path = tmp_path / "cut.pkl"
    with open(path, "wb") as f:
        pickle.dump(blobs, f)  # flat blobs (no "blobs" key): Detectron2 reads that as Caffe2 too
    with pytest.raises(UserError, match=r"Caffe2 weights .* 1 of 159 ResNet-50 blobs missing: res4_5_branch2c_w"):
        voc_trial.check_weights(path)


@pytest.mark.parametrize(
    "layout, config", [("caffe2", d2_modeling.DEFAULT_VOC_CONFIG), ("torchvision", d2_modeling.SUPERVISED_VOC_CONFIG)]
)
def test_config_contradicting_the_layout_refused(layout, config):
    cfg, _ = voc_config.build_config(config, [], device="cpu")
    with pytest.raises(UserError) as e:
        check_input_settings(cfg, layout, config)
    msg = str(e.value)
    assert "\n" not in msg and "INPUT.FORMAT" in msg and "STRIDE_IN_1X1" in msg and "PIXEL_STD" in msg
    assert "leave out --config-file" in msg


def _cli_error(capsys, args) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        _load_script().main([str(a) for a in args])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err and err.startswith("error: "), err
    return err


def test_cli_refuses_mismatches_in_one_line(tmp_path, caffe2_pkl, random_r50_pkl, mini_data_root, capsys, store):
    common = ["--dataset-root", mini_data_root, "--output-dir", tmp_path / "o", "--dry-run", "--device", "cpu"]
    err = _cli_error(capsys, ["--weights", caffe2_pkl, "--config-file", d2_modeling.DEFAULT_VOC_CONFIG, *common])
    assert "does not fit Caffe2 (MSRA R-50.pkl) weights: INPUT.FORMAT RGB (needs BGR)" in err
    assert "(the settings of converted torchvision/MoCo weights)" in err
    err = _cli_error(capsys, ["--weights", random_r50_pkl, "--config-file", d2_modeling.SUPERVISED_VOC_CONFIG, *common])
    assert "does not fit converted torchvision/MoCo weights: INPUT.FORMAT BGR (needs RGB)" in err
    # the automatic choice, contradicted through --opts
    err = _cli_error(capsys, ["--weights", caffe2_pkl, *common, "--opts", "INPUT.FORMAT", "RGB"])
    assert "INPUT.FORMAT RGB (needs BGR)" in err and "PIXEL_MEAN" not in err
    assert not (tmp_path / "o").exists()


@pytest.fixture
def store(tmp_path, monkeypatch):
    path = tmp_path / "store"
    monkeypatch.setenv("MOCOEVAL_RESULTS_DIR", str(path))
    return path


def _dry_run(*args, store) -> str:
    """run_voc.py --dry-run in its own process (Detectron2 caches its loggers' streams per process): its output."""
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "transfer" / "run_voc.py"),
            *map(str, args),
            "--trials",
            "1",
            "--dry-run",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        env=_subprocess_env(store),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout + proc.stderr


def test_dry_run_with_caffe2_weights_prints_the_supervised_config(tmp_path, caffe2_pkl, mini_data_root, store):
    out = tmp_path / "run"
    log = _dry_run("--weights", caffe2_pkl, "--output-dir", out, "--dataset-root", mini_data_root, store=store)
    assert not out.exists()
    assert f"variant supervised, config {d2_modeling.SUPERVISED_VOC_CONFIG} (hash" in log
    assert "BN running statistics start at mean 0 / var 1" in log and "unused in the file: 2" in log


def test_torchvision_supervised_keeps_the_moco_config(tmp_path, random_r50_pkl, mini_data_root, store):
    weights = voc_trial.check_weights(random_r50_pkl, "supervised")
    assert weights.layout == "torchvision" and weights.variant["name"] == "supervised"
    out = tmp_path / "run"
    log = _dry_run(
        "--weights",
        random_r50_pkl,
        "--variant",
        "supervised",
        "--output-dir",
        out,
        "--dataset-root",
        mini_data_root,
        store=store,
    )
    assert not out.exists()
    assert f"variant supervised, config {d2_modeling.DEFAULT_VOC_CONFIG} (hash" in log
    assert "BN running statistics" not in log


@pytest.mark.slow
def test_caffe2_weights_train_two_iterations_and_record_the_supervised_row(tmp_path, caffe2_pkl, mini_data_root, store):
    out = tmp_path / "run"
    assert (
        _load_script().main(
            [
                "--weights",
                str(caffe2_pkl),
                "--trials",
                "1",
                "--output-dir",
                str(out),
                "--dataset-root",
                str(mini_data_root),
                "--device",
                "cpu",
                "--opts",
                *TINY_OPTS,
            ]
        )
        == 0
    )
    config = (out / "trial_1" / "config.yaml").read_text()
    assert "FORMAT: BGR" in config and "STRIDE_IN_1X1: true" in config
    records = [json.loads(p.read_text()) for p in store.glob("*.json")]
    assert [(r["stage"], r["variant"]["name"]) for r in records] == [("voc", "supervised")]
