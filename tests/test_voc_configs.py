"""Every value of the three detection configs against the protocol (protocol.md, "VOC detection fine-tuning":
the official MoCo detection configs, facebookresearch/moco detection/configs/)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from detectron2.config import get_cfg

from mocoeval.transfer.detection import modeling as d2_modeling

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
BASE = CONFIG_DIR / "Base-RCNN-C4-BN.yaml"
VOC_24K = CONFIG_DIR / "pascal_voc_R_50_C4_24k.yaml"
VOC_24K_MOCO = CONFIG_DIR / "pascal_voc_R_50_C4_24k_moco.yaml"

# What each YAML sets itself, flattened (KEY -> value); any other key in a file fails the test.
BASE_VALUES = {
    "MODEL.META_ARCHITECTURE": "GeneralizedRCNN",
    "MODEL.WEIGHTS": "",  # never Detectron2's URL default: run_voc.py sets --weights (no network here)
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 6000,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 1000,
    "MODEL.ROI_HEADS.NAME": "Res5ROIHeadsExtraNorm",
    "MODEL.BACKBONE.FREEZE_AT": 0,
    "MODEL.RESNETS.NORM": "naiveSyncBN",  # the official choice since Nov 2020 (was SyncBN)
    "TEST.PRECISE_BN.ENABLED": True,
    "SOLVER.IMS_PER_BATCH": 16,
    "SOLVER.BASE_LR": 0.02,
    "VERSION": 2,
}
VOC_24K_VALUES = {
    "_BASE_": "Base-RCNN-C4-BN.yaml",
    "MODEL.MASK_ON": False,
    "MODEL.WEIGHTS": "",
    "MODEL.ROI_HEADS.NUM_CLASSES": 20,
    "INPUT.MIN_SIZE_TRAIN": "(480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)",
    "INPUT.MIN_SIZE_TEST": 800,
    "DATASETS.TRAIN": "('voc_2007_trainval', 'voc_2012_trainval')",
    "DATASETS.TEST": "('voc_2007_test',)",
    "SOLVER.STEPS": "(18000, 22000)",
    "SOLVER.MAX_ITER": 24000,
    "SOLVER.WARMUP_ITERS": 100,
}
VOC_24K_MOCO_VALUES = {
    "_BASE_": "pascal_voc_R_50_C4_24k.yaml",
    "MODEL.PIXEL_MEAN": [123.675, 116.280, 103.530],
    "MODEL.PIXEL_STD": [58.395, 57.120, 57.375],
    "MODEL.WEIGHTS": "",
    "MODEL.RESNETS.STRIDE_IN_1X1": False,
    "INPUT.FORMAT": "RGB",
}

# The resolved protocol config (YAML values plus the Detectron2 defaults the protocol relies on).
RESOLVED_MOCO = {
    "MODEL.META_ARCHITECTURE": "GeneralizedRCNN",
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 6000,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 1000,
    "MODEL.ROI_HEADS.NAME": "Res5ROIHeadsExtraNorm",
    "MODEL.BACKBONE.FREEZE_AT": 0,
    "MODEL.RESNETS.NORM": "naiveSyncBN",
    "TEST.PRECISE_BN.ENABLED": True,
    "SOLVER.IMS_PER_BATCH": 16,
    "SOLVER.BASE_LR": 0.02,
    "MODEL.MASK_ON": False,
    "MODEL.ROI_HEADS.NUM_CLASSES": 20,
    "INPUT.MIN_SIZE_TRAIN": tuple(range(480, 801, 32)),
    "INPUT.MIN_SIZE_TEST": 800,
    "DATASETS.TRAIN": ("voc_2007_trainval", "voc_2012_trainval"),
    "DATASETS.TEST": ("voc_2007_test",),
    "SOLVER.STEPS": (18000, 22000),
    "SOLVER.MAX_ITER": 24000,
    "SOLVER.WARMUP_ITERS": 100,
    "MODEL.PIXEL_MEAN": [123.675, 116.280, 103.530],
    "MODEL.PIXEL_STD": [58.395, 57.120, 57.375],
    "INPUT.FORMAT": "RGB",
    "MODEL.RESNETS.STRIDE_IN_1X1": False,
    "MODEL.WEIGHTS": "",
    # Inherited Detectron2 defaults worth knowing (protocol.md), pinned so that no YAML changes them.
    "MODEL.RESNETS.DEPTH": 50,
    "MODEL.BACKBONE.NAME": "build_resnet_backbone",
    "MODEL.RESNETS.OUT_FEATURES": ["res4"],  # C4: res5 lives in the ROI head
    "MODEL.RPN.IN_FEATURES": ["res4"],
    "MODEL.ROI_HEADS.IN_FEATURES": ["res4"],
    "INPUT.MAX_SIZE_TRAIN": 1333,
    "INPUT.MAX_SIZE_TEST": 1333,
    "SOLVER.WEIGHT_DECAY": 1e-4,
    "SOLVER.WEIGHT_DECAY_NORM": 0.0,
    "SOLVER.MOMENTUM": 0.9,
    "SOLVER.WARMUP_FACTOR": 1.0 / 1000,
    "SOLVER.LR_SCHEDULER_NAME": "WarmupMultiStepLR",
    "SOLVER.GAMMA": 0.1,
    "SOLVER.CHECKPOINT_PERIOD": 5000,
    "TEST.EVAL_PERIOD": 0,  # evaluate once, at the end
    "TEST.PRECISE_BN.NUM_ITER": 200,
    "SEED": -1,  # Detectron2's random default: run_voc.py always sets a seed per trial
}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


@pytest.mark.parametrize(
    "path, expected",
    [(BASE, BASE_VALUES), (VOC_24K, VOC_24K_VALUES), (VOC_24K_MOCO, VOC_24K_MOCO_VALUES)],
    ids=lambda x: getattr(x, "name", ""),
)
def test_yaml_sets_exactly_the_official_values(path, expected):
    raw = _flatten(yaml.safe_load(path.read_text()))
    assert raw == expected


def test_base_resolves_to_its_values():
    cfg = d2_modeling.load_config(BASE)
    for key, value in BASE_VALUES.items():
        assert _get(cfg, key) == value, key


def test_24k_resolves_to_its_values():
    cfg = d2_modeling.load_config(VOC_24K)
    for key, value in {**BASE_VALUES, **RESOLVED_MOCO}.items():
        if key in VOC_24K_MOCO_VALUES and key != "MODEL.WEIGHTS":
            continue  # set by the _moco file only
        expected = tuple(value) if isinstance(value, tuple) else value
        assert _get(cfg, key) == expected, key
    # without the MoCo overrides: Detectron2's Caffe2-style BGR input and stride in the 1x1 conv
    assert cfg.INPUT.FORMAT == "BGR" and cfg.MODEL.RESNETS.STRIDE_IN_1X1 is True


def test_moco_config_resolves_to_the_protocol():
    cfg = d2_modeling.load_config(VOC_24K_MOCO)
    assert d2_modeling.DEFAULT_VOC_CONFIG == VOC_24K_MOCO
    for key, value in RESOLVED_MOCO.items():
        got = _get(cfg, key)
        if isinstance(value, float):
            assert got == pytest.approx(value, rel=1e-12), key
        elif isinstance(value, list) and value and isinstance(value[0], float):
            assert list(got) == pytest.approx(value, rel=1e-12), key
        else:
            assert got == value, key
    # MIN_SIZE_TRAIN is 480..800 in steps of 32 (11 sizes); ~23 epochs of VOC07+12 (16,551 images)
    assert cfg.INPUT.MIN_SIZE_TRAIN[0] == 480 and cfg.INPUT.MIN_SIZE_TRAIN[-1] == 800
    assert len(cfg.INPUT.MIN_SIZE_TRAIN) == 11
    assert 22 < cfg.SOLVER.MAX_ITER * cfg.SOLVER.IMS_PER_BATCH / 16551 < 24


def test_default_config_builds_r50_c4_with_extra_res5_norm():
    cfg = d2_modeling.load_config(VOC_24K_MOCO, ["MODEL.DEVICE", "cpu"])
    from detectron2.layers import NaiveSyncBatchNorm
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    model = build_model(cfg)
    res5 = model.roi_heads.res5
    names = [n for n, _ in res5.named_children()]
    assert names == ["0", "1", "2", "norm"]  # three bottleneck blocks, then the extra norm
    assert isinstance(res5.norm, NaiveSyncBatchNorm) and res5.norm.num_features == 2048
    assert type(model.roi_heads).__name__ == "Res5ROIHeadsExtraNorm"
    assert not hasattr(model.backbone, "res5")
    # every ResNet norm is the configured synchronised BN, nothing frozen (FREEZE_AT 0)
    assert isinstance(model.backbone.stem.conv1.norm, NaiveSyncBatchNorm)
    assert all(p.requires_grad for p in model.backbone.parameters())
    assert model.roi_heads.box_predictor.cls_score.out_features == 21  # 20 classes + background


def test_configs_merge_with_plain_get_cfg():
    """The YAMLs are valid Detectron2 configs on their own (only the ROI head name needs our module)."""
    for path in (BASE, VOC_24K, VOC_24K_MOCO):
        cfg = get_cfg()
        cfg.merge_from_file(str(path))
        assert cfg.MODEL.ROI_HEADS.NAME == "Res5ROIHeadsExtraNorm"
