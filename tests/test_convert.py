"""convert/to_d2.py and its library (mocoeval.convert.formats, mocoeval.convert.detectron2_weights).

Every input format is written from one randomly initialised torchvision ResNet-50 whose BN layers carry
non-trivial affine parameters and running statistics (a mix-up of BN tensors would change the features),
converted, and verified numerically against Detectron2's R50-C4 built from the converted file.
"""

from __future__ import annotations

import argparse
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from mocoeval.convert import detectron2_weights as dc
from mocoeval.convert import formats as cf
from mocoeval.results.store import pretrain_variant, special_variant
from mocoeval.runtime.errors import UserError
from mocoeval.runtime.fileio import sha256_file
from mocoeval.transfer.detection import verify

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "convert" / "to_d2.py"


from mocoeval.convert import to_d2  # noqa: E402


@pytest.fixture(autouse=True)
def _results_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MOCOEVAL_RESULTS_DIR", str(tmp_path / "runs"))


@pytest.fixture(scope="module")
def r50_state():
    """torchvision ResNet-50 state dict (fc and num_batches_tracked included, as torchvision saves it)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(7)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("ckpts")


def _zeros_like(t):
    """A stand-in tensor with t's shape that costs one element on disk (stride-0 view)."""
    return torch.zeros((), dtype=t.dtype).expand(t.shape)


def _backbone(sd):
    return {k: v for k, v in sd.items() if not k.startswith("fc.")}


def _moco_state(sd, prefix):
    """MoCo v1/v2 model state: encoder_q with an MLP head, a different encoder_k, the queue."""
    q = {f"{prefix}encoder_q.{k}": v for k, v in _backbone(sd).items()}
    q.update(
        {
            f"{prefix}encoder_q.fc.0.weight": torch.randn(2048, 2048),
            f"{prefix}encoder_q.fc.0.bias": torch.zeros(2048),
            f"{prefix}encoder_q.fc.2.weight": torch.randn(128, 2048),
            f"{prefix}encoder_q.fc.2.bias": torch.zeros(128),
        }
    )
    # The key encoder differs from the query encoder: converting it by mistake would fail verification.
    q.update({k.replace("encoder_q.", "encoder_k."): _zeros_like(v) for k, v in list(q.items())})
    q[f"{prefix}queue"] = torch.nn.functional.normalize(torch.randn(128, 1024), dim=0)
    q[f"{prefix}queue_ptr"] = torch.zeros(1, dtype=torch.long)
    return q


OUR_CONFIG = dict(
    arch="resnet50",
    mlp=True,
    aug_plus=True,
    cos=True,
    epochs=200,
    batch_size=256,
    moco_k=65536,
    moco_t=0.2,
    moco_m=0.999,
    image_size=224,
)


