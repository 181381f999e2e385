"""Issue 30: every framework's checkpoint layout converts, with the backbone the framework evaluates.

One random torchvision ResNet-50 with non-trivial BN statistics (test_convert's `r50_state`) is re-keyed into each
layout exactly as that framework saves it, with a *different* network as the momentum copy / student (a decoy:
converting it would change every tensor), heads beside it and training state around it. Each builder names the
framework's file the layout was read from. The conversion must return the backbone bit for bit and say so.
"""

from __future__ import annotations

import argparse
import pickle

import numpy as np
import pytest
import torch
from test_convert import _expect_error, r50_state  # noqa: F401 - the shared fixture and the one-line-error check

from mocoeval.convert import detectron2_weights as dc
from mocoeval.convert import formats as cf
from mocoeval.convert import to_d2


@pytest.fixture(scope="module")
def backbone(r50_state):  # noqa: F811
    """The ResNet-50 backbone tensors (no fc, no BN step counters)."""
    return {k: v for k, v in r50_state.items() if k in cf.RESNET50_SHAPES}


@pytest.fixture(scope="module")
def decoy(backbone):
    """Another network with the same keys and shapes: a momentum copy or student that must never be converted."""
    return {k: v * 0.5 + 0.25 for k, v in backbone.items()}


def _keyed(sd, prefix, rename=lambda k: k):
    out = {prefix + rename(k): v for k, v in sd.items()}
    out.update(
        {
            prefix + rename(k.rsplit(".", 1)[0]) + ".num_batches_tracked": torch.tensor(7)
            for k in sd
            if k.endswith(".running_var")
        }
    )
    return out


def _lightly_key(k):
    head, _, rest = k.partition(".")
    if head.startswith("layer"):
        return f"{int(head[5:]) + 3}.{rest}"
    return {"conv1": "0", "bn1": "1"}[head] + "." + rest


def _mlp(prefix, dims=(2048, 64, 32)):
    return {f"{prefix}{i}.weight": torch.randn(dims[i + 1], dims[i]) for i in range(len(dims) - 1)}


