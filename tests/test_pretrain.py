"""End-to-end tests of pretrain/train_moco.py on a tiny ImageFolder (CPU, 32 px): checkpoint layout, run
record, resume equivalence (ours and official checkpoints), NaN handling, one-line errors, bf16 vs fp32,
deterministic data, and the multi-process (torchrun, gloo) shuffle BN."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mocoeval.pretrain.augment import TwoCropsTransform, moco_transform
from mocoeval.pretrain.build import (
    build_loader,
    build_model,
    compile_encoders,
    idle_loader_workers,
    run_at_idle_priority,
)
from mocoeval.pretrain.checkpoint import strip_prefix
from mocoeval.pretrain.config import RUNTIME_KEYS, parse_config
from mocoeval.pretrain.data import EpochSampler, TwoViewImageFolder
from mocoeval.pretrain.step import train_step
from mocoeval.results.store import load_records
from mocoeval.runtime.errors import UserError
from mocoeval.runtime.fileio import sha256_file

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "pretrain" / "train_moco.py"
N_CLASSES, PER_CLASS, PER_CLASS_VAL = 3, 8, 3


from mocoeval.pretrain.train_moco import main as train_main  # noqa: E402


def write_image_folder(root: Path, per_class: dict[str, int], seed: int = 0):
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for c in range(N_CLASSES):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.zeros((40, 48, 3), np.uint8)
                base[..., c] = 160  # class colour + noise: kNN has something to find
                noise = rng.integers(0, 96, size=(40, 48, 3), dtype=np.uint8)
                Image.fromarray(base + noise).save(d / f"img{i}.jpg")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imagefolder")
    write_image_folder(root, {"train": PER_CLASS, "val": PER_CLASS_VAL})
    return root


@pytest.fixture(autouse=True)
def results_dir(tmp_path, monkeypatch) -> Path:
    """Run records go to a temporary store; the working directory (default output dirs) is temporary too."""
    store = tmp_path / "runs"
    monkeypatch.setenv("MOCOEVAL_RESULTS_DIR", str(store))
    monkeypatch.chdir(tmp_path)
    return store


# --keep-checkpoints 0: these tests resume from, and compare, earlier epochs' checkpoints (test_cli checks the default)
TINY = [
    "--image-size",
    "32",
    "-b",
    "8",
    "--moco-k",
    "16",
    "--workers",
    "0",
    "--seed",
    "7",
    "-p",
    "2",
    "--keep-checkpoints",
    "0",
]
V2 = ["--mlp", "--aug-plus", "--cos", "--moco-t", "0.2"]


def run_cli(argv):
    return train_main([str(a) for a in argv])


def error_line(capsys, argv) -> str:
    """Run the CLI expecting a one-line error: exit 2, exactly one `error: ...` line on stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_cli(argv)
    assert e.value.code == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    return lines[0]


# ------------------------------------------------------------------ the default ResNet-50, two epochs


def test_two_epochs_resnet50_official_layout_record_and_monitoring(mini_data_root, tmp_path, results_dir):
    """The default architecture on imagenet-mini (80 images): 2 epochs of 2 steps of 40 pairs at 32 px."""
    data = mini_data_root / "imagenet-mini"
    out = tmp_path / "r50"
    summary = run_cli(
        [
            data,
            *TINY,
            *V2,
            "-b",
            "40",
            "--moco-k",
            "120",
            "--epochs",
            "2",
            "--save-every",
            "2",
            "--output-dir",
            out,
            "--knn-data",
            data,
        ]
    )
    ckpt_path = out / "checkpoint_0001.pth.tar"  # official naming: index of the last epoch, 0-based
    assert ckpt_path.is_file() and not (out / "checkpoint_0000.pth.tar").exists()  # --save-every 2
    final = out / "final.pth.tar"
    assert sha256_file(final) == sha256_file(ckpt_path) == summary["sha256"]
    ckpt = torch.load(final, map_location="cpu", weights_only=True)
    assert {"epoch", "arch", "state_dict", "optimizer", "config", "variant", "seed"} <= set(ckpt)
    assert ckpt["epoch"] == 2 and ckpt["arch"] == "resnet50" and ckpt["seed"] == 7
    sd = ckpt["state_dict"]
    assert all(
        k.startswith(("module.encoder_q.", "module.encoder_k.")) or k in ("module.queue", "module.queue_ptr")
        for k in sd
    )
    assert sd["module.queue"].shape == (128, 120) and sd["module.queue_ptr"].item() == (4 * 40) % 120
    assert sd["module.encoder_q.fc.0.weight"].shape == (2048, 2048)
    assert sd["module.encoder_q.fc.2.weight"].shape == (128, 2048)
    assert sd["module.encoder_q.conv1.weight"].shape == (64, 3, 7, 7)
    q_keys = {k[len("module.encoder_q.") :] for k in sd if k.startswith("module.encoder_q.")}
    k_keys = {k[len("module.encoder_k.") :] for k in sd if k.startswith("module.encoder_k.")}
    assert q_keys == k_keys
    import torchvision

    tv = torchvision.models.resnet50().state_dict()
    assert q_keys - {"fc.0.weight", "fc.0.bias", "fc.2.weight", "fc.2.bias"} == set(tv) - {"fc.weight", "fc.bias"}
    assert ckpt["config"]["mlp"] and ckpt["config"]["aug_plus"] and ckpt["config"]["cos"]
    assert ckpt["variant"]["name"] == "d" and ckpt["variant"]["epochs"] == 2
    # the optimizer holds every parameter of both encoders, like the official one (so its states load)
    n_params = sum(not k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in sd) - 2
    assert len(ckpt["optimizer"]["param_groups"][0]["params"]) == n_params

    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert all(np.isfinite(h["loss"]) and 0 <= h["knn_top1"] <= 100 for h in metrics["history"])
    assert all(0 <= h["key_spread"] <= 1.5 for h in metrics["history"])
    assert all(
        set(h["grad_ratio"]) == {"stem", "layer1", "layer2", "layer3", "layer4", "fc"}
        and all(np.isfinite(r) and r > 0 for r in h["grad_ratio"].values())
        for h in metrics["history"]
    )
    assert metrics["history"][1]["lr"] == pytest.approx(0.03 * 0.5 * (1 + np.cos(np.pi / 2)))
    assert list((out / "tb").glob("events.out.tfevents.*"))
    log = (out / "log.txt").read_text()
    assert "ln(K+1) = 4.80" in log and "kNN top-1" in log and "more than 10%" in log and "key spread" in log

    (record,) = load_records(results_dir)
    assert record["stage"] == "pretrain" and record["source_sha256"] == summary["sha256"]
    assert record["weights"] == str(final) and record["seeds"] == [7]
    assert record["variant"]["name"] == "d" and record["metrics"]["epochs"] == 2
    assert record["metrics"]["final_loss"] == pytest.approx(metrics["history"][-1]["loss"])
    assert metrics["run_record"] == record["_path"]

    try:
        from mocoeval.convert.formats import load_resnet50
    except ImportError:
        return
    state, info = load_resnet50(final)
    assert info["format"] == "moco" and info["source_sha256"] == summary["sha256"]
    assert info["variant"]["name"] == "d"
    assert torch.equal(state["conv1.weight"], sd["module.encoder_q.conv1.weight"])