def write_format(name, sd, directory: Path) -> Path:
    """Save `sd` (a torchvision ResNet-50 state dict) in the layout called `name`; return the path."""
    if name == "torchvision":
        obj, fname = dict(sd), "resnet50_tv.pth"
    elif name == "torchvision_module_state_dict":
        obj, fname = {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 90}, "sup_ddp.pth"
    elif name == "torchvision_model":
        obj, fname = {"model": dict(sd), "epoch": 3}, "sup_model.pth"
    elif name == "moco_official":
        obj = {
            "epoch": 200,
            "arch": "resnet50",
            "state_dict": _moco_state(sd, "module."),
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.0, "params": [0, 1]}]},
        }
        fname = "moco_v2_200ep_pretrain.pth.tar"
    elif name == "moco_ours_no_ddp":  # non-DDP: no "module." prefix (broke the official converter silently)
        obj = {
            "epoch": 200,
            "arch": "resnet50",
            "state_dict": _moco_state(sd, ""),
            "optimizer": {},
            "config": OUR_CONFIG,
            "variant": pretrain_variant(OUR_CONFIG).to_record(),
            "seed": 0,
        }
        fname = "checkpoint_0200.pth.tar"
    elif name == "moco_config_only":
        obj = {"epoch": 200, "state_dict": _moco_state(sd, "module."), "config": OUR_CONFIG}
        fname = "ours_config.pth.tar"
    elif name == "moco_v3":
        st = {f"module.base_encoder.{k}": v for k, v in _backbone(sd).items()}
        head = {
            "fc.0.weight": torch.randn(64, 2048),
            "fc.1.weight": torch.ones(64),
            "fc.1.bias": torch.zeros(64),
            "fc.1.running_mean": torch.zeros(64),
            "fc.1.running_var": torch.ones(64),
            "fc.1.num_batches_tracked": torch.tensor(5),
            "fc.3.weight": torch.randn(32, 64),
        }
        st.update({f"module.base_encoder.{k}": v for k, v in head.items()})
        st.update({k.replace("base_encoder.", "momentum_encoder."): _zeros_like(v) for k, v in list(st.items())})
        st.update({"module.predictor.0.weight": torch.randn(64, 32), "module.predictor.3.weight": torch.randn(32, 64)})
        obj = {"epoch": 100, "arch": "resnet50", "state_dict": st, "optimizer": {}, "scaler": {"scale": 65536.0}}
        fname = "r-50-100ep.pth.tar"
    else:  # pragma: no cover
        raise AssertionError(name)
    path = directory / name / fname
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


# (layout, detected format, variant name)
FORMAT_CASES = [
    (
        "torchvision",
        "torchvision",
        "resnet50_tv",
    ),  # torchvision names: named after the file, never 'supervised' unasked
    ("torchvision_module_state_dict", "torchvision", "sup_ddp"),
    ("torchvision_model", "torchvision", "sup_model"),
    ("moco_official", "moco", "moco_v2_200ep_pretrain"),
    ("moco_ours_no_ddp", "moco", "d"),
    ("moco_config_only", "moco", "d"),
    ("moco_v3", "moco_v3", "r-50-100ep"),
]


# ---------------------------------------------------------------------------------------------- mapping


def test_resnet50_table_matches_torchvision():
    with torch.device("meta"):
        ref = torchvision.models.resnet50().state_dict()
    expected = {k: tuple(v.shape) for k, v in ref.items() if not k.startswith("fc.") and "num_batches" not in k}
    assert dict(cf.RESNET50_SHAPES) == expected
    assert (cf.NUM_CONV, cf.NUM_BN, len(cf.RESNET50_SHAPES)) == (53, 53, 265)


def test_key_mapping_follows_official_rules():
    assert dc.d2_key("conv1.weight") == "stem.conv1.weight"
    assert dc.d2_key("bn1.running_var") == "stem.conv1.norm.running_var"
    assert dc.d2_key("layer1.0.bn1.running_mean") == "res2.0.conv1.norm.running_mean"
    assert dc.d2_key("layer3.5.conv3.weight") == "res4.5.conv3.weight"
    assert dc.d2_key("layer2.0.downsample.0.weight") == "res3.0.shortcut.weight"
    assert dc.d2_key("layer4.0.downsample.1.bias") == "res5.0.shortcut.norm.bias"
    with pytest.raises(ValueError):
        dc.d2_key("fc.weight")
    names = set(dc.D2_RESNET50_SHAPES)
    assert len(names) == 265
    assert sum(k.endswith(".norm.running_var") for k in names) == 53
    assert sum(len(s) == 4 for s in dc.D2_RESNET50_SHAPES.values()) == 53


def test_mapping_keeps_values(r50_state):
    d2 = dc.torchvision_to_d2(r50_state)
    assert len(d2) == 265 and all(v.dtype == np.float32 for v in d2.values())
    for tv_key in (
        "bn1.running_mean",
        "layer2.3.bn2.running_var",
        "layer4.0.downsample.1.weight",
        "layer1.1.conv2.weight",
    ):
        np.testing.assert_array_equal(d2[dc.d2_key(tv_key)], r50_state[tv_key].numpy())
    partial = {k: v for k, v in r50_state.items() if k != "layer3.2.bn3.bias"}
    with pytest.raises(UserError, match="layer3.2|res4.2.conv3.norm.bias"):
        dc.torchvision_to_d2(partial)


