"""Linear classification on a frozen ResNet-50: the MoCo papers' "ImageNet linear accuracy".

The protocol is the official facebookresearch/moco `main_lincls.py` (constants in `LINCLS_DEFAULTS`, see
../shared/protocol.md "Linear classification"):

- torchvision ResNet-50 whose backbone comes from a checkpoint (any format `convert.formats.load_resnet50`
  reads) or is randomly initialised (`--random-init`, seeded); every layer but `fc` frozen;
- the **whole model stays in eval mode while training** (the official script calls `model.eval()` in its
  train loop): BN layers normalise with the checkpoint's running statistics and never update them;
- a new `fc = Linear(2048, num_classes)`, weight ~ N(0, 0.01), bias 0, the only parameters the optimizer sees;
- SGD lr 30, momentum 0.9, weight decay 0, batch 256, 100 epochs, lr x 0.1 at epochs 60 and 80;
- train: RandomResizedCrop(size) (scale 0.08-1) + horizontal flip; val: Resize(size*256/224) + CenterCrop(size);
  ImageNet mean/std;
- top-1/top-5 on val after every epoch, the best tracked; a sanity check that every backbone tensor (BN buffers
  included) still equals the checkpoint's, re-read from disk (after the first epoch, as the official script
  does, and at the end): a mismatch fails the run.

Reproducibility: the training crops are drawn from an RNG seeded by (seed, epoch, image index) and the
shuffling from a generator seeded by (seed, epoch), so a run resumed at any epoch boundary, or run with any
number of data-loader workers, sees exactly the same batches as an uninterrupted one; no global RNG state needs
saving. Ctrl-C / SIGTERM stop after the current iteration (every process agrees at the next log step) with that
state in checkpoint.pth.tar (`step_in_epoch`, the epoch's sums so far): `--resume auto` skips the epoch's
batches already trained and ends exactly like the uninterrupted run. The backbone forward runs under
`torch.no_grad()` (optionally bf16 autocast and channels-last): only `fc` is in autograd.

Modules: linear_config (the typed settings), linear_data, linear_model, linear_train (one epoch, evaluation);
this one runs them: read inputs -> build -> resume -> epoch loop -> finish (metrics.json, the results record).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mocoeval.runtime.checkpoint_io import torch_load_safely
from mocoeval.runtime.distributed import Processes, barrier, setup_processes
from mocoeval.runtime.errors import UserError
from mocoeval.runtime.fileio import (
    atomic_torch_save,
    atomic_write_json,
    check_output_dir,
)
from mocoeval.runtime.logger import ConsoleFormatter, log_to
from mocoeval.runtime.stop_request import StopRequest, any_process
from mocoeval.transfer.linear_config import LinearConfig
from mocoeval.transfer.linear_data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_datasets,
    input_mean_std,
    sample_seed,
    shard,
)
from mocoeval.transfer.linear_model import (
    ARCH,
    FrozenBackboneResNet50,
    check_backbone_unchanged,
    load_backbone,
    load_backbone_source,
)
from mocoeval.transfer.linear_train import (
    RunEta,
    Runner,
    build_optimizer,
    evaluate,
    lr_at_epoch,
    train_one_epoch,
)

logger = logging.getLogger("mocoeval.linear")

CHECKPOINT_NAME = "checkpoint.pth.tar"
BEST_CHECKPOINT_NAME = "model_best.pth.tar"
METRICS_NAME = "metrics.json"
CHECKPOINT_FORMAT = "mocoeval-linear"
CONSOLE_FORMAT = ConsoleFormatter("[%(asctime)s linear] %(message)s", "%m/%d %H:%M:%S")
# Settings a resumed run must share with the checkpoint; anything else may change (with a warning).
_RESUME_IDENTITY = ("seed", "image_size", "batch_size", "lr", "momentum", "weight_decay", "schedule", "feature_norm")
_RESUME_MAY_CHANGE = ("resume", "output_dir", "workers", "print_freq", "device", "epochs")


# ------------------------------------------------------------------------------------------ inputs
@dataclasses.dataclass
class Inputs:
    """Everything the run reads, read before it creates anything (no output folder or log for bad input)."""

    train_set: Any
    val_set: Any
    classes: list[str]
    backbone_state: dict[str, torch.Tensor] | None
    info: dict
    resume_path: Path | None
    checkpoint: dict | None


def read_inputs(config: LinearConfig, output_dir: Path) -> Inputs:
    # the data folder first, so that a bad one fails before the (slow) checkpoint read; then the backbone, whose
    # recorded input normalisation the datasets apply, and --resume
    from mocoeval.data.layout import check_imagefolder

    check_imagefolder(Path(config.data), splits=("train", "val"))
    backbone_state, info = load_backbone_source(config)
    train_set, val_set, classes = build_datasets(config.data, config.image_size, config.seed, info.get("input"))
    resume_path = resolve_resume(config.resume, output_dir)
    checkpoint = _load_checkpoint(resume_path) if resume_path is not None else None
    return Inputs(train_set, val_set, classes, backbone_state, info, resume_path, checkpoint)


def _load_checkpoint(path: Path) -> dict:
    ckpt = torch_load_safely(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: not a linear-eval checkpoint written by transfer/run_linear.py")
    return ckpt


def resolve_resume(resume: str | None, output_dir: Path) -> Path | None:
    if not resume:
        return None
    if resume == "auto":
        path = output_dir / CHECKPOINT_NAME
        return path if path.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise UserError(f"--resume {resume}: no such file")
    return path


# ---------------------------------------------------------------------------------------- the run
def run(config: LinearConfig) -> dict:
    """The whole linear evaluation; returns the metrics written to metrics.json."""
    wall_start = time.time()
    procs = setup_processes(config.device)
    config.check_world_size(procs.world_size)
    output_dir = check_output_dir(config.output_dir)
    inputs = read_inputs(config, output_dir)
    if procs.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    barrier(procs.world_size)
    bar_active = procs.is_main and sys.stderr.isatty()  # a non-terminal (Slurm, pipes) gets step lines instead
    with log_to(
        logger.name, output_dir, procs.is_main, console_format=CONSOLE_FORMAT, stream=sys.stdout, bar_active=bar_active
    ):
        linear_run = LinearRun(config, procs, output_dir, inputs, bar_active)
        linear_run.resume(inputs.resume_path, inputs.checkpoint)
        linear_run.train()
        metrics = linear_run.finish(wall_start)
    barrier(procs.world_size)
    return metrics


class LinearRun:
    """One linear evaluation's state between the steps of `run`: model, optimizer, data, progress so far."""

    def __init__(self, config: LinearConfig, procs: Processes, output_dir: Path, inputs: Inputs, bar_active: bool):
        self.config, self.procs, self.output_dir, self.bar_active = config, procs, output_dir, bar_active
        self.record_config = config.as_record()
        logger.info("linear classification: %s", " ".join(f"{k}={v}" for k, v in sorted(self.record_config.items())))
        device = procs.device
        if device.type == "cuda":
            # bit-reproducible (exact resume, as on CPU), like the official script given --seed; measured on an
            # H100 at 224 px, batch 256: no slower than cudnn.benchmark for this forward-only backbone
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
        self.train_set, self.classes, self.info = inputs.train_set, inputs.classes, inputs.info
        logger.info(
            "data %s: %d train / %d val images, %d classes",
            config.data,
            len(self.train_set),
            len(inputs.val_set),
            len(self.classes),
        )
        self.source = self.info["format_description"] if config.random_init else str(config.weights)
        norm = self.info.get("input")
        if norm and input_mean_std(norm) != (IMAGENET_MEAN, IMAGENET_STD):
            # recorded only when it is not the default, so that the default runs keep their settings (and rows); one
            # string, as the tables compare settings by value
            self.record_config["input_norm"] = (
                f"{norm['channels']} mean {list(norm['pixel_mean'])} std {list(norm['pixel_std'])} (0..255)"
            )
            logger.info("input normalisation recorded with the weights: %s", self.record_config["input_norm"])
        self.variant = dict(self.info.get("variant") or {})
        if config.variant:
            self.variant["name"] = config.variant
        logger.info(
            "backbone: %s (format %s, variant %s, sha256 %s)",
            self.source,
            self.info.get("format"),
            self.variant.get("name"),
            str(self.info.get("source_sha256"))[:12],
        )
        for line in self.info.get("warnings", ()):
            logger.warning(line)

        torch.manual_seed(config.seed)  # fc initialisation
        self.model = FrozenBackboneResNet50(num_classes=len(self.classes), feature_norm=config.feature_norm)
        load_backbone(self.model, inputs.backbone_state, self.source)
        inputs.backbone_state = None  # the model holds it now; the sanity check re-reads the source
        self.runner = Runner(self.model, device, config.precision, config.channels_last, procs.distributed)
        self.optimizer = build_optimizer(self.model, config.lr, config.momentum, config.weight_decay)

        self.history: list[dict] = []
        self.best = {"top1": -1.0, "top5": 0.0, "epoch": 0}
        self.start_epoch, self.start_iter, self.carried = 0, 0, None
        self.per_rank_batch = config.batch_size // procs.world_size
        # per process: DistributedSampler pads to ceil(len / world) images; the last batch may be partial
        self.iters_per_epoch = math.ceil(math.ceil(len(self.train_set) / procs.world_size) / self.per_rank_batch)
        self.loader_kwargs = dict(num_workers=config.workers, pin_memory=device.type == "cuda")
        self.val_set = inputs.val_set

    # -------------------------------------------------------------------------------------- resume
    def resume(self, path: Path | None, ckpt: Mapping | None) -> None:
        """Continue from a checkpoint of the same backbone, data and result-changing settings."""
        config = self.config
        if config.resume == "auto" and path is None:
            logger.info("--resume auto: no %s in %s, starting from scratch", CHECKPOINT_NAME, self.output_dir)
        if ckpt is None:
            return
        self._check_resumable(path, ckpt)
        self.model.fc.load_state_dict(ckpt["fc"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.start_epoch = int(ckpt["epoch"])
        self.history = list(ckpt.get("history", []))
        self.best = dict(ckpt.get("best", self.best))
        self.start_iter = int(ckpt.get("step_in_epoch") or 0)  # stopped mid-epoch: that many iterations of the next
        if self.start_iter:
            progress = ckpt["epoch_progress"]
            if progress["iters_per_epoch"] != self.iters_per_epoch:
                raise UserError(
                    f"--resume {path}: it stopped at iteration {self.start_iter} of "
                    f"{progress['iters_per_epoch']} per epoch, this run has {self.iters_per_epoch} "
                    "(other data or number of processes)"
                )
            # the sums are totals over all processes: rank 0 alone carries them (elapsed time on every rank)
            carried = progress["carried"]
            self.carried = carried if self.procs.is_main else [0.0, 0, 0, carried[3]]
        logger.info(
            "resumed from %s at epoch %d%s (best top-1 %.2f at epoch %d)%s",
            path,
            self.start_epoch,
            f", iteration {self.start_iter}/{self.iters_per_epoch} of epoch {self.start_epoch + 1}"
            if self.start_iter
            else "",
            self.best["top1"],
            self.best["epoch"],
            "; training already finished: re-checking and re-recording it" if self.start_epoch == config.epochs else "",
        )

    def _check_resumable(self, path: Path, ckpt: Mapping) -> None:
        info, config = self.info, self.record_config
        if ckpt.get("source_sha256") != info.get("source_sha256"):
            raise UserError(
                f"--resume {path}: it was trained on another backbone "
                f"(sha256 {str(ckpt.get('source_sha256'))[:12]}, "
                f"this run {str(info.get('source_sha256'))[:12]})"
            )
        if list(ckpt.get("classes", [])) != self.classes:
            raise UserError(f"--resume {path}: its classes differ from {self.config.data}/train's")
        old_args = ckpt.get("args", {})
        for key in _RESUME_IDENTITY:
            if key in old_args and old_args[key] != config.get(key):
                raise UserError(
                    f"--resume {path}: it was run with {key}={old_args[key]!r}, "
                    f"this run has {config.get(key)!r}; pass the same value"
                )
        changed = [k for k in config if k in old_args and old_args[k] != config[k] and k not in _RESUME_MAY_CHANGE]
        if changed:
            logger.warning(
                "resuming with changed settings: %s",
                ", ".join(f"{k} {old_args[k]!r} -> {config[k]!r}" for k in changed),
            )
        if int(ckpt["epoch"]) > self.config.epochs:
            raise UserError(f"--resume {path}: it is at epoch {ckpt['epoch']}, beyond --epochs {self.config.epochs}")

    def save_checkpoint(self, epochs_done: int, improved: bool = False, mid_epoch: dict | None = None) -> Path:
        path = self.output_dir / CHECKPOINT_NAME
        if self.procs.is_main:
            ckpt = {
                "format": CHECKPOINT_FORMAT,
                "epoch": epochs_done,
                "arch": ARCH,
                "classes": self.classes,
                "fc": {k: v.detach().cpu() for k, v in self.model.fc.state_dict().items()},
                "optimizer": self.optimizer.state_dict(),
                "best": self.best,
                "history": self.history,
                "source_sha256": self.info.get("source_sha256"),
                "variant": self.variant,
                "args": self.record_config,
                **(mid_epoch or {}),
            }
            atomic_torch_save(ckpt, path)
            if improved:
                atomic_torch_save(ckpt, self.output_dir / BEST_CHECKPOINT_NAME)
        barrier(self.procs.world_size)  # nobody stops while rank 0 writes
        return path

    def sanity_check(self, when: str) -> None:
        reference, _ = load_backbone_source(self.config)
        check_backbone_unchanged(self.model.state_dict(), reference, self.source)
        logger.info("sanity check %s passed: every backbone tensor equals %s", when, self.source)

    # ---------------------------------------------------------------------------------- epoch loop
    def train_loader(self, epoch: int, first_iter: int) -> torch.utils.data.DataLoader:
        """The epoch's batches, from iteration `first_iter` on: the same order whatever was resumed."""
        config, procs = self.config, self.procs
        self.train_set.set_epoch(epoch)
        if procs.distributed:
            sampler = torch.utils.data.DistributedSampler(
                self.train_set, num_replicas=procs.world_size, rank=procs.rank, shuffle=True, seed=config.seed
            )
            sampler.set_epoch(epoch)
        else:
            gen = torch.Generator().manual_seed(sample_seed(config.seed, epoch, -1))
            sampler = torch.utils.data.RandomSampler(self.train_set, generator=gen)
        if first_iter:  # resumed mid-epoch: the same order, without the batches already trained
            sampler = list(sampler)[first_iter * self.per_rank_batch :]
        return torch.utils.data.DataLoader(
            self.train_set, batch_size=self.per_rank_batch, sampler=sampler, **self.loader_kwargs
        )

    def train(self) -> None:
        """Epochs from the resume point to --epochs; Ctrl-C / SIGTERM save and stop (StopRequest)."""
        from tqdm import tqdm

        config, procs = self.config, self.procs
        val_loader = torch.utils.data.DataLoader(
            shard(self.val_set, procs.rank, procs.world_size),
            batch_size=self.per_rank_batch,
            shuffle=False,
            **self.loader_kwargs,
        )
        writer = None
        if procs.is_main:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=str(self.output_dir / "tb"))
        eta = RunEta((config.epochs - self.start_epoch) * self.iters_per_epoch - self.start_iter)
        # Ctrl-C / SIGTERM: finish the iteration, save it, stop (every process agrees at the next log step)
        stop = StopRequest("saving after this iteration, then stopping").install()
        epochs_bar = tqdm(
            total=config.epochs,
            initial=self.start_epoch,
            desc="epochs",
            disable=not self.bar_active,
            dynamic_ncols=True,
        )
        sanity_checked = False
        try:
            for epoch in range(self.start_epoch, config.epochs):
                val_stats = self.run_epoch(epoch, val_loader, writer, stop, eta)
                epochs_bar.update(1)
                epochs_bar.set_postfix(top1=f"{val_stats['top1']:.2f}", best=f"{self.best['top1']:.2f}")
                # a signal during the evaluation: the epoch is saved, stop here (unless it was the last)
                if any_process([stop.requested], procs.world_size, procs.device)[0] and epoch + 1 < config.epochs:
                    raise stop.interrupted(
                        f"stopped after epoch {epoch + 1} of {config.epochs}, state in "
                        f"{self.output_dir / CHECKPOINT_NAME}; continue with --resume auto"
                    )
                # the official script checks once after its first epoch; so do we (early failure), and at the end
                if not sanity_checked and epoch + 1 < config.epochs:
                    self.sanity_check("after the first epoch")
                    sanity_checked = True
        finally:
            stop.restore()
            epochs_bar.close()
        if writer is not None:
            writer.close()

    def run_epoch(self, epoch: int, val_loader, writer, stop: StopRequest, eta: RunEta) -> dict:
        """Train one epoch (saving and stopping mid-epoch on a signal), evaluate, log, checkpoint."""
        config = self.config
        first_iter = self.start_iter if epoch == self.start_epoch else 0
        lr = lr_at_epoch(config.lr, epoch, config.schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loader = self.train_loader(epoch, first_iter)
        desc = f"epoch {epoch + 1}/{config.epochs}"
        train_stats = train_one_epoch(
            self.runner,
            loader,
            self.optimizer,
            epoch,
            print_freq=config.print_freq,
            writer=writer,
            progress=self.bar_active,
            desc=desc,
            start_iter=first_iter,
            carried=self.carried if first_iter else None,
            stop=stop,
            world=self.procs.world_size,
            eta=eta,
        )
        if "stopped_after" in train_stats:
            done = train_stats["stopped_after"]
            path = self.save_checkpoint(
                epoch,
                mid_epoch={
                    "step_in_epoch": done,
                    "epoch_progress": {"iters_per_epoch": self.iters_per_epoch, "carried": train_stats["carried"]},
                },
            )
            raise stop.interrupted(
                f"stopped after iteration {done}/{self.iters_per_epoch} of epoch {epoch + 1}, "
                f"state in {path}; continue with --resume auto"
            )
        val_stats = evaluate(self.runner, val_loader, progress=self.bar_active, desc=f"{desc} val")
        self.history.append({"epoch": epoch + 1, "lr": lr, **train_stats, **val_stats})
        improved = val_stats["top1"] > self.best["top1"]
        if improved:
            self.best = {"top1": val_stats["top1"], "top5": val_stats["top5"], "epoch": epoch + 1}
        logger.info(
            "epoch %d/%d lr %.4g: train loss %.4f top-1 %.2f (%.0f img/s) | val top-1 %.2f top-5 %.2f"
            " | best top-1 %.2f (epoch %d)",
            epoch + 1,
            config.epochs,
            lr,
            train_stats["train_loss"],
            train_stats["train_top1"],
            train_stats["train_images_per_s"],
            val_stats["top1"],
            val_stats["top5"],
            self.best["top1"],
            self.best["epoch"],
        )
        if writer is not None:
            for key in ("train_loss", "train_top1", "train_images_per_s"):
                writer.add_scalar(f"train/{key[len('train_') :]}", train_stats[key], epoch + 1)
            writer.add_scalar("train/lr", lr, epoch + 1)
            for key in ("top1", "top5", "val_loss"):
                writer.add_scalar(f"val/{key}", val_stats[key], epoch + 1)
            writer.flush()
        self.save_checkpoint(epoch + 1, improved)
        return val_stats

    # -------------------------------------------------------------------------------------- finish
    def finish(self, wall_start: float) -> dict:
        """The final sanity check, metrics.json and the results record (main process)."""
        config = self.config
        if not self.history:
            raise UserError(
                f"nothing to evaluate: --epochs {config.epochs} and the checkpoint is at epoch {self.start_epoch}"
            )
        self.sanity_check("at the end")
        final, best, info = self.history[-1], self.best, self.info
        metrics = {
            "top1": final["top1"],
            "top5": final["top5"],
            "best_top1": best["top1"],
            "best_top5": best["top5"],
            "best_epoch": best["epoch"],
            "epochs": len(self.history),
            "val_images": final["val_images"],
            "num_classes": len(self.classes),
            "sanity_check": "passed",
            "source_sha256": info.get("source_sha256"),
            "source_format": info.get("format"),
            "weights": None if config.random_init else str(config.weights),
            "variant": self.variant,
            "settings": self.record_config,
            "world_size": self.procs.world_size,
            "history": self.history,
        }
        if self.procs.is_main:
            atomic_write_json(self.output_dir / METRICS_NAME, metrics)
            logger.info(
                "final top-1 %.2f top-5 %.2f; best top-1 %.2f (epoch %d); wrote %s",
                metrics["top1"],
                metrics["top5"],
                metrics["best_top1"],
                metrics["best_epoch"],
                self.output_dir / METRICS_NAME,
            )
            write_record(config, info, self.variant, metrics, self.record_config, wall_time_s=time.time() - wall_start)
        return metrics


def write_record(
    config: LinearConfig,
    info: Mapping[str, Any],
    variant: Mapping,
    metrics: Mapping,
    record_config: Mapping,
    wall_time_s: float,
) -> Path:
    """One record in the results store (the command rebuilds the tables from the store afterwards)."""
    from mocoeval.results.store import write_run_record

    record_metrics = {
        k: metrics[k]
        for k in ("top1", "top5", "best_top1", "best_top5", "best_epoch", "epochs", "num_classes", "val_images")
    }
    path = write_run_record(
        "linear",
        variant=variant,
        metrics=record_metrics,
        source_sha256=info.get("source_sha256"),
        weights=None if config.random_init else str(config.weights),
        weights_sha256=None if config.random_init else info.get("source_sha256"),
        config=record_config,
        seeds=[config.seed],
        wall_time_s=wall_time_s,
        extra={"source_format": info.get("format"), "sanity_check": "passed", "feature_norm": config.feature_norm},
    )
    logger.info("results record: %s", path)
    return path