# ------------------------------------------------------------------ resume


@pytest.fixture(scope="module")
def uninterrupted(tiny_data, tmp_path_factory):
    """ResNet-18, MoCo v2 switches, 2 epochs in one go, with 2 loader workers; checkpoint every epoch."""
    out = tmp_path_factory.mktemp("uninterrupted")
    os.environ["MOCOEVAL_RESULTS_DIR"] = str(out / "runs")
    try:
        run_cli(
            [
                tiny_data,
                *TINY,
                *V2,
                "--arch",
                "resnet18",
                "--epochs",
                "2",
                "--workers",
                "2",
                "--output-dir",
                out,
                "--bn-splits",
                "2",
            ]
        )
    finally:
        del os.environ["MOCOEVAL_RESULTS_DIR"]
    return out


def test_checkpoint_every_epoch_in_the_official_layout(uninterrupted):
    """Fast counterpart of the ResNet-50 test: names, layout, epoch numbers, the queue pointer, the extras."""
    names = sorted(p.name for p in uninterrupted.glob("*.pth.tar"))
    assert names == ["checkpoint_0000.pth.tar", "checkpoint_0001.pth.tar", "final.pth.tar"]
    for epochs_done, name in ((1, "checkpoint_0000.pth.tar"), (2, "final.pth.tar")):
        ckpt = torch.load(uninterrupted / name, map_location="cpu", weights_only=True)
        assert ckpt["epoch"] == epochs_done and ckpt["arch"] == "resnet18"
        sd = ckpt["state_dict"]
        assert sd["module.queue_ptr"].item() == (3 * epochs_done * 8) % 16  # 3 steps of 8 per epoch
        assert sd["module.encoder_q.fc.0.weight"].shape == (512, 512) and "module.encoder_k.fc.2.bias" in sd
        assert all(k.startswith(("module.encoder_q.", "module.encoder_k.", "module.queue")) for k in sd)
        assert ckpt["variant"]["name"] == "d" and ckpt["seed"] == 7 and ckpt["config"]["bn_splits_effective"] == 2
        assert [h["epoch"] for h in ckpt["history"]] == list(range(1, epochs_done + 1))
    assert sha256_file(uninterrupted / "final.pth.tar") == sha256_file(uninterrupted / "checkpoint_0001.pth.tar")


class _SchedulingPolicy(torch.utils.data.Dataset):
    """Each item: the scheduling policy of the process that loads it."""

    def __len__(self):
        return 2

    def __getitem__(self, i):
        return os.sched_getscheduler(0)


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_loader_workers_run_at_idle_priority_on_cpu_only(mini_data_root, tmp_path, uninterrupted):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert idle_loader_workers("auto", cpu) and not idle_loader_workers("auto", cuda)
    assert idle_loader_workers("idle", cuda) and not idle_loader_workers("normal", cpu)
    assert parse_config([str(tmp_path)])[0].loader_priority == "auto"
    assert parse_config([str(tmp_path), "--loader-priority", "normal"])[0].loader_priority == "normal"
    assert "loader_priority" in RUNTIME_KEYS  # how this process runs: never taken from a resumed checkpoint

    data = mini_data_root / "imagenet-mini"
    loader = build_loader(data, 32, True, 0, 2, 1, cpu, idle_workers=True)
    assert loader.worker_init_fn is run_at_idle_priority
    assert build_loader(data, 32, True, 0, 2, 1, cpu).worker_init_fn is None
    # the real init function in a real worker process: the worker runs at SCHED_IDLE, this process does not
    policies = torch.utils.data.DataLoader(_SchedulingPolicy(), num_workers=1, worker_init_fn=loader.worker_init_fn)
    assert [int(p) for p in policies] == [os.SCHED_IDLE] * 2
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    # train_moco on the CPU with workers: auto made them idle, and the run says so; results are unchanged by it
    # (the resumed runs below, with 0 workers, finish exactly like this one)
    assert "2 workers (idle priority)" in (uninterrupted / "log.txt").read_text()


def test_loader_priority_idle_without_sched_idle_is_one_line_error(monkeypatch):
    monkeypatch.delattr(os, "SCHED_IDLE", raising=False)  # as on macOS or Windows
    assert not idle_loader_workers("auto", torch.device("cpu"))  # auto: normal workers there
    with pytest.raises(UserError, match="needs Linux's SCHED_IDLE"):
        idle_loader_workers("idle", torch.device("cpu"))


def assert_same_state(a: Path, b: Path):
    ca, cb = (torch.load(p, map_location="cpu", weights_only=True) for p in (a, b))
    assert ca["epoch"] == cb["epoch"]
    assert ca["state_dict"].keys() == cb["state_dict"].keys()
    for k, v in ca["state_dict"].items():
        assert torch.allclose(v.double(), cb["state_dict"][k].double(), atol=1e-6, rtol=0), k
    sa, sb = ca["optimizer"]["state"], cb["optimizer"]["state"]
    assert sa.keys() == sb.keys() and len(sa) > 0
    for i in sa:
        assert torch.allclose(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"], atol=1e-6, rtol=0)


def test_resume_auto_equals_the_uninterrupted_run(uninterrupted, tiny_data, tmp_path):
    """Epoch 1's checkpoint is what an interrupted run leaves. `--resume auto` alone (every other flag from
    the checkpoint's config; 0 workers instead of 2) must finish exactly like the run that never stopped."""
    out = tmp_path / "resumed"
    out.mkdir()
    shutil.copy(uninterrupted / "checkpoint_0000.pth.tar", out)
    run_cli([tiny_data, "--resume", "auto", "--output-dir", out, "--workers", "0"])
    assert_same_state(uninterrupted / "final.pth.tar", out / "final.pth.tar")
    ha = json.loads((uninterrupted / "metrics.json").read_text())["history"]
    hb = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in hb] == [1, 2]  # the history travels in the checkpoint
    assert hb[1]["loss"] == pytest.approx(ha[1]["loss"], abs=1e-6)