# ---------------------------------------------------------------------------------------------- formats


@pytest.mark.parametrize("layout,fmt,variant", FORMAT_CASES, ids=[c[0] for c in FORMAT_CASES])
def test_each_format_converts_and_verifies(layout, fmt, variant, r50_state, ckpt_dir, capsys):
    src = write_format(layout, r50_state, ckpt_dir)
    out = src.parent / "out.pkl"
    assert to_d2.main([str(src), str(out), "--verify"]) == 0
    stdout = capsys.readouterr().out
    assert f"format: {fmt}:" in stdout
    assert "verify: OK" in stdout
    plain = src.parent / "plain.txt"
    plain.write_text("")
    assert out.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777  # not the temp file's 0600

    data = dc.check_d2_pickle(out)
    assert data["__author__"] == "mocoeval" and data["matching_heuristics"] is True
    source = data["mocoeval_source"]
    assert source["format"] == fmt
    assert source["sha256"] == sha256_file(src)
    assert source["path"] == str(src.resolve())
    assert source["variant"]["name"] == variant
    for tv_key in ("bn1.running_var", "layer3.4.bn2.running_mean", "layer4.2.conv3.weight"):
        np.testing.assert_array_equal(data["model"][dc.d2_key(tv_key)], r50_state[tv_key].numpy())
    assert not list(src.parent.glob(".*.tmp")) and not list(src.parent.glob("*unverified*"))


def test_loads_into_r50_c4_without_missing_backbone_keys(r50_state, tmp_path):
    out = dc.save_d2_pickle(tmp_path / "w.pkl", dc.torchvision_to_d2(r50_state), {"path": "x"})
    model, cfg, incompatible = verify.load_into_detector(out)
    assert cfg.MODEL.ROI_HEADS.NAME == "Res5ROIHeadsExtraNorm"
    report = verify.classify_load_result(incompatible)
    assert report["missing_other"] == [] and report["incorrect_shapes"] == [] and report["unexpected"] == []
    missing = incompatible.missing_keys
    assert not [
        k
        for k in missing
        if k.startswith(("backbone.", "roi_heads.res5.")) and not k.startswith("roi_heads.res5.norm.")
    ]
    assert any(k.startswith("roi_heads.res5.norm.") for k in missing)
    assert any(k.startswith("roi_heads.box_predictor.") for k in missing)
    assert any(k.startswith("proposal_generator.") for k in missing)
    # Loaded values landed where they belong (res5 is in the ROI head, the rest in the backbone).
    state = model.state_dict()
    torch.testing.assert_close(state["roi_heads.res5.1.conv2.norm.running_var"], r50_state["layer4.1.bn2.running_var"])
    torch.testing.assert_close(state["backbone.stem.conv1.norm.weight"], r50_state["bn1.weight"])


def test_verification_detects_a_wrong_conversion(r50_state, tmp_path):
    good = dc.torchvision_to_d2(r50_state)
    pkl = dc.save_d2_pickle(tmp_path / "w.pkl", good, {})
    tampered = dict(r50_state)
    tampered["layer2.1.bn1.running_var"] = r50_state["layer2.1.bn1.running_var"] * 3
    result = verify.verify_conversion(tampered, pkl)
    assert not result["ok"] and result["line"].startswith("verify: FAIL")
    assert result["max_abs_diff"]["res4_vs_layer3"] > 1e-4

    # A file missing one res5 tensor (written around save_d2_pickle's own check) fails on the load report.
    partial = {k: v for k, v in good.items() if k != "res5.2.conv1.norm.running_mean"}
    with open(tmp_path / "partial.pkl", "wb") as f:
        pickle.dump({"model": partial, "__author__": "x", "matching_heuristics": True}, f)
    result = verify.verify_conversion(r50_state, tmp_path / "partial.pkl")
    assert not result["ok"]
    assert result["load"]["missing_other"] == ["roi_heads.res5.2.conv1.norm.running_mean"]


