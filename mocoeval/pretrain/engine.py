"""The pretraining loop: data, checkpoints, resume, monitoring; processes, logging, precision and the lr schedule
come from the shared runtime. One run is a `PretrainRun`: resolve -> build -> resume -> open_monitoring ->
train_epochs -> summary, its mid-epoch resume points a `ResumePoints`.

What it is built from (model, optimizer, loaders) is `build`, one step and its monitor `step` -- both shared with
the throughput benchmark -- and what a finished run leaves in its folder `run_folder`. A step never waits for the
device: loss and accuracy are accumulated there and read back every `--print-freq` steps only.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.utils.data
from tqdm import tqdm

from mocoeval.data.layout import check_imagefolder
from mocoeval.pretrain.augment_batched import ViewBatch
from mocoeval.pretrain.build import (
    build_loader,
    build_model,
    build_optimizer,
    colour_on_device,
    compile_encoders,
    default_workers,
    idle_loader_workers,
    knn_loaders,
    resolve_bn_splits,
)
from mocoeval.pretrain.checkpoint import (
    FINAL_NAME,
    checkpoint_name,
    find_latest_checkpoint,
    find_resume_checkpoint,
    remove_resume_points,
    resume_point_name,
    save_checkpoint,
    strip_prefix,
)
from mocoeval.pretrain.config import PretrainConfig, checkpoint_policy, run_config, validate
from mocoeval.pretrain.data import (
    MAX_UNREADABLE_FRACTION,
    check_train_folder,
    derive_seed,
)
from mocoeval.pretrain.knn import knn_top1
from mocoeval.pretrain.residual_scaling import (
    multiply_residual_branches,
    residual_branch_gain,
    residual_branch_scales,
)
from mocoeval.pretrain.run_folder import already_finished, finish_run, prune_checkpoints, write_metrics
from mocoeval.pretrain.step import COLLAPSED_SPREAD, StepMonitor, lr_at_step, stage_grad_ratios, train_step
from mocoeval.results.store import pretrain_variant
from mocoeval.runtime.distributed import Processes, barrier, setup_processes, teardown
from mocoeval.runtime.errors import UserError, last_line
from mocoeval.runtime.fileio import atomic_write_json, check_output_dir
from mocoeval.runtime.logger import ConsoleFormatter, format_seconds, log_to
from mocoeval.runtime.precision import cpu_has_fast_bf16
from mocoeval.runtime.schedule import sgd_implementation
from mocoeval.runtime.stop_request import StopRequest, any_process

log = logging.getLogger("mocoeval.pretrain")

K_FRACTION_WARN = 0.10  # warn when the queue holds more than 10% of the training set


class TrainingDiverged(UserError):
    """The loss became NaN or Inf."""


# ---------------------------------------------------------------- the run

CONSOLE_FORMAT = ConsoleFormatter("[%(asctime)s] %(message)s", "%H:%M:%S")
FILE_FORMAT = logging.Formatter("[%(asctime)s %(levelname)s] %(message)s", "%Y-%m-%d %H:%M:%S")


def train(cfg: PretrainConfig, resume_ckpt: dict | None = None) -> dict:
    """Run (or continue) pretraining as the resolved `cfg` says; returns the final summary."""
    check_train_folder(cfg.data)  # bad input fails before anything is created
    check_output_dir(cfg.output_dir)
    if cfg.knn_data:
        check_imagefolder(cfg.knn_data, splits=("train", "val"))
    procs = setup_processes(cfg.device)
    validate(cfg, procs.world_size)  # parse_config did; a config built in code may not have been
    out = Path(cfg.output_dir)
    if procs.is_main:
        out.mkdir(parents=True, exist_ok=True)
    bar_active = procs.is_main and sys.stderr.isatty()
    with log_to(
        "mocoeval",
        out if procs.is_main else None,
        procs.is_main,
        console_format=CONSOLE_FORMAT,
        file_format=FILE_FORMAT,
        bar_active=bar_active,
    ):
        try:
            if resume_ckpt is None and procs.is_main and find_resume_checkpoint(out) is not None:
                raise UserError(
                    f"{out} already holds checkpoints of a run: continue it with --resume auto, "
                    "or choose another --output-dir"
                )
            run = PretrainRun(cfg, procs, out)
            run.build()
            run.resume(resume_ckpt)
            run.open_monitoring()
            run.train_epochs(bar_active)
            return run.summary()
        finally:
            teardown(procs.world_size)


@dataclasses.dataclass
class EpochState:
    """One epoch in progress: where it started, its monitor, and what its last log line said."""

    index: int  # 0-based
    first_step: int  # > 0: resumed mid-epoch
    start: float  # time.time() at its start (earlier by the time it had run before a resume point)
    lr: float  # the last step's
    monitor: StepMonitor
    key_spread: float = math.nan  # the last log line's, recorded with the epoch
    grad_ratio: dict = dataclasses.field(default_factory=dict)
    done: int = 0  # steps of this epoch completed


class PretrainRun:
    """One run, as a sequence of steps: resolve (here) -> build -> resume -> open_monitoring -> train_epochs
    -> summary. The attributes are what the steps hand on to each other."""

    def __init__(self, cfg: PretrainConfig, procs: Processes, out: Path):
        world, device = procs.world_size, procs.device
        self.procs, self.out, self.device, self.is_main = procs, out, device, procs.is_main
        self.batch = cfg.batch_size // world
        self.bn_splits = resolve_bn_splits(cfg.bn_splits, self.batch, world)
        if cfg.seed is None:  # drawn on the main process, recorded in the config
            seed = torch.tensor([int.from_bytes(os.urandom(4), "little") >> 1], device=device)
            if world > 1:
                dist.broadcast(seed, src=0)
            cfg = dataclasses.replace(cfg, seed=int(seed.item()))
        self.cfg, self.seed = cfg, cfg.seed
        self.workers = cfg.workers if cfg.workers is not None else default_workers(procs.local_world_size)
        self.autocast_dtype = torch.bfloat16 if cfg.precision == "bf16" else None
        if self.autocast_dtype is not None and device.type == "cpu" and not cpu_has_fast_bf16():
            log.warning(
                "--precision bf16 on a CPU without AVX-512-bf16/AMX: oneDNN cannot run bf16 "
                "convolutions here and PyTorch falls back to a slow path (measured ~8x slower than fp32 "
                "on an AVX2 EPYC). Use --precision fp32 on this machine."
            )
        self.config = run_config(cfg, self.bn_splits, world)
        self.variant = pretrain_variant(self.config).to_record()  # a dict: checkpoints and metrics.json carry it
        self.ln_k1 = math.log(cfg.moco_k + 1)
        self.start_epoch, self.start_step, self.epoch_progress, self.history = 0, 0, None, []
        self.bad_files: set[int] = set()
        self.writer = None
        self.last_ckpt = None

    def build(self):
        """The loader, the model (same initial weights and queue on every process) and the optimizer."""
        cfg, world, device = self.cfg, self.procs.world_size, self.device
        on_device = colour_on_device(cfg.augment_on, device)
        self.idle_workers = idle_loader_workers(cfg.loader_priority, device)
        self.loader = build_loader(
            cfg.data,
            cfg.image_size,
            cfg.aug_plus,
            self.seed,
            self.batch,
            self.workers,
            device,
            self.procs.rank,
            world,
            colour_on_device=on_device,
            idle_workers=self.idle_workers,
        )
        self.view_batch = ViewBatch(device, cfg.aug_plus, on_device, cfg.channels_last)
        self.n_images = len(self.loader.dataset)
        if self.n_images // world < self.batch:
            raise UserError(f"{cfg.data}/train has {self.n_images} images, fewer than the batch size {cfg.batch_size}")
        if cfg.moco_k > K_FRACTION_WARN * self.n_images:
            log.warning(
                "--moco-k %d is %.0f%% of the %d training images (more than %.0f%%): the queue "
                "then holds older keys of the same images as negatives and training tends to stall at "
                "loss ~ ln(K+1) = %.2f. Use K <= %d or more images.",
                cfg.moco_k,
                100 * cfg.moco_k / self.n_images,
                self.n_images,
                100 * K_FRACTION_WARN,
                self.ln_k1,
                int(K_FRACTION_WARN * self.n_images),
            )
        self.steps_per_epoch = len(self.loader)
        torch.manual_seed(self.seed)  # same initial weights and queue on every process
        self.model = build_model(cfg, self.bn_splits).to(device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if cfg.compile:
            if device.type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
                raise UserError(
                    "--compile on CPU needs a C++ compiler (g++ or clang++) on PATH: install one or drop --compile"
                )
            compile_encoders(self.model)
        self.optimizer = build_optimizer(self.model, cfg, device)

    def resume(self, ckpt: dict | None):
        """Continue from a checkpoint or resume point (weights, optimizer, history, progress), then wrap in DDP."""
        cfg, device, spe = self.cfg, self.device, self.steps_per_epoch
        if ckpt is not None:
            try:
                self.model.load_state_dict(strip_prefix(ckpt["state_dict"]))
                self.optimizer.load_state_dict(ckpt["optimizer"])
            except (RuntimeError, ValueError, KeyError) as e:
                raise UserError(f"cannot resume {cfg.resume}: {last_line(e)[:300]}") from None
            for group in self.optimizer.param_groups:  # implementation choice of this machine, not of the checkpoint
                group.update(sgd_implementation(device))
            self.start_epoch = int(ckpt["epoch"])
            self.history = list(ckpt.get("history") or [])
            self.start_step = int(ckpt.get("step_in_epoch") or 0)  # a resume point: steps into the next epoch
            if self.start_step:
                self.epoch_progress = ckpt["epoch_progress"]
                if self.epoch_progress["steps_per_epoch"] != spe:
                    raise UserError(
                        f"{cfg.resume} stopped at step {self.start_step} of "
                        f"{self.epoch_progress['steps_per_epoch']} steps per epoch but this run has {spe} "
                        f"(other data or batch size): resume from a checkpoint_XXXX.pth.tar instead"
                    )
            log.info(
                "resumed %s: %d of %d epochs done%s",
                cfg.resume,
                self.start_epoch,
                cfg.epochs,
                f", and step {self.start_step}/{spe} of epoch {self.start_epoch + 1}" if self.start_step else "",
            )
            if "config" not in ckpt:
                log.warning(
                    "%s has no stored config (an official checkpoint): arch, MLP, dim and K were "
                    "read off its tensors; aug+, cos, T, lr and epochs come from the flags",
                    cfg.resume,
                )
        self.model_ddp = (
            torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
            )
            if self.procs.distributed
            else self.model
        )

    def open_monitoring(self):
        """kNN loaders; on the main process the tensorboard writer, the run's first log line and config.json."""
        cfg = self.cfg
        self.knn = knn_loaders(cfg.knn_data, cfg.image_size, self.batch, self.workers) if cfg.knn_data else None
        if self.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(
                str(self.out / "tb"), purge_step=self.start_epoch * self.steps_per_epoch + self.start_step + 1
            )
            log.info(
                "MoCo %s: %s, %d images, %d steps/epoch of %d (%d per process x %d), K %d, m %g, T %g, "
                "BN splits %d, %s%s, seed %d, device %s, %d workers%s, colour augmentations %s -> %s",
                self.variant["name"],
                cfg.arch,
                self.n_images,
                self.steps_per_epoch,
                cfg.batch_size,
                self.batch,
                self.procs.world_size,
                cfg.moco_k,
                cfg.moco_m,
                cfg.moco_t,
                self.bn_splits,
                cfg.precision,
                (" channels_last" if cfg.channels_last else "") + (" compiled" if cfg.compile else ""),
                self.seed,
                self.device,
                self.workers,
                " (idle priority)" if self.idle_workers and self.workers else "",
                "on the device" if self.view_batch.colour_on_device else "in the loader",
                self.out,
            )
            log.info("%s", checkpoint_policy(cfg))
            atomic_write_json(self.out / "config.json", self.config)
        self.last_ckpt = find_latest_checkpoint(self.out) if self.is_main else None

    def train_epochs(self, bar_active: bool):
        cfg, spe = self.cfg, self.steps_per_epoch
        self.bar = tqdm(
            total=(cfg.epochs - self.start_epoch) * spe - self.start_step,
            unit="step",
            dynamic_ncols=True,
            disable=not bar_active,
            smoothing=0.05,
        )
        self.run_start, self.steps_done = time.time(), 0
        # what the (resumed) weights already hold
        self.branch_gain = residual_branch_gain(cfg, self.start_epoch + self.start_step / spe)
        self.points = ResumePoints(self)
        try:
            for epoch in range(self.start_epoch, cfg.epochs):
                ep = self._begin_epoch(epoch)
                self._run_steps(ep)
                self._end_epoch(ep)
        finally:
            self.points.close()
            self.bar.close()
            if self.writer:
                self.writer.close()

    def _begin_epoch(self, epoch: int) -> EpochState:
        cfg = self.cfg
        first_step = self.start_step if epoch == self.start_epoch else 0
        ep = EpochState(epoch, first_step, time.time(), cfg.epoch_lr(epoch), None)
        for group in self.optimizer.param_groups:
            group["lr"] = ep.lr
        self.loader.sampler.set_epoch(epoch, skip=first_step * self.batch)
        torch.manual_seed(derive_seed(self.seed, epoch, self.procs.rank, 1))  # shuffle-BN permutations of this epoch
        self.model_ddp.train()
        self.bar.set_description(f"epoch {epoch + 1}/{cfg.epochs}")
        ep.monitor = StepMonitor(self.device, cfg.batch_size)
        if first_step:  # resumed mid-epoch: what the epoch had accumulated, and its random state
            progress = self.epoch_progress
            ep.start -= progress["elapsed_s"]
            ep.monitor.epoch_totals = list(progress["totals"])
            ep.key_spread, ep.grad_ratio = progress["key_spread"], progress["grad_ratio"]
            self.bad_files |= set(progress["bad_files"])
            torch.set_rng_state(progress["rng_cpu"])
            if self.device.type == "cuda" and progress["rng_cuda"] is not None:
                torch.cuda.set_rng_state(progress["rng_cuda"], self.device)
        ep.done = first_step
        return ep

    def _run_steps(self, ep: EpochState):
        """The epoch's steps, with mid-epoch resume points; errors of the loader's workers become one line."""
        try:
            for step, ((views, params), unreadable) in enumerate(self.loader, start=ep.first_step):
                at_log = self._step(ep, step, *self.view_batch(views, params), unreadable)
                # Mid-epoch resume points: every process must take the same decision, so with several
                # they meet only at log steps (where they sync anyway); the epoch's end has its own.
                if step + 1 < self.steps_per_epoch and (not self.procs.distributed or at_log):
                    self.points.between_steps(ep)
        except UserError as e:
            if isinstance(e, TrainingDiverged):
                raise
            raise UserError(last_line(e)) from None
        except Exception:
            # A Ctrl-C also reaches the loader's workers, which exit: the next batch then fails before
            # the step above could save. Save the steps completed so far and stop as asked.
            if not self.points.stopping_in_one_process:
                raise
            raise self.points.stopped_mid_epoch(ep, self.points.save(ep)) from None

    def _step(self, ep: EpochState, step: int, im_q, im_k, unreadable) -> bool:
        """One training step (lr warm-up, residual branch ramp, MoCo step); logs every --print-freq steps
        and at the epoch's end. Returns whether it logged."""
        cfg, spe = self.cfg, self.steps_per_epoch
        _count_unreadable(unreadable, self.bad_files, self.loader.dataset, self.n_images // self.procs.world_size)
        if ep.index < cfg.warmup_epochs:
            ep.lr = lr_at_step(cfg, ep.index, step, spe)
            for group in self.optimizer.param_groups:
                group["lr"] = ep.lr
        gain = residual_branch_gain(cfg, ep.index + (step + 1) / spe)
        if gain != self.branch_gain:  # both encoders, so the keys stay the query's momentum average
            for encoder in (self.model.encoder_q, self.model.encoder_k):
                multiply_residual_branches(encoder, gain / self.branch_gain)
            self.branch_gain = gain
        ep.monitor.add(*train_step(self.model_ddp, self.optimizer, im_q, im_k, self.autocast_dtype))
        ep.done = step + 1
        self.steps_done += 1
        self.bar.update(1)
        at_log = ep.monitor.steps == cfg.print_freq or step + 1 == spe
        if at_log:
            self._log_window(ep, step)
        return at_log

    def _log_window(self, ep: EpochState, step: int):
        cfg, spe, ln_k1 = self.cfg, self.steps_per_epoch, self.ln_k1
        w = ep.monitor.read(self.model.queue, stage_grad_ratios(self.model.encoder_q))  # the only host sync
        _check_finite(w, ep.index, step + 1, self.last_ckpt)
        remaining = (cfg.epochs - ep.index) * spe - step - 1
        eta = (time.time() - self.run_start) / self.steps_done * remaining
        self.bar.set_postfix_str(
            f"loss {w['loss']:.3f} (ln(K+1) {ln_k1:.2f}) acc1 {w['acc1']:.1f}% "
            f"lr {ep.lr:.4g} {w['images_per_s']:.1f} img/s",
            refresh=False,
        )
        log.info(
            "epoch %d/%d step %d/%d  loss %.4f (ln(K+1) = %.2f)  acc1 %.2f%%  key spread %.3f  "
            "lr %.5g  %.1f img/s  eta %s",
            ep.index + 1,
            cfg.epochs,
            step + 1,
            spe,
            w["loss"],
            ln_k1,
            w["acc1"],
            w["key_spread"],
            ep.lr,
            w["images_per_s"],
            format_seconds(eta),
            extra={"step_line": True},
        )
        ep.key_spread, ep.grad_ratio = w["key_spread"], w["grad_ratio"]
        if self.writer:
            gstep = ep.index * spe + step + 1
            for tag in ("loss", "acc1", "key_spread", "images_per_s"):
                self.writer.add_scalar(f"train/{tag}", w[tag], gstep)
            for stage, ratio in w["grad_ratio"].items():
                self.writer.add_scalar(f"grad_ratio/{stage}", ratio, gstep)
            self.writer.add_scalar("train/lr", ep.lr, gstep)
            self.writer.add_scalar("train/ln_K_plus_1", ln_k1, gstep)

    def _end_epoch(self, ep: EpochState):
        """Metrics over all processes, kNN, the epoch's log lines, checkpoint, metrics.json; stop if asked."""
        cfg, epoch = self.cfg, ep.index
        self.history.append(self._epoch_entry(ep))
        stop_now = self.points.stop_after_epoch(epoch)
        if self.is_main:
            self._report_epoch(self.history[-1])
            if (epoch + 1) % cfg.save_every == 0 or epoch + 1 == cfg.epochs or stop_now:
                self.last_ckpt = save_checkpoint(
                    self.out / checkpoint_name(epoch + 1),
                    model=self.model,
                    optimizer=self.optimizer,
                    epochs_done=epoch + 1,
                    arch=cfg.arch,
                    config=self.config,
                    variant=self.variant,
                    seed=self.seed,
                    history=self.history,
                )
                prune_checkpoints(self.out, cfg)
                self.points.superseded()
            write_metrics(self.out, self.config, self.variant, self.history, self.last_ckpt, None)
        if stop_now:
            barrier(self.procs.world_size)
            raise self.points.stop.interrupted(
                f"stopped after epoch {epoch + 1} of {cfg.epochs}, checkpoint "
                f"{self.last_ckpt or self.out / checkpoint_name(epoch + 1)}; continue with --resume auto"
            )

    def _epoch_entry(self, ep: EpochState) -> dict:
        cfg, epoch = self.cfg, ep.index
        loss_mean, acc1_mean = ep.monitor.epoch_means(self.procs.world_size)
        entry = {
            "epoch": epoch + 1,
            "loss": loss_mean,
            "acc1": acc1_mean,
            "lr": ep.lr,
            "ln_k_plus_1": self.ln_k1,
            "key_spread": ep.key_spread,
            "grad_ratio": ep.grad_ratio,
            "images_per_s": self.steps_per_epoch * cfg.batch_size / (time.time() - ep.start),
            "unreadable_images": len(self.bad_files),
            "residual_branch_scale": residual_branch_scales(self.model.encoder_q),
        }
        if self.knn is not None and ((epoch + 1) % cfg.knn_every == 0 or epoch + 1 == cfg.epochs):
            entry["knn_top1"] = knn_top1(
                self.model.encoder_q,
                self.knn["train"],
                self.knn["val"],
                self.knn["num_classes"],
                self.device,
                cfg.knn_k,
                cfg.knn_t,
                self.autocast_dtype,
                cfg.channels_last,
            )
        entry["time_s"] = time.time() - ep.start
        return entry

    def _report_epoch(self, entry: dict):
        """The epoch's log lines and tensorboard scalars (main process)."""
        cfg, ln_k1, epoch = self.cfg, self.ln_k1, entry["epoch"] - 1
        log.info(
            "epoch %d/%d done in %s: loss %.4f (ln(K+1) = %.2f), acc1 %.2f%%%s, %.1f img/s",
            epoch + 1,
            cfg.epochs,
            format_seconds(entry["time_s"]),
            entry["loss"],
            ln_k1,
            entry["acc1"],
            f", kNN top-1 {entry['knn_top1']:.2f}%" if "knn_top1" in entry else "",
            entry["images_per_s"],
        )
        if cfg.residual_bn_ramp:
            log.info(
                "residual branch scale (mean |last BN scale|) %s",
                "  ".join(f"{k} {v:.3f}" for k, v in entry["residual_branch_scale"].items()),
            )
        if entry["key_spread"] < COLLAPSED_SPREAD:
            log.warning(
                "epoch %d: the keys have collapsed (key spread %.3f; 1 = uniform, 0 = one point): "
                "the projection maps nearly every image to the same direction, so the loss stays "
                "near ln(K+1) = %.2f and a high acc1 only means the fresh positive beats older "
                "queue keys. See results/claim-in-miniature/lab-notes.md, 'Collapse'.",
                epoch + 1,
                entry["key_spread"],
                ln_k1,
            )
        for tag in ("loss", "acc1", "key_spread", "images_per_s", "knn_top1"):
            if tag in entry:
                self.writer.add_scalar(f"epoch/{tag}", entry[tag], epoch + 1)
        self.writer.flush()

    def summary(self) -> dict:
        """The final link, run record and metrics (main process); a finished run resumed does nothing more."""
        cfg = self.cfg
        if not self.is_main:
            return {"rank": self.procs.rank}
        last_ckpt = self.last_ckpt
        if self.start_epoch >= cfg.epochs:
            log.info("%s is already at epoch %d of %d: nothing to train", cfg.resume, self.start_epoch, cfg.epochs)
            if already_finished(self.out) or not self.history:  # (no history: an official checkpoint, not our run)
                return {
                    "checkpoint": str(self.out / FINAL_NAME) if (self.out / FINAL_NAME).is_file() else cfg.resume,
                    "history": self.history,
                }
            last_ckpt = Path(cfg.resume)  # finish what an interrupted run left undone (final link, record)
        return finish_run(self.out, last_ckpt, self.config, self.variant, self.history, self.seed)


class ResumePoints:
    """Mid-epoch resume points of a run: on Ctrl-C / SIGTERM (a resume point after the step, every process
    agreeing on which, then stop) and every --checkpoint-minutes. Only the newest is kept, and none once a
    checkpoint_XXXX lies beyond them."""

    def __init__(self, run: PretrainRun):
        self.run = run
        self.stop = StopRequest("saving a resume point after this step, then stopping").install()
        self.last_save = time.monotonic()

    def close(self):
        self.stop.restore()

    @property
    def stopping_in_one_process(self) -> bool:
        """A signal asked to stop a single-process run (and no second one asked to stop at once)."""
        return self.stop.requested and not self.stop.aborted and not self.run.procs.distributed

    def between_steps(self, ep: EpochState):
        """After a step: save a resume point if a process was signalled (then stop) or one is due."""
        run, minutes = self.run, self.run.cfg.checkpoint_minutes
        timed = run.is_main and minutes > 0 and time.monotonic() - self.last_save >= 60 * minutes
        stop_now, save_now = any_process([self.stop.requested, timed], run.procs.world_size, run.device)
        if stop_now or save_now:
            path = self.save(ep)
            self.last_save = time.monotonic()
            if stop_now:
                barrier(run.procs.world_size)  # nobody exits while the main process writes
                raise self.stopped_mid_epoch(ep, path)

    def save(self, ep: EpochState) -> Path | None:
        """Everything needed to continue after step `ep.done` of the epoch exactly as if never stopped (written
        by the main process; the path there, None elsewhere)."""
        run, epoch, done = self.run, ep.index, ep.done
        if ep.monitor.steps:  # fold the steps since the last log line into the epoch totals (one process only)
            _check_finite(
                ep.monitor.read(run.model.queue, stage_grad_ratios(run.model.encoder_q)), epoch, done, run.last_ckpt
            )
        if not run.is_main:
            return None
        path = save_checkpoint(
            run.out / resume_point_name(epoch, done),
            model=run.model,
            optimizer=run.optimizer,
            epochs_done=epoch,
            arch=run.cfg.arch,
            config=run.config,
            variant=run.variant,
            seed=run.seed,
            history=run.history,
            mid_epoch={
                "step_in_epoch": done,
                "epoch_progress": {
                    "steps_per_epoch": run.steps_per_epoch,
                    "totals": list(ep.monitor.epoch_totals),
                    "elapsed_s": time.time() - ep.start,
                    "key_spread": ep.key_spread,
                    "grad_ratio": ep.grad_ratio,
                    "bad_files": sorted(run.bad_files),
                    "rng_cpu": torch.get_rng_state(),
                    "rng_cuda": torch.cuda.get_rng_state(run.device) if run.device.type == "cuda" else None,
                },
            },
        )
        remove_resume_points(run.out, keep=path)
        log.info("resume point %s (epoch %d, step %d/%d)", path, epoch + 1, done, run.steps_per_epoch)
        return path

    def superseded(self):
        """A checkpoint was just written: every resume point lies behind it, and the timer starts again."""
        remove_resume_points(self.run.out)
        self.last_save = time.monotonic()

    def stop_after_epoch(self, epoch: int) -> bool:
        """Whether any process was signalled and epochs remain (then the epoch's checkpoint is the stop's)."""
        run = self.run
        stop_now = (
            any_process([self.stop.requested], run.procs.world_size, run.device)[0] and epoch + 1 < run.cfg.epochs
        )
        if self.stop.requested and epoch + 1 == run.cfg.epochs and run.is_main:
            log.warning("that was the last epoch: the run finishes (send the signal again to stop at once)")
        return stop_now

    def stopped_mid_epoch(self, ep: EpochState, path) -> BaseException:
        return self.stop.interrupted(
            f"stopped after step {ep.done}/{self.run.steps_per_epoch} of epoch "
            f"{ep.index + 1}, resume point {path}; continue with --resume auto"
        )


def _check_finite(window: dict, epoch: int, step: int, last_ckpt):
    if window["nonfinite"]:
        raise TrainingDiverged(
            f"loss became NaN/Inf in epoch {epoch + 1} (step {step}); stopped. "
            f"Last good checkpoint: {last_ckpt or 'none yet'}. Try a lower --lr or --precision fp32"
        )


def _count_unreadable(unreadable: torch.Tensor, bad_files: set, dataset, n_local: int):
    """Track files that could not be read (replaced by a neighbour); stop above the allowed fraction."""
    bad = unreadable[unreadable >= 0]
    if not bad.numel():
        return
    new = set(bad.tolist()) - bad_files
    for i in sorted(new):
        log.warning("unreadable image skipped: %s", dataset.samples[i][0])
    bad_files |= new
    if len(bad_files) > MAX_UNREADABLE_FRACTION * n_local:
        first = dataset.samples[min(bad_files)][0]
        raise UserError(
            f"{len(bad_files)} unreadable images (more than {MAX_UNREADABLE_FRACTION:.0%} of "
            f"{n_local}), e.g. {first}: fix or remove them"
        )