def _train_step_that(patch, at_call: int, action):
    """Wrap the engine's train_step (our code) so that its `at_call`-th call does `action` first, as a Ctrl-C,
    `kill` or crash arriving during that step would. `patch`: a `monkeypatch.context()`, so that leaving it
    undoes this alone (not the results directory the autouse fixture set)."""
    from mocoeval.pretrain import engine

    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at_call:
            action()
        return train_step(*args, **kwargs)

    patch.setattr(engine, "train_step", wrapped)


UNINTERRUPTED_FLAGS = [*TINY, *V2, "--arch", "resnet18", "--epochs", "2", "--bn-splits", "2"]  # 3 steps per epoch


@pytest.mark.parametrize(
    "sig, at_call, extra, left, said",
    [
        # during epoch 2's first step (its log window not yet read): a resume point after it
        (
            signal.SIGINT,
            4,
            [],
            "resume_epoch0002_step000001.pth.tar",
            "stopped after step 1/3 of epoch 2, resume point",
        ),
        # during epoch 1's last step: the epoch's checkpoint, written although --save-every 5 would skip it
        (signal.SIGTERM, 3, ["--save-every", "5"], "checkpoint_0000.pth.tar", "stopped after epoch 1 of 2, checkpoint"),
    ],
)
def test_a_signal_saves_and_stops_and_resume_auto_ends_like_the_uninterrupted_run(
    uninterrupted, tiny_data, tmp_path, monkeypatch, capsys, sig, at_call, extra, left, said
):
    out = tmp_path / "stopped"
    before = signal.getsignal(sig)
    with monkeypatch.context() as patch, pytest.raises(SystemExit) as e:
        _train_step_that(patch, at_call, lambda: os.kill(os.getpid(), sig))
        run_cli([tiny_data, *UNINTERRUPTED_FLAGS, *extra, "--output-dir", out])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 128 + sig and err.startswith(f"interrupted: {signal.Signals(sig).name}: {said}"), err
    assert sorted(p.name for p in out.glob("*.pth.tar"))[-1] == left and str(out / left) in err
    assert signal.getsignal(sig) is before and not (out / "final.pth.tar").exists()

    run_cli([tiny_data, "--resume", "auto", "--output-dir", out, "--workers", "0"])
    assert_same_state(uninterrupted / "final.pth.tar", out / "final.pth.tar")
    ha = json.loads((uninterrupted / "metrics.json").read_text())["history"]
    hb = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["loss"] for h in hb] == pytest.approx([h["loss"] for h in ha], abs=1e-6)  # the epoch means too
    assert not list(out.glob("resume_*"))  # resume points go once the run is done


def test_timed_resume_points_survive_a_crash_and_keep_only_the_newest(
    uninterrupted, tiny_data, tmp_path, monkeypatch, capsys
):
    """--checkpoint-minutes tiny: a resume point after every step but an epoch's last; the epoch's checkpoint
    removes them and each new one its predecessor. A crash in epoch 2's last step leaves step 2's, from which
    --resume auto ends exactly like the run that never stopped."""
    out = tmp_path / "crashed"

    def crash():
        raise RuntimeError("simulated crash")

    with monkeypatch.context() as patch, pytest.raises(RuntimeError, match="simulated crash"):
        _train_step_that(patch, 6, crash)
        run_cli([tiny_data, *UNINTERRUPTED_FLAGS, "--checkpoint-minutes", "1e-9", "--output-dir", out])
    assert sorted(p.name for p in out.glob("*.pth.tar")) == [
        "checkpoint_0000.pth.tar",
        "resume_epoch0002_step000002.pth.tar",
    ]
    point = torch.load(out / "resume_epoch0002_step000002.pth.tar", map_location="cpu", weights_only=True)
    assert point["epoch"] == 1 and point["step_in_epoch"] == 2 and point["epoch_progress"]["steps_per_epoch"] == 3
    # on other data its step means nothing: refused in one line (an epoch checkpoint could be resumed there)
    fewer = tmp_path / "fewer"
    write_image_folder(fewer, {"train": 6})  # 18 images: 2 steps of 8
    line = error_line(capsys, [fewer, "--resume", "auto", "--output-dir", out, "--workers", "0"])
    assert "stopped at step 2 of 3 steps per epoch but this run has 2" in line
    run_cli([tiny_data, "--resume", "auto", "--output-dir", out, "--workers", "0"])
    assert_same_state(uninterrupted / "final.pth.tar", out / "final.pth.tar")
    assert "step 2/3 of epoch 2" in (out / "log.txt").read_text()


def test_resume_auto_takes_the_furthest_checkpoint_or_resume_point(tmp_path):
    from mocoeval.pretrain.checkpoint import find_resume_checkpoint

    for name in (
        "checkpoint_0000.pth.tar",
        "checkpoint_0001.pth.tar",
        "resume_epoch0003_step000007.pth.tar",
        "resume_epoch0002_step000009.pth.tar",
        "final.pth.tar",
    ):
        (tmp_path / name).touch()
    assert find_resume_checkpoint(tmp_path).name == "resume_epoch0003_step000007.pth.tar"
    (tmp_path / "checkpoint_0002.pth.tar").touch()  # the end of epoch 3 lies beyond any step in it
    assert find_resume_checkpoint(tmp_path).name == "checkpoint_0002.pth.tar"
    assert find_resume_checkpoint(tmp_path / "missing") is None