def test_verify_failure_writes_nothing(r50_state, ckpt_dir, tmp_path, capsys):
    """The plain (BGR, Caffe-normalised, stride-in-1x1) VOC config is wrong for torchvision weights."""
    src = ckpt_dir / "torchvision" / "resnet50_tv.pth"
    if not src.exists():
        src = write_format("torchvision", r50_state, ckpt_dir)
    out = tmp_path / "o.pkl"
    wrong_config = REPO_ROOT / "configs" / "pascal_voc_R_50_C4_24k.yaml"
    assert to_d2.main([str(src), str(out), "--verify", "--config", str(wrong_config)]) == 1
    captured = capsys.readouterr()
    assert "verify: FAIL" in captured.out and "config feeds BGR" in captured.out
    assert "features differ" in captured.out  # STRIDE_IN_1X1 True puts the stride in the wrong conv
    assert f"{out} not written" in captured.err
    assert list(tmp_path.iterdir()) == []
    assert "--config file not found" in _expect_error(capsys, [str(src), str(out), "--verify", "--config", "nope.yaml"])


def test_variant_override_and_random_init(r50_state, ckpt_dir):
    src = ckpt_dir / "torchvision" / "resnet50_tv.pth"
    if not src.exists():
        src = write_format("torchvision", r50_state, ckpt_dir)
    _, info = cf.load_resnet50(src, variant="random-init")
    assert info["variant"]["name"] == "random-init" and info["variant"]["mlp"] is None
    assert info["dropped"] == {"head": 2, "num_batches_tracked": 53, "outside_backbone": 0}


def test_half_precision_checkpoint_is_cast(r50_state, tmp_path):
    src = tmp_path / "half.pth"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in r50_state.items()}, src)
    sd, info = cf.load_resnet50(src)
    assert info["cast_to_float32_from"] == ["torch.float16"]
    assert all(v.dtype == torch.float32 for v in sd.values())
    torch.testing.assert_close(sd["layer1.0.bn1.running_var"], r50_state["layer1.0.bn1.running_var"].half().float())


def test_forced_format(r50_state, ckpt_dir, tmp_path, capsys):
    src = ckpt_dir / "torchvision" / "resnet50_tv.pth"
    if not src.exists():
        src = write_format("torchvision", r50_state, ckpt_dir)
    assert to_d2.main([str(src), str(tmp_path / "o.pkl"), "--format", "torchvision"]) == 0
    err = _expect_error(capsys, [str(src), str(tmp_path / "o2.pkl"), "--format", "moco"])
    assert "--format moco" in err and "encoder_q" in err and "looks like --format torchvision" in err
    assert not (tmp_path / "o2.pkl").exists()


def test_trust_pickle_for_legacy_objects(r50_state, tmp_path, capsys):
    src = tmp_path / "legacy.pth.tar"
    torch.save(
        {"state_dict": {f"module.encoder_q.{k}": v for k, v in r50_state.items()}, "args": argparse.Namespace(lr=0.03)},
        src,
    )
    err = _expect_error(capsys, [str(src), str(tmp_path / "o.pkl")])
    assert "argparse.Namespace" in err and "--trust-pickle" in err
    assert not (tmp_path / "o.pkl").exists()
    assert to_d2.main([str(src), str(tmp_path / "o.pkl"), "--trust-pickle"]) == 0
    dc.check_d2_pickle(tmp_path / "o.pkl")