def build(layout, bb, other):
    """(checkpoint object, expected format, expected groups in the report) of one framework's layout."""
    if layout in ("vissl", "vissl_extractor"):
        # facebookresearch/vissl: vissl/models/base_ssl_model.py (get_classy_state), vissl/models/trunks/resnext.py;
        # a linear-evaluation run's FeatureExtractorModel trunk nests the network under base_model.
        blocks = "_feature_blocks." if layout == "vissl" else "base_model._feature_blocks."
        base_model = {
            "model": {"trunk": _keyed(bb, blocks), "heads": _mlp("0.clf.")},
            "meta": {"trunk": {}, "heads": []},
        }
        return (
            {
                "phase_idx": 10,
                "iteration": 500,
                "loss": {},
                "iteration_num": 500,
                "train_phase_idx": 10,
                "classy_state_dict": {"base_model": base_model, "optimizer": {}, "phase_idx": 10},
            },
            "vissl",
            ["heads 2", "BN step counters 53"],
        )
    if layout == "mmselfsup":  # open-mmlab/mmselfsup: mmselfsup/models/algorithms/moco.py (1.x, EMA encoder_k)
        # no data_preprocessor.mean/std: mmengine registers them as non-persistent buffers
        sd = {
            **_keyed(bb, "backbone."),
            **_mlp("neck.mlp."),
            **_keyed(other, "encoder_k.module.0."),
            **_mlp("encoder_k.module.1.mlp."),
            "encoder_k.steps": torch.tensor(1000),
            "queue": torch.randn(128, 65536 // 64),
            "queue_ptr": torch.zeros(1, dtype=torch.long),
        }
        return (
            {
                "meta": {"epoch": 200, "mmengine_version": "0.7.0", "cfg": "model = dict(type='MoCo', ...)"},
                "state_dict": sd,
                "message_hub": {},
                "optimizer": {},
                "param_schedulers": [],
            },
            "mmselfsup",
            ["momentum copy 321", "queue 2", "neck 2"],
        )
    if layout == "mmselfsup_mocov3":  # open-mmlab/mmselfsup: mmselfsup/models/algorithms/mocov3.py (1.0.0rc)
        # base_encoder = Sequential(backbone, neck), self.backbone = base_encoder[0]: both keys hold the tensors
        sd = {
            **_keyed(bb, "base_encoder.0."),
            **_mlp("base_encoder.1.mlp."),
            **_keyed(bb, "backbone."),
            **_mlp("neck.mlp."),
            **_keyed(other, "momentum_encoder.0."),
            **_mlp("momentum_encoder.1.mlp."),
            **_mlp("head.predictor.mlp."),
        }
        return (
            {"meta": {"epoch": 300}, "state_dict": sd, "optimizer": {}},
            "mmselfsup",
            ["momentum copy 320", "query encoder (the backbone's tensors again) 318", "neck 4", "head 2"],
        )
    if layout == "openselfsup_densecl":  # WXinlong/DenseCL openselfsup/models/densecl.py (OpenSelfSup moco.py)
        sd = {
            **_keyed(bb, "encoder_q.0."),
            **_mlp("encoder_q.1.mlp."),
            **_keyed(bb, "backbone."),
            **_keyed(other, "encoder_k.0."),
            **_mlp("encoder_k.1.mlp."),
            "queue": torch.randn(128, 16),
            "queue_ptr": torch.zeros(1, dtype=torch.long),
            "queue2": torch.randn(128, 16),
        }
        return (
            {"meta": {"epoch": 200}, "state_dict": sd, "optimizer": {}},
            "mmselfsup",
            ["momentum copy 320", "query encoder (the backbone's tensors again) 318", "neck 2"],
        )
    if layout in ("solo_learn", "solo_learn_old"):
        # vturrisi/solo-learn: solo/methods/base.py (Lightning .ckpt); the first releases said encoder for backbone
        name = "backbone" if layout == "solo_learn" else "encoder"
        sd = {
            **_keyed(bb, f"{name}."),
            **_keyed(other, f"momentum_{name}."),
            **_mlp("projector."),
            **_mlp("momentum_projector."),
            **_mlp("predictor."),
            "classifier.weight": torch.randn(1000, 2048),
            "classifier.bias": torch.zeros(1000),
            "momentum_classifier.weight": torch.randn(1000, 2048),
        }
        return (
            {
                "epoch": 399,
                "global_step": 10,
                "pytorch-lightning_version": "1.9.0",
                "state_dict": sd,
                "loops": {},
                "callbacks": {},
                "optimizer_states": [],
                "lr_schedulers": [],
                "hyper_parameters": {"method": "byol"},
            },
            "solo_learn",
            ["momentum copy 321", "projector 2", "predictor 2", "classifier 2"],
        )
    if layout == "lightly":  # lightly-ai/lightly: examples/pytorch/moco.py
        sd = {
            **_keyed(bb, "backbone.", _lightly_key),
            **_keyed(other, "backbone_momentum.", _lightly_key),
            **_mlp("projection_head.layers."),
            **_mlp("projection_head_momentum.layers."),
        }
        return sd, "lightly", ["momentum copy 320", "projection head 2"]
    if layout in ("swav", "swav_release"):
        # facebookresearch/swav: main_swav.py (save_dict), src/resnet50.py (projection_head = Linear, BatchNorm1d,
        # ReLU, Linear; prototypes), hubconf.py (the release: the same state dict, bare)
        bn = {
            "weight": torch.ones(64),
            "bias": torch.zeros(64),
            "running_mean": torch.zeros(64),
            "running_var": torch.ones(64),
        }
        head = {
            "0.weight": torch.randn(64, 2048),
            "0.bias": torch.zeros(64),
            **_keyed(bn, "1."),
            "3.weight": torch.randn(32, 64),
            "3.bias": torch.zeros(32),
        }
        head = {**_keyed(head, "module.projection_head."), "module.prototypes.weight": torch.randn(3000, 32)}
        sd = {**_keyed(bb, "module."), **head}
        groups = ["projection head 9", "prototypes 1"]
        return ({"epoch": 800, "state_dict": sd, "optimizer": {}} if layout == "swav" else sd), "swav", groups
    if layout == "dino":  # facebookresearch/dino: main_dino.py (save_dict), eval_linear.py (--checkpoint_key teacher)
        return (
            {
                "student": {**_keyed(other, "module.backbone."), **_mlp("module.head.mlp.")},
                "teacher": {**_keyed(bb, "module.backbone."), **_mlp("module.head.mlp.")},
                "optimizer": {},
                "epoch": 800,
                "args": argparse.Namespace(arch="resnet50"),
                "dino_loss": {"center": torch.zeros(1, 60000)},
            },
            "dino",
            ["student 320", "DINO head 2", "loss center 1"],
        )
    if layout == "barlow_twins":  # facebookresearch/barlowtwins: main.py (checkpoint.pth)
        sd = {
            **_keyed(bb, "module.backbone."),
            **_mlp("module.projector."),
            "module.bn.running_mean": torch.zeros(32),
            "module.bn.running_var": torch.ones(32),
            "module.bn.num_batches_tracked": torch.tensor(5),
        }
        return {"epoch": 1000, "model": sd, "optimizer": {}}, "barlow_twins", ["projector 2", "embedding BN 3"]
    if layout == "backbone_only":  # facebookresearch/barlowtwins main.py resnet50.pth; dino hubconf.py (no fc)
        return _keyed(bb, ""), "torchvision", ["BN step counters 53"]
    if layout == "timm":  # huggingface/pytorch-image-models: timm/models/resnet.py (torchvision names + fc)
        return (
            {**_keyed(bb, ""), "fc.weight": torch.randn(1000, 2048), "fc.bias": torch.zeros(1000)},
            "torchvision",
            ["classifier / head 2"],
        )
    if layout == "simclr_converted":  # tonylins/simclr-converter: convert.py ({'state_dict': torchvision names})
        return (
            {"state_dict": {**_keyed(bb, ""), "fc.weight": torch.randn(1000, 2048), "fc.bias": torch.zeros(1000)}},
            "torchvision",
            ["classifier / head 2"],
        )
    raise AssertionError(layout)  # pragma: no cover


LAYOUTS = [
    "vissl",
    "vissl_extractor",
    "mmselfsup",
    "mmselfsup_mocov3",
    "openselfsup_densecl",
    "solo_learn",
    "solo_learn_old",
    "lightly",
    "swav",
    "swav_release",
    "dino",
    "barlow_twins",
    "backbone_only",
    "timm",
    "simclr_converted",
]


def _save(tmp_path, obj, name="ckpt.pth"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_framework_layout_gives_the_evaluated_backbone(layout, backbone, decoy, tmp_path):
    obj, fmt, groups = build(layout, backbone, decoy)
    path = _save(tmp_path, obj)
    sd, info = cf.load_resnet50(path, trust_pickle=(layout == "dino"))  # DINO pickles its argparse args
    assert info["format"] == fmt
    assert list(sd) == list(cf.RESNET50_SHAPES)
    assert all(torch.equal(sd[k], backbone[k]) for k in sd), "converted something other than the evaluated backbone"
    report = "\n".join(info["report"])
    assert f"format: {fmt}:" in report and "mapped 265 of 265 ResNet-50 tensors" in report
    for group in groups:
        assert group in info["report"][-1], (group, info["report"][-1])
    assert info["input"]["channels"] == "RGB"
    np.testing.assert_allclose(info["input"]["pixel_mean"], (123.675, 116.28, 103.53), atol=1e-3)


@pytest.mark.parametrize(
    "layout,select",
    [
        ("dino", "student"),
        ("solo_learn", "momentum_backbone"),
        ("lightly", "backbone_momentum"),
        ("mmselfsup", "momentum"),
        ("mmselfsup_mocov3", "momentum"),
        ("solo_learn_old", "momentum_encoder"),
    ],
)
def test_select_converts_the_other_candidate(layout, select, backbone, decoy, tmp_path):
    obj, fmt, _ = build(layout, backbone, decoy)
    path = _save(tmp_path, obj)
    _, info = cf.load_resnet50(path, trust_pickle=True)
    assert f"--select {select}" in info["report"][3]  # "also found: ..." offers the other backbone
    sd, info = cf.load_resnet50(path, trust_pickle=True, select=select)
    assert all(torch.equal(sd[k], decoy[k]) for k in sd) and "chosen with --select" in info["report"][1]
    with pytest.raises(cf.UserError, match="has no such backbone"):
        cf.load_resnet50(path, trust_pickle=True, select="nope")


@pytest.mark.parametrize("layout", ["dino", "lightly", "vissl"])
def test_converts_loads_into_r50_c4_and_verifies(layout, backbone, decoy, tmp_path, capsys):
    """The whole command with --verify: R50-C4 loads every backbone key, res4/res5 equal layer3/layer4."""
    obj, fmt, _ = build(layout, backbone, decoy)
    path, out = _save(tmp_path, obj), tmp_path / "out.pkl"
    assert to_d2.main([str(path), str(out), "--verify", "--trust-pickle"]) == 0
    stdout = capsys.readouterr().out
    assert f"format: {fmt}:" in stdout and "verify: OK" in stdout and "left out:" in stdout
    data = dc.check_d2_pickle(out)
    assert data["mocoeval_source"]["format"] == fmt
    assert data["mocoeval_input"] == {
        "channels": "RGB",
        "pixel_mean": [123.675, 116.28, 103.53],
        "pixel_std": [58.395, 57.12, 57.375],
    }


def test_input_norm_is_recorded(backbone, decoy, tmp_path, capsys):
    obj, _, _ = build("simclr_converted", backbone, decoy)
    path, out = _save(tmp_path, obj), tmp_path / "simclr.pkl"
    assert to_d2.main([str(path), str(out), "--input-norm", "none"]) == 0
    assert "input: RGB, pixel mean [0.0, 0.0, 0.0], std [255.0, 255.0, 255.0]" in capsys.readouterr().out
    assert dc.check_d2_pickle(out)["mocoeval_input"]["pixel_std"] == [255.0, 255.0, 255.0]


def test_torchvision_names_are_not_the_supervised_row_unless_asked(backbone, decoy, tmp_path, capsys):
    """DINO's and Barlow Twins' backbone-only files have torchvision names: named after the file, with a warning."""
    obj, _, _ = build("backbone_only", backbone, decoy)
    path, out = _save(tmp_path, obj, "dino_resnet50_pretrain.pth"), tmp_path / "o.pkl"
    assert to_d2.main([str(path), str(out)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: dino_resnet50_pretrain.pth:")
    assert "variant 'dino_resnet50_pretrain'" in err[0] and "--variant supervised" in err[0]
    assert dc.check_d2_pickle(out)["mocoeval_source"]["variant"]["name"] == "dino_resnet50_pretrain"
    assert to_d2.main([str(path), str(out), "--variant", "supervised"]) == 0
    assert capsys.readouterr().err == ""
    assert dc.check_d2_pickle(out)["mocoeval_source"]["variant"]["name"] == "supervised"
    _, info = cf.load_resnet50(_save(tmp_path, build("dino", backbone, decoy)[0]), trust_pickle=True)
    assert info["warnings"] == []  # a framework's own layout says what trained it


def test_verify_checks_the_config_against_the_recorded_input_norm(backbone, decoy, tmp_path, capsys):
    """--verify: the default config takes the normalisation the .pkl records; a config feeding other input fails."""
    from mocoeval.transfer.detection import verify
    from mocoeval.transfer.detection.modeling import DEFAULT_VOC_CONFIG

    obj, _, _ = build("simclr_converted", backbone, decoy)
    path, out = _save(tmp_path, obj), tmp_path / "simclr.pkl"
    assert to_d2.main([str(path), str(out), "--input-norm", "none", "--verify"]) == 0
    assert "verify: OK" in capsys.readouterr().out
    result = verify.verify_conversion(backbone, out, DEFAULT_VOC_CONFIG)  # the MoCo config: ImageNet mean/std
    assert (
        not result["ok"] and "MODEL.PIXEL_STD [58.395, 57.12, 57.375] (needs [255.0, 255.0, 255.0])" in result["line"]
    )


def test_unknown_layout_suggests_prefix_and_prefix_reads_it(backbone, tmp_path, capsys):
    # torchvision's detection models keep the ResNet under backbone.body. (torchvision/models/detection/backbone_utils.py)
    path = _save(tmp_path, {"model": {**_keyed(backbone, "backbone.body."), **_mlp("rpn.head.")}, "epoch": 26})
    err = _expect_error(capsys, [str(path), str(tmp_path / "o.pkl")])
    assert "no known checkpoint layout (top level: 'model' (320 tensors: backbone., rpn.), 'epoch')" in err
    assert "rerun with --prefix model.backbone.body." in err
    sd, info = cf.load_resnet50(path, prefix="backbone.body.")
    assert all(torch.equal(sd[k], backbone[k]) for k in sd) and info["prefix"] == "model.backbone.body."
    assert "classifier / head 2" in info["report"][-1]
    err = _expect_error(capsys, [str(path), str(tmp_path / "o.pkl"), "--prefix", "trunk."])
    assert "--prefix 'trunk.' matches no ResNet-50 tensors" in err and "'model.backbone.body.' (265)" in err


def test_two_equally_plausible_backbones_need_select(backbone, decoy, tmp_path, capsys):
    path = _save(tmp_path, {**_keyed(backbone, "online."), **_keyed(decoy, "target.")})
    err = _expect_error(capsys, [str(path), str(tmp_path / "o.pkl")])
    assert "2 equally plausible ResNet-50 backbones" in err and "--select" in err
    sd, _ = cf.load_resnet50(path, select="target.")
    assert all(torch.equal(sd[k], decoy[k]) for k in sd)


def test_partial_backbone_is_refused(backbone, decoy, tmp_path, capsys):
    obj, _, _ = build("solo_learn", backbone, decoy)
    del obj["state_dict"]["backbone.layer4.2.bn3.running_var"]
    err = _expect_error(capsys, [str(_save(tmp_path, obj)), str(tmp_path / "o.pkl")])
    assert (
        "incomplete ResNet-50 under 'state_dict.backbone.' (solo_learn format): 1 of 265 tensors missing: "
        "layer4.2.bn3.running_var" in err
    )
    assert not (tmp_path / "o.pkl").exists()


def test_list_formats_names_every_framework_and_its_source(capsys):
    assert to_d2.main(["--list-formats"]) == 0
    out = capsys.readouterr().out
    for name in (
        "vissl",
        "mmselfsup",
        "solo_learn",
        "lightly",
        "swav",
        "dino",
        "barlow_twins",
        "moco",
        "moco_v3",
        "torchvision",
        "caffe2",
    ):
        assert f"\n{name} " in "\n" + out
    assert "facebookresearch/dino: main_dino.py" in out


def test_caffe2_weights_pass_through(backbone, tmp_path, capsys):
    """Detectron's MSRA R-50.pkl layout (detectron2/checkpoint/c2_model_loading.py): copied unchanged, with the
    BGR input it needs, and loadable by run_voc.py's reader."""
    blobs = {dc.c2_key(k): v.numpy().copy() for k, v in backbone.items() if dc.c2_key(k)}
    blobs.update({"fc1000_w": np.zeros((1000, 2048), np.float32), "fc1000_b": np.zeros(1000, np.float32)})
    src = tmp_path / "R-50.pkl"
    with open(src, "wb") as f:
        pickle.dump({"blobs": blobs}, f)
    out = tmp_path / "out.pkl"
    assert to_d2.main([str(src), str(out)]) == 0
    assert "format: caffe2:" in capsys.readouterr().out
    assert out.read_bytes() == src.read_bytes()
    assert dc.read_weights(out)[0] == "caffe2"
