"""Detectron2 on the mini VOC data: built-in dataset names re-pointed at the fixture root, and one
R50-C4 (MoCo detection config) training iteration through Detectron2's own loader and trainer."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from mocoeval.data.make_mini_data import TEST_SIZES
from mocoeval.data.voc import BUILTIN_VOC_DATASETS, register_voc_datasets


def test_register_voc_datasets_points_builtin_names_at_root(mini_data_root, tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    # Another root first: re-registering must replace it, not fail on the duplicate name.
    register_voc_datasets(tmp_path)
    assert MetadataCatalog.get("voc_2007_test").dirname == str(tmp_path / "VOC2007")
    names = register_voc_datasets(mini_data_root)
    assert set(names) == set(BUILTIN_VOC_DATASETS)
    expected = {
        "voc_2007_trainval": TEST_SIZES["voc2007_trainval"],
        "voc_2007_test": TEST_SIZES["voc2007_test"],
        "voc_2012_trainval": TEST_SIZES["voc2012_trainval"],
    }
    for name, count in expected.items():
        meta = MetadataCatalog.get(name)
        assert Path(meta.dirname).parent == Path(mini_data_root)
        assert meta.evaluator_type == "pascal_voc"
        assert meta.year == (2007 if "2007" in name else 2012)
        dicts = DatasetCatalog.get(name)
        assert len(dicts) == count
        assert all(Path(d["file_name"]).is_file() for d in dicts)
    # The train/val halves of trainval are there too (real VOC ships them).
    assert (
        len(DatasetCatalog.get("voc_2007_train")) + len(DatasetCatalog.get("voc_2007_val"))
        == TEST_SIZES["voc2007_trainval"]
    )


def test_r50_c4_trains_one_iteration_on_mini_voc(mini_data_root):
    from detectron2.data import build_detection_train_loader
    from detectron2.engine import SimpleTrainer
    from detectron2.modeling import build_model
    from detectron2.solver import build_optimizer
    from detectron2.utils.events import EventStorage

    from mocoeval.transfer.detection.modeling import DEFAULT_VOC_CONFIG, load_config

    register_voc_datasets(mini_data_root)
    cfg = load_config(
        DEFAULT_VOC_CONFIG,
        [
            "MODEL.WEIGHTS",
            "",
            "MODEL.DEVICE",
            "cpu",
            "SOLVER.IMS_PER_BATCH",
            2,
            "INPUT.MIN_SIZE_TRAIN",
            (96,),
            "INPUT.MAX_SIZE_TRAIN",
            160,
            "DATALOADER.NUM_WORKERS",
            0,
            "SOLVER.BASE_LR",
            0.001,
            "SEED",
            0,
            # Few proposals/ROIs: res5 runs once per ROI, the cost of R50-C4 on CPU (512/image: minutes).
            "MODEL.RPN.PRE_NMS_TOPK_TRAIN",
            200,
            "MODEL.RPN.POST_NMS_TOPK_TRAIN",
            16,
            "MODEL.RPN.BATCH_SIZE_PER_IMAGE",
            64,
            "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
            8,
        ],
    )
    assert cfg.DATASETS.TRAIN == ("voc_2007_trainval", "voc_2012_trainval")
    assert cfg.MODEL.ROI_HEADS.NAME == "Res5ROIHeadsExtraNorm"
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    loader = build_detection_train_loader(cfg)
    optimizer = build_optimizer(cfg, model)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}

    trainer = SimpleTrainer(model, loader, optimizer)
    with EventStorage(0) as storage:
        trainer.iter = 0
        trainer.run_step()
        losses = {k: v.median(1) for k, v in storage.histories().items() if k.startswith("loss_")}

    assert set(losses) >= {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
    assert all(math.isfinite(v) for v in losses.values()), losses
    # The step moved the detector heads and the backbone (FREEZE_AT 0: nothing frozen).
    changed = {k for k, v in model.named_parameters() if not torch.equal(v.detach(), before[k])}
    assert any(k.startswith("roi_heads.box_predictor") for k in changed)
    assert any(k.startswith("backbone.stem") for k in changed)
    assert any(k.startswith("roi_heads.res5.norm") for k in changed)
    del trainer, loader  # the infinite loader iterator holds no worker processes (NUM_WORKERS 0)