def test_refusal_names_what_the_safe_loader_rejects(tmp_path, capsys):
    """A global of a module torch blocks (os.system) is named like any other pickled object, and any other
    rejection quotes the safe loader's reason: never an "(unknown)"."""
    import os
    import zipfile

    blocked = tmp_path / "blocked.pth"
    torch.save({"state_dict": {}, "hook": os.system}, blocked)
    err = _expect_error(capsys, [str(blocked), str(tmp_path / "o.pkl")])
    assert f"a pickled {os.system.__module__}.system object" in err and "--trust-pickle" in err
    # an instruction the safe unpickler has no handler for (INST), in a torch.save zip archive
    torch.save({"a": 1}, tmp_path / "ok.pth")
    odd = tmp_path / "odd.pth"
    with zipfile.ZipFile(tmp_path / "ok.pth") as src, zipfile.ZipFile(odd, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, b"(i__main__\nX\n." if name.endswith("data.pkl") else src.read(name))
    err = _expect_error(capsys, [str(odd), str(tmp_path / "o.pkl")])
    assert "does not support (Unsupported operand 105)" in err
    assert "(unknown)" not in err and not (tmp_path / "o.pkl").exists()


# ---------------------------------------------------------------------------------------------- bad input


def _expect_error(capsys, argv) -> str:
    """Run main(argv) in-process; it must exit 2 with exactly one `error:` line and no traceback."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        to_d2.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _run_cli(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=120)


def test_cli_missing_path_end_to_end(tmp_path):
    proc = _run_cli(tmp_path / "nope.pth", tmp_path / "out.pkl")
    assert proc.returncode == 2
    assert proc.stderr == f"error: checkpoint not found: {tmp_path / 'nope.pth'}\n"
    assert not (tmp_path / "out.pkl").exists()


def test_cli_not_a_torch_file_end_to_end(tmp_path):
    src = tmp_path / "notes.pth"
    src.write_text("these are not weights\n")
    proc = _run_cli(src, tmp_path / "out.pkl", "--verify")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "not a PyTorch checkpoint" in proc.stderr
    assert not (tmp_path / "out.pkl").exists()


def _fake_weights(arch: str) -> dict:
    """A torchvision model's real key/shape set with stride-0 stand-in values (tiny files)."""
    with torch.device("meta"):
        ref = getattr(torchvision.models, arch)().state_dict()
    return {k: torch.zeros((), dtype=v.dtype).expand(v.shape) for k, v in ref.items()}


@pytest.mark.parametrize(
    "arch,expected",
    [
        ("resnet18", r"ResNet-18 with BasicBlocks \(two 3x3 convs, no conv3"),
        ("resnet34", r"ResNet-34 with BasicBlocks"),
        ("resnet101", r"found a ResNet-101 \(Bottleneck blocks per stage 3-4-23-3\); ResNet-50 has 3-4-6-3"),
        ("resnext50_32x4d", r"ResNeXt-50 \(grouped 3x3 convs"),
        ("wide_resnet50_2", r"wide ResNet-50"),
        ("vit_b_16", r"Vision Transformer"),
    ],
    ids=lambda v: v if re.fullmatch(r"\w+", v) else "",
)
def test_not_a_resnet50_says_what_it_found(arch, expected, tmp_path, capsys):
    src = tmp_path / f"{arch}.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in _fake_weights(arch).items()}}, src)
    err = _expect_error(capsys, [str(src), str(tmp_path / "o.pkl")])
    assert str(src) in err
    assert re.search(expected, err), err
    assert not (tmp_path / "o.pkl").exists()


def test_bad_files(tmp_path, capsys):
    out = str(tmp_path / "o.pkl")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    assert "empty file" in _expect_error(capsys, [str(empty), out])

    small = tmp_path / "small.pth"
    torch.save({"conv1.weight": torch.randn(64, 3, 7, 7)}, small)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(small.read_bytes()[: small.stat().st_size // 2])
    assert "truncated or corrupted" in _expect_error(capsys, [str(truncated), out])

    legacy = tmp_path / "legacy.pth"
    torch.save({"conv1.weight": torch.randn(64, 3, 7, 7)}, legacy, _use_new_zipfile_serialization=False)
    cut = tmp_path / "legacy_cut.pth"
    cut.write_bytes(legacy.read_bytes()[:2000])
    assert "truncated or corrupted" in _expect_error(capsys, [str(cut), out])

    plain = tmp_path / "already.pkl"
    with open(plain, "wb") as f:
        pickle.dump({"model": {"stem.conv1.weight": np.zeros(3)}, "__author__": "x"}, f)
    assert "plain Python pickle" in _expect_error(capsys, [str(plain), out])

    assert "is a directory" in _expect_error(capsys, [str(tmp_path), out])

    no_weights = tmp_path / "opt_only.pth"
    torch.save({"epoch": 3, "optimizer": {}}, no_weights)
    assert "no state dict inside" in _expect_error(capsys, [str(no_weights), out])

    not_dict = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), not_dict)
    assert "holds a Tensor" in _expect_error(capsys, [str(not_dict), out])
    assert not (tmp_path / "o.pkl").exists()