def test_extensions_warmup_and_zero_init_set_the_lr_are_recorded_and_resume(tiny_data, tmp_path, results_dir):
    """--warmup-epochs 1.5 over 2 epochs of 3 steps: the optimizer trains at 1/4.5 ... of the scheduled lr;
    the variant records both extensions (also for the resumed run, which inherits them from the checkpoint);
    a run resumed inside the warm-up ends like the uninterrupted one."""
    flags = [
        tiny_data,
        *TINY,
        *V2,
        "--arch",
        "resnet18",
        "--epochs",
        "2",
        "--bn-splits",
        "2",
        "-p",
        "1",
        "--warmup-epochs",
        "1.5",
        "--zero-init-residual",
        "--workers",
        "0",
    ]
    run_cli([*flags, "--output-dir", tmp_path / "a"])
    history = json.loads((tmp_path / "a" / "metrics.json").read_text())["history"]
    # epoch 1 ends at 3/4.5 of the warm-up (lr 0.03 * 2/3); epoch 2 ends past it: the cosine's 0.015
    assert [h["lr"] for h in history] == pytest.approx([0.02, 0.015])
    first = torch.load(tmp_path / "a" / "checkpoint_0000.pth.tar", map_location="cpu", weights_only=True)
    assert first["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.02)  # what the last step used
    assert first["variant"]["warmup_epochs"] == 1.5 and first["config"]["warmup_epochs"] == 1.5
    assert {r["variant"].get("warmup_epochs") for r in load_records(results_dir)} == {1.5}
    assert first["variant"]["residual_bn_init"] == 0.0 and first["config"]["residual_bn_init"] == 0.0

    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "checkpoint_0000.pth.tar", tmp_path / "b")
    run_cli([tiny_data, "--resume", "auto", "--output-dir", tmp_path / "b", "--workers", "0"])
    assert_same_state(tmp_path / "a" / "final.pth.tar", tmp_path / "b" / "final.pth.tar")
    records = load_records(results_dir)
    assert len(records) == 2 and all(r["variant"]["residual_bn_init"] == 0.0 for r in records)
    # the init is the run's history: a resume may not restate it differently
    with pytest.raises(UserError, match="whose run started with residual_bn_init=0$"):
        parse_config(
            [str(tiny_data), "--resume", str(tmp_path / "b" / "checkpoint_0000.pth.tar"), "--residual-bn-init", "0.5"]
        )
    # a checkpoint written before --residual-bn-init stored zero_init_residual: read as 0
    legacy = torch.load(tmp_path / "a" / "checkpoint_0000.pth.tar", map_location="cpu", weights_only=True)
    del legacy["config"]["residual_bn_init"]
    legacy["config"]["zero_init_residual"] = True
    torch.save(legacy, tmp_path / "legacy.pth.tar")
    args, _ = parse_config([str(tiny_data), "--resume", str(tmp_path / "legacy.pth.tar")])
    assert args.residual_bn_init == 0.0


def test_residual_bn_ramp_raises_quiet_branches_to_full_scale_and_resumes(tiny_data, tmp_path, results_dir):
    """--residual-bn-init 0.1 --residual-bn-ramp 0.5 1.5 over 2 epochs of 3 steps: the branches are multiplied
    geometrically, step by step, by 10 in all — √10 by the end of epoch 1 (halfway), 10 from 1.5 on — in both
    encoders; the ramp is recorded as an extension, and a run resumed halfway up ends like the uninterrupted one."""
    flags = [
        tiny_data,
        *TINY,
        *V2,
        "--arch",
        "resnet18",
        "--epochs",
        "2",
        "--bn-splits",
        "2",
        "--workers",
        "0",
        "--residual-bn-init",
        "0.1",
        "--residual-bn-ramp",
        "0.5",
        "1.5",
    ]
    run_cli([*flags, "--output-dir", tmp_path / "a"])
    history = json.loads((tmp_path / "a" / "metrics.json").read_text())["history"]
    stages = ("layer1", "layer2", "layer3", "layer4")
    for entry, gain in zip(history, (10**0.5, 10.0)):  # the learnt drift of 3-6 steps is a few percent at most
        assert [entry["residual_branch_scale"][s] for s in stages] == pytest.approx([0.1 * gain] * 4, rel=0.05)
    final = torch.load(tmp_path / "a" / "final.pth.tar", map_location="cpu", weights_only=True)
    sd = strip_prefix(final["state_dict"])
    for s in stages:  # the key encoder is raised with the query encoder, so its momentum average stays close
        for block in range(2):
            q, k = (sd[f"encoder_{e}.{s}.{block}.bn2.{p}"] for e in ("q", "k") for p in ("weight",))
            assert k.abs().mean() == pytest.approx(q.abs().mean().item(), rel=0.05)
    assert list(final["variant"]["residual_bn_ramp"]) == [0.5, 1.5] and final["config"]["residual_bn_ramp"] == [
        0.5,
        1.5,
    ]
    assert {tuple(r["variant"]["residual_bn_ramp"]) for r in load_records(results_dir)} == {(0.5, 1.5)}

    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "checkpoint_0000.pth.tar", tmp_path / "b")
    run_cli([tiny_data, "--resume", "auto", "--output-dir", tmp_path / "b", "--workers", "0"])
    assert_same_state(tmp_path / "a" / "final.pth.tar", tmp_path / "b" / "final.pth.tar")
    with pytest.raises(UserError, match="whose run started with residual_bn_ramp=0.5-1.5$"):
        parse_config(
            [
                str(tiny_data),
                "--resume",
                str(tmp_path / "b" / "checkpoint_0000.pth.tar"),
                "--residual-bn-ramp",
                "1",
                "2",
            ]
        )
    # nor may it add a ramp the run did not have (the weights hold no ramp's progress)
    unramped = torch.load(tmp_path / "a" / "checkpoint_0000.pth.tar", map_location="cpu", weights_only=True)
    del unramped["config"]["residual_bn_ramp"]  # as written before the flag
    torch.save(unramped, tmp_path / "unramped.pth.tar")
    with pytest.raises(UserError, match="--residual-bn-ramp 0-1 contradicts .* residual_bn_ramp=none$"):
        parse_config([str(tiny_data), "--resume", str(tmp_path / "unramped.pth.tar"), "--residual-bn-ramp", "0", "1"])


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--residual-bn-ramp", "1", "3"], "needs 0 <= START < END <= --epochs 2, got 1 3"),
        (["--residual-bn-ramp", "1", "1"], "needs 0 <= START < END <= --epochs 2, got 1 1"),
        (["--residual-bn-ramp", "0", "1"], "needs --residual-bn-init strictly between 0 and 1, got 1"),
        (["--residual-bn-ramp", "0", "1", "--zero-init-residual"], "strictly between 0 and 1, got 0"),
    ],
)
def test_residual_bn_ramp_bad_input_is_one_line(tiny_data, flags, message):
    with pytest.raises(UserError, match=message):
        parse_config([str(tiny_data), "--epochs", "2", *flags])


