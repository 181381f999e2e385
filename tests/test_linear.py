"""Linear classification (transfer/run_linear.py, mocoeval.transfer.linear): protocol constants, the frozen
eval-mode backbone, only-fc gradients, the sanity check, exact resume, records and one-line errors.

Runs on CPU on the session's imagenet-mini (20 classes x 4 train / 2 val) at 32 px with tiny batches.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torchvision import transforms as T

from mocoeval.convert.formats import (
    load_resnet50,
    random_init_resnet50,
    random_init_source_sha256,
)
from mocoeval.results.identity import LINCLS_DEFAULTS
from mocoeval.results.store import load_records, pretrain_variant
from mocoeval.runtime.errors import UserError
from mocoeval.runtime.fileio import sha256_file
from mocoeval.transfer import linear, run_linear
from mocoeval.transfer import linear_data as ld
from mocoeval.transfer import linear_model as lm
from mocoeval.transfer import linear_train as lt
from mocoeval.transfer.linear_config import LinearConfig, default_output_dir

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "transfer" / "run_linear.py"
PRETRAIN_CONFIG = dict(
    mlp=True,
    aug_plus=True,
    cos=True,
    epochs=3,
    batch_size=16,
    moco_k=64,
    moco_t=0.2,
    moco_m=0.99,
    arch="resnet50",
    image_size=32,
)
# Small, fast and not degenerate: few iterations per epoch, a sane lr for the fixture's features.
FAST = ["--image-size", "32", "--batch-size", "32", "--lr", "0.5", "--print-freq", "1"]


@pytest.fixture(autouse=True)
def results_dir(tmp_path, monkeypatch):
    store = tmp_path / "runs"
    monkeypatch.setenv("MOCOEVAL_RESULTS_DIR", str(store))
    return store


@pytest.fixture(scope="module")
def imagenet_mini(mini_data_root):
    return mini_data_root / "imagenet-mini"


def _resnet50_with_trained_looking_bn(seed: int) -> nn.Module:
    """A torchvision ResNet-50 whose BN layers hold non-trivial statistics, like a pretrained one: then a BN
    layer in train mode (batch statistics, running-stat updates) is distinguishable from eval mode."""
    torch.manual_seed(seed)
    model = torchvision.models.resnet50()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.2, 0.6)
                m.bias.normal_(0, 0.1)
                m.num_batches_tracked.fill_(1000)
    return model


@pytest.fixture(scope="module")
def moco_checkpoint(tmp_path_factory):
    """A checkpoint in our pretrainer's layout (module.encoder_q.* + projection head + queue, config, variant)."""
    model = _resnet50_with_trained_looking_bn(seed=1)
    state = {f"module.encoder_q.{k}": v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    state["module.encoder_q.fc.0.weight"] = torch.randn(64, 2048) * 0.01
    state["module.encoder_q.fc.0.bias"] = torch.zeros(64)
    state["module.encoder_q.fc.2.weight"] = torch.randn(16, 64) * 0.01
    state["module.encoder_q.fc.2.bias"] = torch.zeros(16)
    state["module.queue"] = torch.randn(16, 64)
    state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint_0003.pth.tar"
    torch.save(
        {
            "epoch": 3,
            "arch": "resnet50",
            "state_dict": state,
            "optimizer": {},
            "config": PRETRAIN_CONFIG,
            "variant": pretrain_variant(PRETRAIN_CONFIG).to_record(),
            "seed": 0,
        },
        path,
    )
    return path


def _run(args) -> dict:
    return run_linear.main([str(a) for a in args])


# ------------------------------------------------------------------------------------ protocol
def test_protocol_constants_match_official_main_lincls():
    assert LINCLS_DEFAULTS == dict(
        lr=30.0,
        momentum=0.9,
        weight_decay=0.0,
        batch_size=256,
        epochs=100,
        schedule=(60, 80),
        image_size=224,
        print_freq=10,
    )
    assert lm.FC_INIT_STD == 0.01 and lt.LR_DECAY == 0.1
    args = run_linear.build_parser().parse_args(["--random-init", "data"])
    assert (
        args.lr,
        args.momentum,
        args.weight_decay,
        args.batch_size,
        args.epochs,
        args.schedule,
        args.image_size,
    ) == (30.0, 0.9, 0.0, 256, 100, [60, 80], 224)
    # step schedule: x0.1 at epochs 60 and 80 (0-based, as the official adjust_learning_rate)
    lrs = [lt.lr_at_epoch(30.0, e, (60, 80)) for e in (0, 59, 60, 79, 80, 99)]
    assert lrs == pytest.approx([30.0, 30.0, 3.0, 3.0, 0.3, 0.3])


def test_config_takes_the_cli_defaults_and_validates_in_one_place(tmp_path):
    """LinearConfig: the parser's defaults are the config's, the record dict has every flag in flag order (what
    checkpoints' `args` and records' `config` always held), and bad values are one-line errors however it is
    built."""
    config = run_linear.parse_config(["--random-init", "data"])
    assert config == LinearConfig(data="data", random_init=True)
    record = config.as_record()
    assert list(record) == [a.dest for a in run_linear.build_parser()._actions if a.dest != "help"]
    assert record["schedule"] == [60, 80] and record["output_dir"] == str(Path("output/linear/random-init_seed0"))
    assert LinearConfig(data="d", weights="w.pth", output_dir=f"{tmp_path}/o/").output_dir == str(tmp_path / "o")
    for kwargs, said in (
        (dict(), "exactly one of --weights"),
        (dict(weights="w", random_init=True), "exactly one"),
        (dict(random_init=True, epochs=0), "--epochs must be >= 1"),
        (dict(random_init=True, workers=-1), "--workers must be >= 0"),
        (dict(random_init=True, precision="fp16"), "--precision must be one of"),
        (dict(random_init=True, residual_bn_init=2.0), "between 0 and 1"),
    ):
        with pytest.raises(UserError, match=said):
            LinearConfig(data="d", **kwargs)
    with pytest.raises(UserError, match="not divisible by the 3 processes"):
        config.check_world_size(3)


def test_pretrained_is_an_alias_of_weights():
    """main_lincls' --pretrained names the checkpoint as --weights does (and excludes --random-init)."""
    assert run_linear.parse_config(["--pretrained", "ckpt.pth", "data"]).weights == "ckpt.pth"
    assert run_linear.parse_config(["--pretrained", "ckpt.pth", "data"]) == run_linear.parse_config(
        ["--weights", "ckpt.pth", "data"]
    )
    with pytest.raises(SystemExit):
        run_linear.build_parser().parse_args(["--pretrained", "ckpt.pth", "--random-init", "data"])


def test_transforms_follow_the_protocol():
    train, val = ld.build_transforms(224)
    rrc, flip, to_tensor, norm = train.transforms
    assert isinstance(rrc, T.RandomResizedCrop) and rrc.size == (224, 224) and rrc.scale == (0.08, 1.0)
    assert isinstance(flip, T.RandomHorizontalFlip) and flip.p == 0.5 and isinstance(to_tensor, T.ToTensor)
    resize, crop, _, vnorm = val.transforms
    assert isinstance(resize, T.Resize) and resize.size == 256
    assert isinstance(crop, T.CenterCrop) and crop.size == (224, 224)
    for n in (norm, vnorm):
        assert tuple(n.mean) == (0.485, 0.456, 0.406) and tuple(n.std) == (0.229, 0.224, 0.225)
    assert ld.val_resize_size(32) == 36 and ld.val_resize_size(64) == 73


def test_model_fc_init_and_only_fc_trainable():
    torch.manual_seed(0)
    model = lm.FrozenBackboneResNet50(num_classes=1000)
    assert model.fc.in_features == 2048 and model.fc.out_features == 1000
    assert model.fc.weight.std().item() == pytest.approx(0.01, rel=0.02)
    assert abs(model.fc.weight.mean().item()) < 1e-4 and torch.count_nonzero(model.fc.bias) == 0
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["fc.weight", "fc.bias"]
    opt = lt.build_optimizer(model, 30.0, 0.9, 0.0)
    group = opt.param_groups[0]
    assert [id(p) for p in group["params"]] == [id(model.fc.weight), id(model.fc.bias)]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (30.0, 0.9, 0.0)
    # same state-dict keys as torchvision's ResNet-50 (checkpoints and the sanity check rely on it)
    assert list(model.state_dict()) == list(torchvision.models.resnet50().state_dict())


def test_train_mode_keeps_every_module_in_eval():
    model = lm.FrozenBackboneResNet50(num_classes=5)
    model.train()
    assert not model.training and not any(m.training for m in model.modules())
    model.train(True)
    assert not any(m.training for m in model.modules())


# --------------------------------------------------------------------- training keeps the backbone
def _batches(n_batches=2, batch=8, size=32, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n_batches * batch, 3, size, size, generator=g)
    targets = torch.randint(0, classes, (n_batches * batch,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, targets), batch_size=batch)


def test_training_updates_fc_only_and_backbone_stays_in_eval_mode(moco_checkpoint):
    state, _ = load_resnet50(moco_checkpoint)
    model = lm.FrozenBackboneResNet50(num_classes=5)
    lm.load_backbone(model, state, "fixture")
    fc_before = {k: v.clone() for k, v in model.fc.state_dict().items()}
    bn_modes = []
    hooks = [
        m.register_forward_pre_hook(lambda mod, inp: bn_modes.append(mod.training))
        for m in model.modules()
        if isinstance(m, nn.BatchNorm2d)
    ]
    runner = lt.Runner(model, torch.device("cpu"))
    optimizer = lt.build_optimizer(model, 0.5, 0.9, 0.0)
    stats = lt.train_one_epoch(runner, _batches(), optimizer, epoch=0, progress=False)
    for h in hooks:
        h.remove()

    assert len(bn_modes) == 2 * 53 and not any(bn_modes)  # every BN of every step ran in eval mode
    assert stats["train_loss"] > 0 and 0 <= stats["train_top1"] <= 100
    # gradients: fc only (the backbone ran under no_grad and has no trainable parameters)
    for name, param in model.named_parameters():
        if name.startswith("fc."):
            assert param.grad is not None and torch.count_nonzero(param.grad) > 0, name
        else:
            assert param.grad is None and not param.requires_grad, name
    assert not torch.equal(model.fc.weight, fc_before["weight"])
    # BN running statistics and every other backbone tensor unchanged
    lm.check_backbone_unchanged(model.state_dict(), state)

    # the check above is not vacuous: the same batch in train mode would move the running statistics
    nn.Module.train(model, True)
    with torch.no_grad():
        model(next(iter(_batches()))[0])
    assert lm.backbone_mismatch(model.state_dict(), state) is not None


def test_bf16_channels_last_features_close_to_fp32(moco_checkpoint):
    state, _ = load_resnet50(moco_checkpoint)
    model = lm.FrozenBackboneResNet50(num_classes=5)
    lm.load_backbone(model, state, "fixture")
    images = next(iter(_batches(n_batches=1, batch=2, size=32)))[0]
    fp32 = lt.Runner(model, torch.device("cpu")).features(images)
    fast = lt.Runner(model, torch.device("cpu"), precision="bf16", channels_last=True).features(images)
    assert fast.dtype == torch.float32 and fast.shape == (2, 2048)
    assert torch.allclose(fast, fp32, rtol=0.1, atol=0.1 * fp32.abs().mean().item())
    lm.check_backbone_unchanged(model.state_dict(), state)  # channels-last changes strides, not values


# ----------------------------------------------------------------------------------- sanity check
def test_sanity_check_catches_a_modified_backbone(moco_checkpoint):
    reference, _ = load_resnet50(moco_checkpoint)
    model = lm.FrozenBackboneResNet50(num_classes=5)
    lm.load_backbone(model, reference, "fixture")
    lm.check_backbone_unchanged(model.state_dict(), reference)  # untouched: passes

    for key, delta in (("layer3.2.bn2.running_mean", 1e-6), ("layer1.0.conv1.weight", 1e-3), ("bn1.bias", 1.0)):
        changed = {k: v.clone() for k, v in model.state_dict().items()}
        changed[key].view(-1)[0] += delta
        with pytest.raises(lm.SanityCheckError, match=key.replace(".", r"\.")) as err:
            lm.check_backbone_unchanged(changed, reference, "ckpt.pth")
        assert "\n" not in str(err.value) and isinstance(err.value, UserError)
    # fc is ignored; a backbone tensor missing from the checkpoint is not
    changed = {k: v.clone() for k, v in model.state_dict().items()}
    changed["fc.weight"] += 1
    lm.check_backbone_unchanged(changed, reference)
    partial = {k: v for k, v in reference.items() if k != "layer4.2.bn3.running_var"}
    assert "layer4.2.bn3.running_var" in lm.backbone_mismatch(model.state_dict(), partial)


def test_random_init_backbone_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b, c = (random_init_resnet50(s)[0] for s in (0, 0, 1))
    assert torch.equal(torch.get_rng_state(), before)
    assert lm.backbone_mismatch(a, b) is None and lm.backbone_mismatch(a, c) is not None
    assert random_init_source_sha256(0) != random_init_source_sha256(1)


# ------------------------------------------------------------------------------ data and sampling
def test_seeded_augmentation_is_independent_of_workers(imagenet_mini):
    train, _, classes = ld.build_datasets(imagenet_mini, image_size=32, seed=7)
    assert len(classes) == 20
    train.set_epoch(3)
    first = [train[i][0] for i in (5, 0, 5)]
    assert torch.equal(first[0], first[2]) and not torch.equal(first[0], first[1])
    train.set_epoch(4)
    assert not torch.equal(train[5][0], first[0])  # a new crop each epoch

    def batches(workers):
        loader = torch.utils.data.DataLoader(train, batch_size=16, num_workers=workers, shuffle=False)
        return [b[0] for b in loader]

    for x, y in zip(batches(0), batches(2), strict=True):
        assert torch.equal(x, y)


def test_val_uses_train_class_indices(imagenet_mini, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(imagenet_mini, data)
    for d in sorted((data / "val").iterdir())[:3]:  # a val split with fewer classes keeps train's numbering
        shutil.rmtree(d)
    expected = torchvision.datasets.ImageFolder(data / "train").class_to_idx
    val = ld.ImageFolderWithClasses(data / "val", expected)
    assert val.class_to_idx == expected and len(val.samples) == 17 * 2
    for path, target in val.samples:
        assert target == expected[Path(path).parent.name]
    assert min(t for _, t in val.samples) == 3


def test_val_shards_cover_each_image_once():
    dataset = list(range(11))
    shards = [list(ld.shard(dataset, r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == dataset
    assert ld.shard(dataset, 0, 1) is dataset


# ---------------------------------------------------------------------------------- the whole run
@pytest.fixture(scope="module")
def uninterrupted_run(imagenet_mini, moco_checkpoint, tmp_path_factory):
    """2 epochs with the lr dropping after the first; its own results store."""
    out = tmp_path_factory.mktemp("linear_full")
    store = out / "runs"
    old = os.environ.get("MOCOEVAL_RESULTS_DIR")
    os.environ["MOCOEVAL_RESULTS_DIR"] = str(store)
    try:
        metrics = _run(
            [
                "--weights",
                moco_checkpoint,
                imagenet_mini,
                *FAST,
                "--epochs",
                2,
                "--schedule",
                1,
                "--workers",
                0,
                "--seed",
                3,
                "--output-dir",
                out / "run",
            ]
        )
    finally:
        if old is None:
            os.environ.pop("MOCOEVAL_RESULTS_DIR")
        else:
            os.environ["MOCOEVAL_RESULTS_DIR"] = old
    return out / "run", store, metrics


def test_run_writes_metrics_checkpoints_and_one_record(uninterrupted_run, moco_checkpoint):
    out, store, returned = uninterrupted_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["top1"] == returned["top1"] and metrics["sanity_check"] == "passed"
    for key in ("top1", "top5", "best_top1", "best_top5"):
        assert 0 <= metrics[key] <= 100
    assert metrics["top5"] >= metrics["top1"] and metrics["best_top1"] >= metrics["top1"]
    assert metrics["best_epoch"] in (1, 2) and metrics["epochs"] == 2 and metrics["val_images"] == 40
    assert [h["lr"] for h in metrics["history"]] == pytest.approx([0.5, 0.05])
    assert metrics["source_sha256"] == sha256_file(moco_checkpoint)
    assert metrics["settings"]["batch_size"] == 32 and metrics["variant"]["name"] == "d"
    ckpt = torch.load(out / "checkpoint.pth.tar", weights_only=True)
    assert ckpt["epoch"] == 2 and set(ckpt["fc"]) == {"weight", "bias"} and ckpt["fc"]["weight"].shape == (20, 2048)
    assert (out / "model_best.pth.tar").is_file() and (out / "log.txt").is_file()
    assert list((out / "tb").glob("events.out.tfevents.*"))

    records = load_records(store)
    assert len(records) == 1
    rec = records[0]
    assert rec["stage"] == "linear" and rec["variant"] == pretrain_variant(PRETRAIN_CONFIG).to_record()
    assert rec["source_sha256"] == sha256_file(moco_checkpoint) and rec["seeds"] == [3]
    assert rec["metrics"]["top1"] == metrics["top1"] and rec["metrics"]["best_epoch"] == metrics["best_epoch"]
    assert rec["config"]["lr"] == 0.5 and rec["wall_time_s"] > 0
    assert (store.parent / "ablation.md").is_file()  # tables regenerated (next to a store named runs/)


def test_resume_continues_and_equals_the_uninterrupted_run(
    uninterrupted_run, imagenet_mini, moco_checkpoint, tmp_path, results_dir
):
    full_out, _, full = uninterrupted_run
    out = tmp_path / "resumed"
    common = ["--weights", moco_checkpoint, imagenet_mini, *FAST, "--schedule", 1, "--seed", 3, "--output-dir", out]
    _run([*common, "--epochs", 1, "--workers", 0])
    assert torch.load(out / "checkpoint.pth.tar", weights_only=True)["epoch"] == 1
    # picks up epoch 2 only; other workers count: the crops are seeded per image, not per worker
    resumed = _run([*common, "--epochs", 2, "--workers", 2, "--resume", "auto"])
    log = (out / "log.txt").read_text()
    assert "resumed from" in log and "at epoch 1" in log
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    a = torch.load(full_out / "checkpoint.pth.tar", weights_only=True)
    b = torch.load(out / "checkpoint.pth.tar", weights_only=True)
    assert torch.equal(a["fc"]["weight"], b["fc"]["weight"]) and torch.equal(a["fc"]["bias"], b["fc"]["bias"])
    assert resumed["top1"] == full["top1"] and resumed["top5"] == full["top5"]
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in full["history"]]

    # a resume with a setting that changes the result is refused, in one line
    with pytest.raises(SystemExit) as exc:
        _run([*common, "--epochs", 3, "--resume", str(out / "checkpoint.pth.tar"), "--lr", "0.1"])
    assert exc.value.code == 2


@pytest.mark.parametrize(
    "sig, phase, at_call, said",
    [
        # 80 training images in batches of 32: 3 iterations per epoch; the 5th forward is epoch 2's 2nd iteration
        (signal.SIGINT, "train", 5, r"stopped after iteration (2)/(3) of epoch 2, state in "),
        (signal.SIGTERM, "val", 1, r"stopped after epoch 1 of 2, state in "),  # during epoch 1's evaluation
    ],
)
def test_a_signal_saves_and_stops_and_resume_auto_ends_like_the_uninterrupted_run(
    uninterrupted_run,
    imagenet_mini,
    moco_checkpoint,
    tmp_path,
    results_dir,
    monkeypatch,
    capsys,
    sig,
    phase,
    at_call,
    said,
):
    """The `at_call`-th training (or evaluation) backbone forward sends `sig` to this process, as Ctrl-C or
    `kill` would; the run saves and stops in one line, and `--resume auto` (other workers) ends exactly like the
    full run."""
    full_out, _, full = uninterrupted_run
    out = tmp_path / "stopped"
    common = [
        "--weights",
        moco_checkpoint,
        imagenet_mini,
        *FAST,
        "--schedule",
        1,
        "--seed",
        3,
        "--output-dir",
        out,
        "--epochs",
        2,
    ]
    real, calls, before = lt.Runner.features, [0], signal.getsignal(sig)

    def features(self, images):
        if torch.is_grad_enabled() == (phase == "train"):  # evaluation runs under no_grad
            calls[0] += 1
            if calls[0] == at_call:
                os.kill(os.getpid(), sig)
        return real(self, images)

    with monkeypatch.context() as patch, pytest.raises(SystemExit) as e:
        patch.setattr(lt.Runner, "features", features)
        _run([*common, "--workers", 0])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    match = re.search(said, err)
    assert e.value.code == 128 + sig and err.startswith(f"interrupted: {signal.Signals(sig).name}: ") and match, err
    state = torch.load(out / "checkpoint.pth.tar", weights_only=True)
    if phase == "train":
        done, per_epoch = int(match.group(1)), int(match.group(2))
        assert 1 <= done < per_epoch and state["epoch"] == 1 and state["step_in_epoch"] == done
        # on data with fewer images per epoch that iteration means nothing: one line, nothing trained
        fewer = tmp_path / "fewer"
        shutil.copytree(imagenet_mini, fewer)
        for folder in (fewer / "train").iterdir():
            sorted(folder.iterdir())[0].unlink()  # 60 images: 2 iterations per epoch
        with pytest.raises(SystemExit) as e:
            _run([*common[:2], fewer, *common[3:], "--workers", 0, "--resume", "auto"])
        assert e.value.code == 2 and "stopped at iteration 2 of 3 per epoch, this run has 2" in capsys.readouterr().err
    else:
        assert state["epoch"] == 1 and "step_in_epoch" not in state
    assert signal.getsignal(sig) is before and not (out / "metrics.json").exists()

    resumed = _run([*common, "--workers", 2, "--resume", "auto"])
    a = torch.load(full_out / "checkpoint.pth.tar", weights_only=True)
    b = torch.load(out / "checkpoint.pth.tar", weights_only=True)
    assert torch.equal(a["fc"]["weight"], b["fc"]["weight"]) and torch.equal(a["fc"]["bias"], b["fc"]["bias"])
    assert resumed["top1"] == full["top1"] and "step_in_epoch" not in b
    assert [h["train_loss"] for h in resumed["history"]] == pytest.approx(
        [h["train_loss"] for h in full["history"]], rel=1e-12
    )


def test_progress_is_plain_eta_lines_in_a_non_terminal_and_a_bar_on_a_terminal(
    imagenet_mini, tmp_path, results_dir, capsys, monkeypatch
):
    """Slurm logs and pipes get step lines with images/s and the ETA, no carriage-return bars; log.txt always
    has the step lines; on a terminal the bar shows the progress and the console leaves the step lines out."""
    args = ["--random-init", imagenet_mini, *FAST, "--epochs", 1, "--workers", 0]
    capsys.readouterr()
    _run([*args, "--output-dir", tmp_path / "pipe"])  # capsys: stderr is not a terminal
    console = "".join(capsys.readouterr())
    step = re.compile(r"epoch 1/1 iter (\d+)/3 .*img/s  eta \d+:\d\d:\d\d$", re.M)
    assert "\r" not in console and [m.group(1) for m in step.finditer(console)] == ["1", "2", "3"], console
    assert len(step.findall((tmp_path / "pipe" / "log.txt").read_text())) == 3

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    _run([*args, "--output-dir", tmp_path / "tty"])
    console = "".join(capsys.readouterr())
    assert "\r" in console and not step.search(console) and "final top-1" in console
    assert len(step.findall((tmp_path / "tty" / "log.txt").read_text())) == 3


def test_weights_recorded_input_norm_is_used_recorded_and_bgr_refused(
    imagenet_mini, tmp_path, results_dir, monkeypatch
):
    """Normalisation travels with the weights (issue 30): the run normalises as the source's info["input"] says,
    records it when it is not ImageNet's, and refuses weights that expect BGR (it feeds RGB images)."""
    from mocoeval.convert.resnet50 import INPUT_NORMS

    train, val = ld.build_transforms(32, INPUT_NORMS["none"])
    assert tuple(val.transforms[-1].mean) == (0.0, 0.0, 0.0) and tuple(train.transforms[-1].std) == (1.0, 1.0, 1.0)
    assert ld.input_mean_std(INPUT_NORMS["imagenet"]) == (ld.IMAGENET_MEAN, ld.IMAGENET_STD)
    real = lm.load_backbone_source

    def with_norm(norm):
        def load(config):
            state, info = real(config)
            return state, {**info, "input": dict(INPUT_NORMS[norm])}

        monkeypatch.setattr(linear, "load_backbone_source", load)

    with_norm("none")
    _run(["--random-init", imagenet_mini, *FAST, "--epochs", 1, "--workers", 0, "--output-dir", tmp_path / "none"])
    (rec,) = load_records(results_dir)
    assert rec["config"]["input_norm"] == "RGB mean [0.0, 0.0, 0.0] std [255.0, 255.0, 255.0] (0..255)"
    with_norm("caffe2")
    with pytest.raises(UserError, match="the weights expect BGR input; linear evaluation feeds RGB images"):
        linear.read_inputs(LinearConfig(data=str(imagenet_mini), random_init=True), tmp_path / "bgr")


def test_random_init_run_records_its_seed(imagenet_mini, tmp_path, results_dir):
    metrics = _run(
        [
            "--random-init",
            imagenet_mini,
            *FAST,
            "--epochs",
            1,
            "--workers",
            0,
            "--seed",
            5,
            "--output-dir",
            tmp_path / "rand",
        ]
    )
    assert metrics["sanity_check"] == "passed" and metrics["source_format"] == "random-init"
    (rec,) = load_records(results_dir)
    assert rec["variant"]["name"] == "random-init" and rec["seeds"] == [5]
    assert rec["source_sha256"] == random_init_source_sha256(5) and rec["weights"] is None


def test_random_init_with_residual_bn_init(imagenet_mini, tmp_path, results_dir, capsys):
    """--residual-bn-init G probes the network a train_moco.py --residual-bn-init G run starts from, recorded
    under the identity convert/to_d2.py gives it (so the linear and VOC rows join)."""
    config = run_linear.parse_config(["--random-init", "--residual-bn-init", "0.1", "data"])
    assert default_output_dir(config).name == "random-init_residual-bn-0.1_seed0"
    assert Path(config.output_dir) == default_output_dir(config)
    metrics = _run(
        [
            "--random-init",
            "--residual-bn-init",
            0.1,
            imagenet_mini,
            *FAST,
            "--epochs",
            1,
            "--workers",
            0,
            "--output-dir",
            tmp_path / "rand",
        ]
    )
    assert metrics["sanity_check"] == "passed"
    (rec,) = load_records(results_dir)
    assert rec["variant"]["residual_bn_init"] == 0.1 and rec["source_sha256"] == random_init_source_sha256(0, 0.1)
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    capsys.readouterr()
    assert "has its own scales" in _error_line(capsys, ["--weights", weights, "--residual-bn-init", 0.1, imagenet_mini])


# --------------------------------------------------------------------------------- bad input
def _error_line(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exc:
        _run(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_missing_split_is_one_line_error_from_the_cli(imagenet_mini, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(imagenet_mini / "train", data / "train")
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--random-init", str(data), "--output-dir", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(data / "val") in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_class_in_val_not_in_train_is_one_line_error(imagenet_mini, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(imagenet_mini, data)
    extra = data / "val" / "zebra"
    extra.mkdir()
    shutil.copy(next((data / "val").glob("*/*.jpg")), extra / "z.jpg")
    line = _error_line(capsys, ["--random-init", data, "--output-dir", tmp_path / "out"])
    assert "zebra" in line


def test_empty_split_or_class_folder_is_one_line_error(imagenet_mini, tmp_path, capsys):
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    (data / "val").mkdir()
    assert str(data / "train") in _error_line(capsys, ["--random-init", data, "--output-dir", tmp_path / "out"])
    shutil.rmtree(data)
    shutil.copytree(imagenet_mini, data)
    empty_class = sorted((data / "train").iterdir())[4]
    for image in empty_class.iterdir():
        image.unlink()
    assert str(empty_class) in _error_line(capsys, ["--random-init", data, "--output-dir", tmp_path / "out"])


def test_bad_checkpoint_is_one_line_error(imagenet_mini, tmp_path, capsys):
    bogus = tmp_path / "weights.pth"
    bogus.write_text("not a checkpoint")
    line = _error_line(capsys, ["--weights", bogus, imagenet_mini, "--output-dir", tmp_path / "out"])
    assert str(bogus) in line
    r18 = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), r18)
    line = _error_line(capsys, ["--weights", r18, imagenet_mini, "--output-dir", tmp_path / "out"])
    assert "ResNet-18" in line or "resnet18" in line.lower()
    assert _error_line(capsys, ["--weights", tmp_path / "missing.pth", imagenet_mini, "--output-dir", tmp_path / "out"])


def test_bad_weights_resume_or_output_dir_create_nothing(imagenet_mini, moco_checkpoint, tmp_path, monkeypatch, capsys):
    """Every input is checked before the output folder and its log.txt exist; the loader's one-line messages."""
    monkeypatch.chdir(tmp_path)  # the default output folder, output/linear/<weights>_seed0, would go here
    cut = tmp_path / "cut.pth.tar"
    data = moco_checkpoint.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    line = _error_line(capsys, ["--weights", cut, imagenet_mini])
    assert str(cut) in line and "truncated or corrupted" in line
    line = _error_line(capsys, ["--weights", moco_checkpoint, imagenet_mini, "--resume", cut])
    assert str(cut) in line and "truncated or corrupted" in line
    line = _error_line(capsys, ["--weights", moco_checkpoint, imagenet_mini, "--resume", moco_checkpoint])
    assert "not a linear-eval checkpoint" in line
    assert not (tmp_path / "output").exists()
    taken = tmp_path / "taken"
    taken.write_text("a file")
    assert (
        _error_line(capsys, ["--random-init", imagenet_mini, "--output-dir", taken])
        == f"error: --output-dir {taken} exists and is not a directory"
    )
    assert taken.read_text() == "a file"


# ----------------------------------------------------------------------------------- distributed
@pytest.mark.slow
def test_torchrun_two_cpu_processes_shard_val_exactly(imagenet_mini, moco_checkpoint, tmp_path, results_dir):
    """torchrun with 2 gloo processes: fc in DDP, val sharded; the reported accuracy equals a single-process
    evaluation of the same fc, and rank 0 alone writes the record."""
    out = tmp_path / "ddp"
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(SCRIPT),
            "--weights",
            str(moco_checkpoint),
            str(imagenet_mini),
            *FAST,
            "--epochs",
            "1",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--output-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["val_images"] == 40
    assert len(load_records(results_dir)) == 1

    state, _ = load_resnet50(moco_checkpoint)
    model = lm.FrozenBackboneResNet50(num_classes=20)
    lm.load_backbone(model, state, "fixture")
    model.fc.load_state_dict(torch.load(out / "checkpoint.pth.tar", weights_only=True)["fc"])
    _, val, _ = ld.build_datasets(imagenet_mini, 32, seed=0)
    single = lt.evaluate(
        lt.Runner(model, torch.device("cpu")), torch.utils.data.DataLoader(val, batch_size=7), progress=False
    )
    assert single["val_images"] == 40
    assert single["top1"] == metrics["top1"] and single["top5"] == metrics["top5"]


def test_feature_norm_standardises_features_and_keeps_the_backbone_frozen(imagenet_mini, tmp_path, results_dir, capsys):
    """--feature-norm (not the protocol): only the head's BN follows train/eval; a random-init backbone, whose
    eval-mode features are huge, then trains at an ordinary lr without diverging; the sanity check holds."""
    model = lm.FrozenBackboneResNet50(num_classes=20, feature_norm=True)
    model.train()
    assert model.fc[0].training and not model.bn1.training and not model.layer4[0].bn1.training
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.1.weight", "fc.1.bias"]
    features = torch.randn(64, 2048) * 1e4 + 5e3
    standardised = model.fc[0](features)
    assert standardised.mean().abs() < 1e-3 and (standardised.std(0) - 1).abs().max() < 0.05
    metrics = _run(
        [
            "--random-init",
            imagenet_mini,
            *FAST,
            "--epochs",
            2,
            "--workers",
            0,
            "--seed",
            0,
            "--feature-norm",
            "--output-dir",
            tmp_path / "fn",
        ]
    )
    assert metrics["sanity_check"] == "passed"
    assert all(torch.isfinite(torch.tensor(e["train_loss"])) for e in metrics["history"])
    (rec,) = load_records(results_dir)
    assert rec["extra"]["feature_norm"] is True
    with pytest.raises(SystemExit):  # resuming must keep the head the same
        _run(
            [
                "--random-init",
                imagenet_mini,
                *FAST,
                "--epochs",
                3,
                "--workers",
                0,
                "--seed",
                0,
                "--output-dir",
                tmp_path / "fn",
                "--resume",
                "auto",
            ]
        )
    assert "feature_norm=True" in capsys.readouterr().err