def test_missing_keys_are_listed(r50_state, tmp_path, capsys):
    src = tmp_path / "holes.pth.tar"
    holes = {
        f"module.encoder_q.{k}": v
        for k, v in r50_state.items()
        if k not in ("layer2.1.bn2.running_var", "layer4.2.conv3.weight")
    }
    torch.save({"state_dict": holes}, src)
    err = _expect_error(capsys, [str(src), str(tmp_path / "o.pkl")])
    assert "2 of 265 tensors missing: layer2.1.bn2.running_var, layer4.2.conv3.weight" in err


def test_wrong_shape_and_nan(r50_state, tmp_path, capsys):
    src = tmp_path / "shape.pth"
    torch.save({**r50_state, "layer1.0.conv1.weight": torch.zeros(64, 64, 3, 3)}, src)
    assert "layer1.0.conv1.weight (64, 64, 3, 3) (expected (64, 64, 1, 1))" in _expect_error(
        capsys, [str(src), str(tmp_path / "o.pkl")]
    )
    nan = dict(r50_state)
    nan["layer3.0.bn1.running_var"] = r50_state["layer3.0.bn1.running_var"].clone()
    nan["layer3.0.bn1.running_var"][5] = float("nan")
    torch.save(nan, src)
    assert "NaN or Inf in 1 tensors (layer3.0.bn1.running_var)" in _expect_error(
        capsys, [str(src), str(tmp_path / "o.pkl")]
    )


def test_output_path_errors(tmp_path, capsys):
    src = tmp_path / "missing-too.pth"  # output is checked first: no time spent loading
    err = _expect_error(capsys, [str(src), str(tmp_path / "no_such_dir" / "o.pkl")])
    assert err == f"error: output folder does not exist: {tmp_path / 'no_such_dir'}\n"
    assert ".pkl" in _expect_error(capsys, [str(src), str(tmp_path / "o.pth")])
    (tmp_path / "d.pkl").mkdir()
    assert "is a directory" in _expect_error(capsys, [str(src), str(tmp_path / "d.pkl")])


def test_save_refuses_incomplete_model(r50_state, tmp_path):
    d2 = dc.torchvision_to_d2(r50_state)
    del d2["res3.0.shortcut.norm.running_mean"]
    with pytest.raises(UserError, match="1 of 265 ResNet-50 tensors missing: res3.0.shortcut.norm.running_mean"):
        dc.save_d2_pickle(tmp_path / "o.pkl", d2, {})
    assert list(tmp_path.iterdir()) == []