def test_official_checkpoint_resumes(uninterrupted, tiny_data, tmp_path, capsys):
    """An official-layout checkpoint (no config/seed/history) resumes from the flags, structure read off its
    tensors; with the same flags and seed it finishes like the uninterrupted run."""
    ours = torch.load(uninterrupted / "checkpoint_0000.pth.tar", map_location="cpu", weights_only=True)
    official = tmp_path / "moco_official.pth.tar"
    torch.save({k: ours[k] for k in ("epoch", "arch", "state_dict", "optimizer")}, official)
    out = tmp_path / "from_official"
    run_cli(
        [
            tiny_data,
            *TINY,
            *V2,
            "--epochs",
            "2",
            "--bn-splits",
            "2",
            "--resume",
            official,
            "--output-dir",
            out,
            "--keep-checkpoints",
            "1",
        ]
    )
    assert_same_state(uninterrupted / "final.pth.tar", out / "final.pth.tar")
    assert sorted(p.name for p in out.glob("*.pth.tar")) == ["checkpoint_0001.pth.tar", "final.pth.tar"]
    ckpt = torch.load(out / "final.pth.tar", map_location="cpu", weights_only=True)
    assert ckpt["arch"] == "resnet18" and ckpt["config"]["mlp"] is True  # read off the official file
    # its warning is marked once on the console and once in log.txt (the file's format has the level)
    (logged,) = [ln for ln in (out / "log.txt").read_text().splitlines() if "no stored config" in ln]
    assert "WARNING] " in logged and "WARNING: " not in logged
    (shown,) = [ln for ln in capsys.readouterr().err.splitlines() if "no stored config" in ln]
    assert "] WARNING: " in shown and shown.count("WARNING") == 1


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(uninterrupted, tiny_data, tmp_path, capsys):
    out = tmp_path / "diverge"
    out.mkdir()
    good = shutil.copy(uninterrupted / "checkpoint_0000.pth.tar", out)
    sha = sha256_file(good)
    line = error_line(capsys, [tiny_data, "--resume", "auto", "--output-dir", out, "--lr", "1e38"])
    assert "NaN/Inf" in line and "checkpoint_0000.pth.tar" in line
    assert sha256_file(good) == sha
    assert sorted(p.name for p in out.glob("*.pth.tar")) == ["checkpoint_0000.pth.tar"]


def test_finished_run_resumes_to_nothing_and_contradictions_are_refused(uninterrupted, tiny_data, capsys, results_dir):
    summary = run_cli([tiny_data, "--resume", str(uninterrupted / "final.pth.tar"), "--workers", "0"])
    assert summary["checkpoint"] == str(uninterrupted / "final.pth.tar")
    assert not results_dir.exists() or not list(results_dir.glob("*.json"))  # no second record
    line = error_line(capsys, [tiny_data, "--resume", uninterrupted / "final.pth.tar", "--arch", "resnet50"])
    assert "--arch resnet50 contradicts checkpoint" in line
    line = error_line(capsys, [tiny_data, *TINY, "--arch", "resnet18", "--output-dir", uninterrupted])
    assert "already holds checkpoints" in line and "--resume auto" in line


# ------------------------------------------------------------------ bad input: one line each


def test_bad_data_folders_are_one_line_errors(tmp_path, capsys):
    """Each is one line, and nothing is created (no default output folder) for bad input."""
    assert (
        error_line(capsys, [tmp_path / "missing", *TINY])
        == f"error: {tmp_path / 'missing'}: missing dataset root folder"
    )
    (tmp_path / "no_train").mkdir()
    assert f"{tmp_path / 'no_train' / 'train'}: missing" in error_line(capsys, [tmp_path / "no_train", *TINY])
    (tmp_path / "no_classes" / "train").mkdir(parents=True)
    assert "no class folders" in error_line(capsys, [tmp_path / "no_classes", *TINY])
    (tmp_path / "empty" / "train" / "cls").mkdir(parents=True)
    (tmp_path / "empty" / "train" / "cls" / "notes.txt").write_text("no images here")
    assert "class folder without images" in error_line(capsys, [tmp_path / "empty", *TINY])
    knn_without_val = tmp_path / "knn"
    write_image_folder(knn_without_val, {"train": 1})
    line = error_line(capsys, [knn_without_val, *TINY, "--knn-data", knn_without_val, "-b", "1", "--moco-k", "1"])
    assert f"{knn_without_val / 'val'}: missing" in line
    assert not (tmp_path / "output").exists()
    few = tmp_path / "few"
    write_image_folder(few, {"train": 1})
    assert "fewer than the batch size 8" in error_line(capsys, [few, *TINY, "--arch", "resnet18"])
    assert "not divisible" in error_line(capsys, [few, *TINY, "--moco-k", "20"])
    assert "--checkpoint-minutes must be >= 0" in error_line(capsys, [few, *TINY, "--checkpoint-minutes", "-1"])


def test_unreadable_images_are_counted_and_stop_the_run(tmp_path, capsys):
    data = tmp_path / "data"
    write_image_folder(data, {"train": PER_CLASS})
    for name in ("img0.jpg", "img1.jpg"):
        (data / "train" / "class1" / name).write_bytes(b"\xff\xd8 truncated jpeg")
    line = error_line(capsys, [data, *TINY, "--arch", "resnet18", "--epochs", "1", "--output-dir", tmp_path / "o"])
    assert "unreadable images (more than 1% of 24)" in line and "class1/img" in line


def test_errors_from_loader_workers_keep_only_their_message():
    from mocoeval.runtime.errors import last_line

    worker = UserError(
        "Caught UserError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
        'last):\n  File "x.py", line 1, in f\nmocoeval.runtime.errors.UserError: 5 unreadable images'
    )
    assert last_line(worker) == "5 unreadable images"
    assert (
        last_line(RuntimeError("Error(s) in loading state_dict:\n\tMissing key(s): queue")) == "Missing key(s): queue"
    )
    assert last_line(KeyError()) == "KeyError"


def test_cli_prints_one_line_and_exits_2(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    res = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "nope")], capture_output=True, text=True, env=env, timeout=120
    )
    assert res.returncode == 2
    assert res.stderr == f"error: {tmp_path / 'nope'}: missing dataset root folder\n"