def test_check_d2_pickle(r50_state, tmp_path):
    d2 = dc.torchvision_to_d2(r50_state)
    # The official MoCo converter keeps stem.fc.* and num_batches_tracked: accepted (Detectron2 ignores them).
    official = {
        **d2,
        "stem.fc.0.weight": np.zeros((2048, 2048), np.float32),
        "res2.0.conv1.norm.num_batches_tracked": np.array(7),
    }
    path = tmp_path / "official.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": official, "__author__": "MOCO", "matching_heuristics": True}, f)
    assert dc.check_d2_pickle(path)["__author__"] == "MOCO"

    def write(name, obj):
        p = tmp_path / name
        with open(p, "wb") as f:
            pickle.dump(obj, f)
        return p

    partial = {k: v for k, v in d2.items() if not k.startswith("res5.2.")}
    with pytest.raises(UserError, match=r"15 of 265 ResNet-50 tensors missing: res5\.2\.conv1\.weight"):
        dc.check_d2_pickle(write("partial.pkl", {"model": partial, "__author__": "x", "matching_heuristics": True}))
    with pytest.raises(UserError, match="Caffe2"):
        dc.check_d2_pickle(write("noauthor.pkl", {"model": d2, "matching_heuristics": True}))
    with pytest.raises(UserError, match="matching_heuristics"):
        dc.check_d2_pickle(write("noheur.pkl", {"model": d2, "__author__": "x"}))
    with pytest.raises(UserError, match="not only numpy arrays"):  # never unpickles foreign objects
        dc.check_d2_pickle(write("torch.pkl", {"model": {"stem.conv1.weight": torch.zeros(1)}, "__author__": "x"}))
    with pytest.raises(UserError, match="only from .pkl"):
        dc.check_d2_pickle(write("w.pth", {"model": d2, "__author__": "x", "matching_heuristics": True}))
    with pytest.raises(UserError, match="not found"):
        dc.check_d2_pickle(tmp_path / "none.pkl")
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(UserError, match="truncated or corrupted"):
        dc.check_d2_pickle(cut)


def test_random_init_pseudo_checkpoint_matches_the_linear_baseline(tmp_path, capsys):
    """`random-init:SEED` converts the same backbone as run_linear.py --random-init --seed SEED, under the
    same source identity, so the tables join the two stages' random-init rows."""
    out = tmp_path / "random_init_seed3.pkl"
    assert to_d2.main(["random-init:3", str(out)]) == 0
    data = dc.check_d2_pickle(out)
    src = data["mocoeval_source"]
    assert src["sha256"] == cf.random_init_source_sha256(3) and src["variant"]["name"] == "random-init"
    state, _ = cf.random_init_resnet50(3)
    expected = dc.torchvision_to_d2(state)
    assert all(np.array_equal(data["model"][k], v) for k, v in expected.items())
    torch.manual_seed(3)
    reference = torchvision.models.resnet50().state_dict()
    assert torch.equal(state["layer4.2.conv3.weight"], reference["layer4.2.conv3.weight"])
    assert "random-init:SEED" in _expect_error(capsys, ["random-init:x", str(tmp_path / "bad.pkl")])


def test_random_init_with_residual_bn_init_is_its_own_network(tmp_path, capsys):
    """--residual-bn-init G: the same seeded network with every residual branch's last BN scale at G (the start of
    a train_moco.py --residual-bn-init G run), under its own identity and variant, so its rows do not pool
    with torchvision's init."""
    out = tmp_path / "random_g.pkl"
    assert to_d2.main(["random-init:3", str(out), "--residual-bn-init", "0.1"]) == 0
    assert "variant: random-init (residual_bn_init 0.1)" in capsys.readouterr().out
    src = dc.check_d2_pickle(out)["mocoeval_source"]
    assert src["sha256"] == cf.random_init_source_sha256(3, 0.1) != cf.random_init_source_sha256(3)
    assert src["variant"] == special_variant("random-init", residual_bn_init=0.1).to_record()
    plain, _ = cf.random_init_resnet50(3)
    tenth, _ = cf.random_init_resnet50(3, 0.1)
    branch_scales = {f"layer{i}.{b}.bn3.weight" for i, n in zip(range(1, 5), (3, 4, 6, 3)) for b in range(n)}
    assert {k for k in plain if not torch.equal(plain[k], tenth[k])} == branch_scales
    assert all(torch.all(tenth[k] == 0.1) for k in branch_scales)
    assert "has its own scales" in _expect_error(
        capsys, [str(tmp_path / "x.pth"), str(tmp_path / "y.pkl"), "--residual-bn-init", "0.1"]
    )
    assert "between 0 and 1, got 2" in _expect_error(
        capsys, ["random-init:3", str(tmp_path / "y.pkl"), "--residual-bn-init", "2"]
    )