def bad_checkpoints(folder: Path) -> dict[str, tuple[Path, str]]:
    """Files that are no checkpoint, each with what the one loader says about it: {case: (path, message)}."""
    import pickle

    folder.mkdir(parents=True, exist_ok=True)
    moco = {
        "epoch": 1,
        "arch": "resnet18",
        "optimizer": {},
        "state_dict": {
            "module.encoder_q.w": torch.randn(4000),
            "module.encoder_k.w": torch.randn(4000),
            "module.queue": torch.randn(8, 16),
            "module.queue_ptr": torch.zeros(1),
        },
    }
    torch.save(moco, folder / "full.pth.tar")
    torch.save(moco, folder / "full_legacy.pth.tar", _use_new_zipfile_serialization=False)
    zipped, legacy = (folder / "full.pth.tar").read_bytes(), (folder / "full_legacy.pth.tar").read_bytes()
    # legacy files cut inside their pickles raise IndexError, struct.error (4 and 2 bytes): raw PyTorch text before
    contents = {
        "truncated": zipped[: len(zipped) // 2],
        "truncated_legacy": legacy[: len(legacy) // 2],
        **{f"legacy_cut{n}": legacy[:n] for n in (22, 28, 51)},
        "empty": b"",
        "text": b"hello\n",
        "pickle": pickle.dumps({"not": "torch"}, protocol=2),
    }
    messages = {"empty": "empty file", "text": "not a PyTorch checkpoint", "pickle": "a plain Python pickle"}
    out = {}
    for case, data in contents.items():
        (folder / f"{case}.pth.tar").write_bytes(data)
        out[case] = (folder / f"{case}.pth.tar", messages.get(case, "truncated or corrupted"))
    (folder / "directory.pth.tar").mkdir()
    out["directory"] = (folder / "directory.pth.tar", "is a directory")
    return out


def assert_only_error_line(err: str, *fragments: str) -> None:
    """stderr is exactly one `error: ...` line holding each fragment (no traceback, no other output)."""
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert all(f in err for f in fragments), err


def test_bad_resume_files_are_the_loaders_one_line_errors_and_create_nothing(tmp_path, tiny_data, capsys):
    for case, (path, message) in bad_checkpoints(tmp_path / "bad").items():
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            run_cli([tiny_data, *TINY, "--resume", path])
        assert e.value.code == 2, case
        assert_only_error_line(capsys.readouterr().err, str(path), message)
    assert not (tmp_path / "output").exists()  # the default output folder


def test_output_dir_that_is_a_file_is_one_line_error(tmp_path, tiny_data, capsys):
    taken = tmp_path / "taken"
    taken.write_text("a file")
    for out, message in [
        (taken, f"--output-dir {taken} exists and is not a directory"),
        (taken / "run", f"--output-dir {taken / 'run'}: {taken} exists and is not a directory"),
    ]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            run_cli([tiny_data, *TINY, "--arch", "resnet18", "--output-dir", out])
        assert e.value.code == 2
        assert_only_error_line(capsys.readouterr().err, message)
    assert taken.read_text() == "a file" and not (tmp_path / "runs").exists()


def test_inspect_collapse_bad_weights_are_the_loaders_one_line_errors(tmp_path, tiny_data, capsys):
    from mocoeval.pretrain import inspect_collapse as mod

    for case, (path, message) in bad_checkpoints(tmp_path / "bad").items():
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            mod.main([str(tiny_data), "--weights", str(path), "-b", "8", "--image-size", "32"])
        assert e.value.code == 2, case
        assert_only_error_line(capsys.readouterr().err, str(path), message)


# ------------------------------------------------------------------ numerics and determinism


def test_fast_paths_match_fp32(tiny_data):
    """Same batch, same shuffle: channels_last alone is exact up to summation order; bf16 autocast +
    channels_last stays within bf16's precision (measured here: 0.1-3.4% of the loss over seeds)."""
    torch.manual_seed(0)
    args, _ = parse_config([str(tiny_data), "--arch", "resnet18", "--moco-k", "64", "-b", "8", *V2])
    model = build_model(args, bn_splits=2)
    cl = torch.channels_last
    models = {
        "fp32": model,
        "cl": copy.deepcopy(model).to(memory_format=cl),
        "bf16_cl": copy.deepcopy(model).to(memory_format=cl),
    }
    x_q, x_k = torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)
    losses = {}
    for name, m in models.items():
        opt = torch.optim.SGD(m.parameters(), 0.03, momentum=0.9, weight_decay=1e-4)
        xq, xk = (x_q, x_k) if name == "fp32" else (x_q.contiguous(memory_format=cl), x_k.contiguous(memory_format=cl))
        torch.manual_seed(1)  # the same shuffle-BN permutation
        losses[name], _ = train_step(m, opt, xq, xk, torch.bfloat16 if name == "bf16_cl" else None)
    assert losses["bf16_cl"].dtype == torch.float32  # the contrastive head stays float32
    assert abs(losses["cl"].item() - losses["fp32"].item()) < 1e-4
    assert torch.allclose(models["cl"].queue, model.queue, atol=1e-4)
    assert abs(losses["bf16_cl"].item() - losses["fp32"].item()) < 0.1
    assert torch.allclose(models["bf16_cl"].queue, model.queue, atol=0.1)  # the keys agree too


@pytest.mark.slow
def test_compiled_encoders_match_eager_and_keep_checkpoint_keys(tiny_data):
    """train_moco.py --compile: the first step gives the eager loss and update, the next ones (reusing the
    compiled graphs) the eager losses and keys, and the state dict keeps the plain names (checkpoints and the
    converter are unaffected). 64 px and 8 images per BN split: at 32 px with 4 per split, res5's BN sees 4
    values and float differences grow chaotically from step to step (eager NCHW vs channels_last too)."""
    torch.manual_seed(0)
    args, _ = parse_config([str(tiny_data), "--arch", "resnet18", "--moco-k", "64", "-b", "16", *V2])
    eager = build_model(args, bn_splits=2)
    compiled = compile_encoders(copy.deepcopy(eager))
    assert list(compiled.state_dict()) == list(eager.state_dict())
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randn(16, 3, 64, 64, generator=g), torch.randn(16, 3, 64, 64, generator=g)) for _ in range(3)]
    opts = {m: torch.optim.SGD(m.parameters(), 0.03, momentum=0.9, weight_decay=1e-4) for m in (eager, compiled)}
    for i, (xq, xk) in enumerate(batches):
        losses = []
        for m in (eager, compiled):
            torch.manual_seed(10 + i)  # the same shuffle-BN permutation
            losses.append(train_step(m, opts[m], xq, xk)[0].item())
        # measured: 1e-6 at step 1, then ~3e-5 relative
        assert losses[1] == pytest.approx(losses[0], rel=1e-3), f"step {i + 1}"
        if i == 0:  # one update from equal weights: only rounding apart (measured 5e-5)
            diff = max(
                (a - b).abs().max().item()
                for a, b in zip(eager.encoder_q.parameters(), compiled.encoder_q.parameters())
            )
            assert diff < 1e-3
    assert torch.allclose(compiled.queue, eager.queue, atol=1e-3)  # measured 1e-5


def _inspect(*args):
    return subprocess.run(
        [sys.executable, str(REPO / "pretrain" / "inspect_collapse.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_inspect_collapse_reports_a_checkpoint_and_a_random_init(uninterrupted, tiny_data):
    for source in (["--weights", uninterrupted / "final.pth.tar"], ["--random-init", "0", "-a", "resnet18", "--knn"]):
        proc = _inspect(tiny_data, *source, "-b", "8", "--image-size", "32", "--json")
        assert proc.returncode == 0, proc.stderr[-2000:]
        stats = json.loads(proc.stdout)
        assert stats["arch"] == "resnet18" and stats["bn_splits"] == 2 and stats["image_size"] == 32
        assert all(
            -1 <= stats[k] <= 1 for k in ("positive_cos", "negative_cos", "other_batch_cos", "output_pairwise_cos")
        )  # 24 images, batches of 8: a second one
        assert 0 <= stats["key_spread"] <= 1.5 and stats["collapsed"] == (stats["key_spread"] < 0.1)
        assert ("knn_top1" in stats) == ("--knn" in source) and 0 <= stats.get("knn_top1", 0) <= 100
        assert stats.get("knn_stage", "layer4") == "layer4"
        scales = stats["residual_branch_scale"]  # a fresh torchvision init: every branch's last BN scale is 1
        assert list(scales) == ["layer1", "layer2", "layer3", "layer4"]
        assert all(0 < v for v in scales.values()) and (scales["layer1"] == 1.0) == ("--random-init" in source)
        assert ("queue_cos" in stats) == ("--weights" in source) and -1 <= stats.get("queue_cos", 0) <= 1
    proc = _inspect(
        tiny_data,
        "--random-init",
        "0",
        "-a",
        "resnet18",
        "-b",
        "8",
        "--image-size",
        "32",
        "--json",
        "--knn",
        "--knn-stage",
        "layer2",
        "--knn-bn",
        "data",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = json.loads(proc.stdout)
    assert stats["knn_stage"] == "layer2" and stats["knn_bn"] == "data" and 0 <= stats["knn_top1"] <= 100
    # one batch only (24 images, batches of 16, the last one dropped): no second batch to compare with
    proc = _inspect(tiny_data, "--random-init", "0", "-a", "resnet18", "-b", "16", "--image-size", "32", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "other_batch_cos" not in json.loads(proc.stdout)
    # a collapsed model: every output the same direction -> spread 0, flagged
    torch.manual_seed(0)
    args, _ = parse_config([str(tiny_data), "--arch", "resnet18", "-b", "8", *V2])
    model = build_model(args, bn_splits=2)
    torch.nn.init.zeros_(model.encoder_q.fc[2].weight)
    torch.nn.init.zeros_(model.encoder_k.fc[2].weight)
    torch.nn.init.constant_(model.encoder_k.fc[2].bias, 1.0)
    torch.nn.init.constant_(model.encoder_q.fc[2].bias, 1.0)
    from mocoeval.pretrain import inspect_collapse as mod

    x = torch.randn(8, 3, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = mod.view_similarities(model, x, x.clone())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # BN statistics put back
    assert stats["key_spread"] < 1e-3 and stats["output_pairwise_cos"] == pytest.approx(1.0)
    # queued keys (unnormalised columns) along / against that one output direction
    direction = torch.ones(128, 5) * 3.0
    stats = mod.view_similarities(model, x, x.clone(), direction, torch.randn(8, 3, 32, 32))
    assert stats["queue_cos"] == pytest.approx(1.0) and stats["other_batch_cos"] == pytest.approx(1.0)
    assert mod.view_similarities(model, x, x.clone(), -direction)["queue_cos"] == pytest.approx(-1.0)


def test_inspect_collapse_bad_input_is_one_line(tmp_path, tiny_data):
    (tmp_path / "not_a_checkpoint.pth").write_bytes(b"junk")
    for args in (
        [tmp_path / "missing", "--random-init", "0"],
        [tiny_data, "--weights", tmp_path / "not_a_checkpoint.pth"],
        [tiny_data, "--weights", tmp_path / "not_a_checkpoint.pth", "--zero-init-residual"],
        [tiny_data, "--random-init", "0", "--residual-bn-init", "2"],
        [tiny_data, "--random-init", "0", "--knn-bn", "data"],
    ):
        proc = _inspect(*args)
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
        if "--zero-init-residual" in args:
            assert "describe a --random-init model" in proc.stderr
        if "--residual-bn-init" in args:
            assert "--residual-bn-init must be between 0 and 1, got 2" in proc.stderr
    assert "add --knn" in proc.stderr


def test_views_and_order_depend_only_on_seed_epoch_index(tiny_data):
    ds = TwoViewImageFolder(tiny_data / "train", TwoCropsTransform(moco_transform(32, aug_plus=True)), seed=3)
    state = torch.get_rng_state()
    (q1, k1), bad = ds[(0, 5)]
    assert bad == -1 and torch.equal(torch.get_rng_state(), state)  # caller's generator untouched
    (q2, k2), _ = ds[(0, 5)]
    assert torch.equal(q1, q2) and torch.equal(k1, k2) and not torch.equal(q1, k1)
    (q3, _), _ = ds[(1, 5)]
    assert not torch.equal(q1, q3)
    order = list(EpochSampler(24, seed=3))
    assert order == list(EpochSampler(24, seed=3)) and sorted(i for _, i in order) == list(range(24))
    s = EpochSampler(24, seed=3)
    s.set_epoch(1)
    epoch_1 = [i for _, i in s]
    assert epoch_1 != [i for _, i in order]
    s.set_epoch(1, skip=5)  # resumed after 5 samples of epoch 1: the rest of the same order
    assert [i for _, i in s] == epoch_1[5:] and len(s) == 24
    ranks = [[i for _, i in EpochSampler(25, seed=3, rank=r, world_size=2)] for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 12 and not set(ranks[0]) & set(ranks[1])


# ------------------------------------------------------------------ several processes (torchrun, gloo on CPU)


def torchrun_2(args, timeout=300) -> subprocess.CompletedProcess:
    """torchrun --standalone --nproc_per_node 2 (gloo on CPU); on a timeout the whole process group dies."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_shuffle_bn_across_two_processes(tmp_path):
    script = tmp_path / "check_shuffle.py"
    script.write_text(
        textwrap.dedent("""
        import sys, torch, torch.distributed as dist, torch.nn as nn
        from mocoeval.pretrain.builder import MoCo, gather_from_all, shuffle_batch, unshuffle_batch
        dist.init_process_group("gloo")
        rank = dist.get_rank()
        torch.manual_seed(100 + rank)  # different generators: rank 0's permutation must win
        x = torch.arange(4.0).view(4, 1) + 10 * rank  # rank 0: 0..3, rank 1: 10..13
        shuffled, unshuffle = shuffle_batch(x)
        everyone = gather_from_all(shuffled)
        assert sorted(everyone.flatten().tolist()) == [0, 1, 2, 3, 10, 11, 12, 13], everyone
        assert torch.equal(unshuffle_batch(shuffled, unshuffle), x)
        torch.manual_seed(0)
        model = MoCo(lambda: nn.Linear(1, 2, bias=False), dim=2, K=16)
        model(x, x)
        assert model.queue_ptr.item() == 8  # the keys of both processes were enqueued
        queues = gather_from_all(model.queue[None])
        assert torch.equal(queues[0], queues[1])  # identical queues everywhere
        open(sys.argv[1] + f".{rank}", "w").write("ok")
        dist.destroy_process_group()
    """)
    )
    res = torchrun_2([str(script), str(tmp_path / "done")])
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "done.0").read_text() == "ok" and (tmp_path / "done.1").read_text() == "ok"


@pytest.mark.slow
def test_torchrun_two_processes_train_and_checkpoint(tiny_data, tmp_path, results_dir):
    out = tmp_path / "ddp"
    res = torchrun_2(
        [
            str(SCRIPT),
            str(tiny_data),
            *TINY,
            *V2,
            "--arch",
            "resnet18",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--output-dir",
            str(out),
            "--workers",
            "1",  # a loader worker per process, at idle priority (auto on CPU)
        ]
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "1 workers (idle priority)" in (out / "log.txt").read_text()
    ckpt = torch.load(out / "final.pth.tar", map_location="cpu", weights_only=True)
    assert ckpt["config"]["world_size"] == 2 and ckpt["config"]["bn_splits_effective"] == 1
    sd = strip_prefix(ckpt["state_dict"])
    assert sd["queue_ptr"].item() == (3 * 8) % 16  # 3 steps of the global batch 8 (4 per process)
    assert len(load_records(results_dir)) == 1  # rank 0 alone writes


@pytest.mark.slow
def test_torchrun_a_signal_to_one_process_stops_both_at_the_same_step(tiny_data, tmp_path, results_dir):
    """SIGINT reaches rank 1 alone during its 2nd step: both processes agree at the next log step, rank 0 saves
    the resume point, both stop; a single process then finishes the run from it."""
    out = tmp_path / "ddp"
    wrapper = tmp_path / "signal_rank1.py"
    wrapper.write_text(
        textwrap.dedent(f"""
        import os, runpy, signal, sys
        from mocoeval.pretrain import engine
        real, calls = engine.train_step, [0]
        def train_step(*args, **kwargs):
            calls[0] += 1
            if calls[0] == 2 and os.environ["RANK"] == "1":
                os.kill(os.getpid(), signal.SIGINT)
            return real(*args, **kwargs)
        engine.train_step = train_step
        sys.argv = [{str(SCRIPT)!r}, *sys.argv[1:]]
        runpy.run_path({str(SCRIPT)!r}, run_name="__main__")
    """)
    )
    res = torchrun_2(
        [
            str(wrapper),
            str(tiny_data),
            *TINY,
            *V2,
            "--arch",
            "resnet18",
            "--epochs",
            "2",
            "-p",
            "1",
            "--device",
            "cpu",
            "--output-dir",
            str(out),
        ]
    )
    assert res.returncode != 0 and "interrupted: SIGINT: stopped after step 2/3 of epoch 1" in res.stderr, res.stderr[
        -3000:
    ]
    assert [p.name for p in out.glob("*.pth.tar")] == ["resume_epoch0001_step000002.pth.tar"]
    run_cli([tiny_data, "--resume", "auto", "--output-dir", out, "--workers", "0", "--device", "cpu"])
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2] and (out / "final.pth.tar").exists()


def test_default_checkpoints_keep_the_newest_and_milestones_and_resume_auto_finds_the_newest(tmp_path):
    """200 epochs kept one checkpoint each (~67 GB): by default the newest and every --keep-every'th stay."""
    from mocoeval.pretrain.checkpoint import checkpoint_name, find_resume_checkpoint
    from mocoeval.pretrain.config import PretrainConfig, checkpoint_policy
    from mocoeval.pretrain.run_folder import prune_checkpoints

    def run(cfg, folder):
        folder.mkdir()
        for epochs_done in range(1, 26):  # as the engine does: save, then prune
            (folder / checkpoint_name(epochs_done)).touch()
            prune_checkpoints(folder, cfg)
        return sorted(p.name for p in folder.iterdir())

    default = PretrainConfig.defaults(epochs=25)
    assert run(default, tmp_path / "default") == [checkpoint_name(e) for e in (10, 20, 25)]
    assert find_resume_checkpoint(tmp_path / "default").name == checkpoint_name(25)
    assert "keeping the newest 1 (for --resume) and every 10th epoch's: 3 of 25" in checkpoint_policy(default)
    assert len(run(dataclasses.replace(default, keep_checkpoints=0), tmp_path / "all")) == 25
    two = run(dataclasses.replace(default, keep_checkpoints=2, keep_every=0), tmp_path / "two")
    assert two == [checkpoint_name(24), checkpoint_name(25)]


def test_a_run_keeps_milestones_says_so_and_resumes_from_the_newest(tiny_data, tmp_path):
    out = tmp_path / "run"
    common = [tiny_data, *TINY, "--arch", "resnet18", "--output-dir", out, "--keep-checkpoints", "1"]
    run_cli([*common, "--epochs", "3", "--keep-every", "2"])
    assert sorted(p.name for p in out.glob("checkpoint_*")) == ["checkpoint_0001.pth.tar", "checkpoint_0002.pth.tar"]
    log = (out / "log.txt").read_text()
    assert "keeping the newest 1 (for --resume) and every 2th epoch's: 2 of 3 at the end" in log
    run_cli([*common, "--epochs", "4", "--resume", "auto"])  # continues from epoch 3, the newest
    assert "resumed " + str(out / "checkpoint_0002.pth.tar") + ": 3 of 4 epochs done" in (out / "log.txt").read_text()
    assert sorted(p.name for p in out.glob("checkpoint_*")) == ["checkpoint_0001.pth.tar", "checkpoint_0003.pth.tar"]
