"""The pretraining loop: devices and processes, data, schedule, checkpoints, resume, monitoring.

One training step (`train_step`) is shared with the throughput benchmark. It never waits for the device:
loss and accuracy are accumulated on the device and read back every `--print-freq` steps only.
"""
from __future__ import annotations

import contextlib
import datetime
import json
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
from mocoeval.runtime.errors import UserError
from mocoeval.runtime.fileio import atomic_write_json, check_output_dir, sha256_file
from mocoeval.results.store import pretrain_variant, write_run_record
from mocoeval.pretrain.augment import TwoCropsTransform, eval_transform, moco_transform
from mocoeval.pretrain.builder import MoCo, contrastive_loss, contrastive_top1, key_spread, resnet_encoder
from mocoeval.pretrain.residual_scaling import (multiply_residual_branches, residual_branch_gain,
                                                residual_branch_scales)
from mocoeval.runtime.stop_request import StopRequest, any_process
from mocoeval.pretrain.checkpoint import (CHECKPOINT_RE, FINAL_NAME, checkpoint_name, find_latest_checkpoint, find_resume_checkpoint,
                         remove_resume_points, resume_point_name, save_checkpoint, strip_prefix)
from mocoeval.pretrain.data import (MAX_UNREADABLE_FRACTION, EpochSampler, LabelledImageFolder, TwoViewImageFolder,
                   check_train_folder, derive_seed)
from mocoeval.pretrain.knn import knn_top1

log = logging.getLogger("mocoeval.pretrain")

K_FRACTION_WARN = 0.10  # warn when the queue holds more than 10% of the training set


class TrainingDiverged(UserError):
    """The loss became NaN or Inf."""


# ---------------------------------------------------------------- building blocks (shared with the benchmark)

def build_model(args, bn_splits: int = 1) -> MoCo:
    """MoCo with the flags' architecture; BN layers split into `bn_splits` sub-batches in training."""
    return MoCo(lambda: resnet_encoder(args.arch, args.moco_dim, args.mlp, bn_splits, args.residual_bn_init),
                dim=args.moco_dim, K=args.moco_k, m=args.moco_m, T=args.moco_t)


def compile_encoders(model: MoCo) -> MoCo:
    """torch.compile each encoder in place (nn.Module.compile): parameter and buffer names, hence checkpoints,
    stay those of the plain model. The queue, shuffle and loss stay eager: they are cheap and data-dependent."""
    model.encoder_q.compile()
    model.encoder_k.compile()
    return model


def build_optimizer(model: torch.nn.Module, args, device: torch.device) -> torch.optim.SGD:
    """SGD over all parameters, as the official code (the key encoder's never get gradients, so they
    are skipped; keeping them keeps official optimizer states loadable). Weight decay on every tensor."""
    return torch.optim.SGD(model.parameters(), args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                           fused=True if device.type == "cuda" else None)


def build_loader(data_dir, image_size: int, aug_plus: bool, seed: int, batch: int, workers: int,
                 device: torch.device, rank: int = 0, world: int = 1) -> torch.utils.data.DataLoader:
    """Two augmented views per image of DATA_DIR/train, batches of `batch` per process; the sampler
    (`loader.sampler.set_epoch`) fixes the order and every view from (seed, epoch, index)."""
    dataset = TwoViewImageFolder(check_train_folder(data_dir),
                                 TwoCropsTransform(moco_transform(image_size, aug_plus)), seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch, sampler=EpochSampler(len(dataset), seed, rank, world), num_workers=workers,
        drop_last=True, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed))  # its own generator: the global one stays per-epoch seeded


def lr_at_epoch(args, epoch: int) -> float:
    """Cosine (v2): lr * 0.5 * (1 + cos(pi * epoch / epochs)); step (v1): lr * 0.1 per milestone passed."""
    if args.cos:
        return args.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / args.epochs))
    return args.lr * 0.1 ** sum(epoch >= milestone for milestone in args.schedule)


def lr_at_step(args, epoch: int, step: int, steps_per_epoch: int) -> float:
    """The epoch's scheduled lr, times a linear ramp over the first --warmup-epochs epochs (counted in steps,
    so the first step already trains: lr * 1 / (warm-up steps))."""
    lr = lr_at_epoch(args, epoch)
    progress = epoch + (step + 1) / steps_per_epoch
    if progress < args.warmup_epochs:
        lr *= progress / args.warmup_epochs
    return lr


def resolve_bn_splits(requested: int, per_process_batch: int, world_size: int) -> int:
    """0 = auto: one BN group per 32 images (the official 8 GPUs x 32), and at least 2 in a single
    process, since one BN group over the whole batch lets the model cheat through batch statistics."""
    if requested:
        if per_process_batch % requested:
            raise UserError(f"--bn-splits {requested} does not divide the per-process batch {per_process_batch}")
        return requested
    splits = max(per_process_batch // 32, 2 if world_size == 1 else 1)
    while splits > 1 and per_process_batch % splits:
        splits -= 1
    return splits


def autocast_context(device: torch.device, autocast_dtype):
    return torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()


def train_step(model, optimizer, im_q, im_k, autocast_dtype=None):
    """One MoCo step; returns (loss, top-1) as device tensors, without synchronising."""
    with autocast_context(im_q.device, autocast_dtype):
        logits = model(im_q, im_k)
    loss = contrastive_loss(logits)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), contrastive_top1(logits.detach())


COLLAPSED_SPREAD = 0.1  # key spread below this: warn that the keys have collapsed (1 = uniform on the sphere)
GRAD_STAGES = ("stem", "layer1", "layer2", "layer3", "layer4", "fc")  # torchvision ResNet; fc = projection head


def stage_grad_ratios(encoder: torch.nn.Module) -> torch.Tensor:
    """Gradient norm / weight norm of each stage in GRAD_STAGES over its tensors that have a gradient (the
    relative size of an SGD step before lr and weight decay; NaN for a stage without any), one device tensor,
    no sync. Shows which part of the network moves: e.g. at 64 px a fresh ResNet-50's stem gets a first-step
    gradient ten times its weights (lab notes, 'Where it starts')."""
    grads = {stage: ([], []) for stage in GRAD_STAGES}
    for name, p in encoder.named_parameters():
        stage = name.split(".")[0]
        stage = "stem" if stage in ("conv1", "bn1") else stage
        if p.grad is not None and stage in grads:
            grads[stage][0].append(p.grad)
            grads[stage][1].append(p.detach())
    ratios = []
    for g, w in grads.values():
        if not g:
            ratios.append(torch.tensor(math.nan, device=next(encoder.parameters()).device))
            continue
        g_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(g)))
        w_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(w)))
        ratios.append(g_norm.float() / w_norm.float().clamp_min(1e-12))
    return torch.stack(ratios)


class StepMonitor:
    """Loss / top-1 / non-finite count summed on the device; `read(queue, grad_ratios)` (the one host sync)
    returns the window's means, images/s, the queue's key spread and the last step's per-stage gradient ratios,
    and folds them into the epoch totals."""

    def __init__(self, device: torch.device, images_per_step: int):
        self.device, self.images_per_step = device, images_per_step
        self.window = torch.zeros(3, device=device)
        self.steps, self.start = 0, time.time()
        self.epoch_totals = [0.0, 0.0, 0]  # loss sum, top-1 sum, steps

    def add(self, loss: torch.Tensor, acc1: torch.Tensor):
        self.window += torch.stack([loss, acc1, (~torch.isfinite(loss)).float()])
        self.steps += 1

    def read(self, queue: torch.Tensor, grad_ratios: torch.Tensor) -> dict:
        loss_sum, acc_sum, nonfinite, spread, *ratios = torch.cat(
            [self.window, key_spread(queue).reshape(1), grad_ratios.to(self.window)]).tolist()
        now = time.time()
        out = {"loss": loss_sum / self.steps, "acc1": 100 * acc_sum / self.steps, "nonfinite": nonfinite,
               "key_spread": spread, "grad_ratio": dict(zip(GRAD_STAGES, ratios)),
               "images_per_s": self.steps * self.images_per_step / max(now - self.start, 1e-9)}
        self.epoch_totals = [self.epoch_totals[0] + loss_sum, self.epoch_totals[1] + acc_sum,
                             self.epoch_totals[2] + self.steps]
        self.window.zero_()
        self.steps, self.start = 0, now
        return out

    def epoch_means(self, world_size: int = 1) -> tuple[float, float]:
        """(mean loss, mean top-1 %) of the epoch over every process."""
        totals = torch.tensor(self.epoch_totals, dtype=torch.float64, device=self.device)
        if world_size > 1:
            dist.all_reduce(totals)
        loss_sum, acc_sum, steps = totals.tolist()
        return loss_sum / steps, 100 * acc_sum / steps


# ---------------------------------------------------------------- processes and devices

def setup_distributed(device_arg: str):
    """(device, rank, world_size, local_world_size). torchrun sets WORLD_SIZE>1: DDP with NCCL on GPUs,
    gloo on CPU. A single process never creates a process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    want_cuda = device_arg.startswith("cuda") or (device_arg == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise UserError(f"--device {device_arg}: CUDA is not available on this machine (use --device cpu)")
    if device_arg not in ("auto", "cpu") and not device_arg.startswith("cuda"):
        raise UserError(f"--device must be auto, cpu, cuda or cuda:N, got {device_arg!r}")
    if world > 1:
        device = torch.device("cuda", local_rank) if want_cuda else torch.device("cpu")
        if want_cuda:
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if want_cuda else "gloo", device_id=device if want_cuda else None)
        return device, dist.get_rank(), world, local_world
    device = torch.device("cuda" if device_arg == "auto" else device_arg) if want_cuda else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device, 0, 1, 1


def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN runs bf16 convolutions natively on this CPU (AVX-512-bf16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def default_workers(local_world: int) -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(32, cpus) // max(local_world, 1))


# ---------------------------------------------------------------- logging

class _TqdmHandler(logging.StreamHandler):
    """Console handler that prints above a live progress bar; step lines only when there is no bar."""

    def __init__(self, bar_active: bool):
        super().__init__(sys.stderr)
        self.bar_active = bar_active

    def emit(self, record):
        if self.bar_active and getattr(record, "step_line", False):
            return
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never kill training
            self.handleError(record)


@contextlib.contextmanager
def _logging(output_dir: Path | None, is_main: bool, bar_active: bool):
    handlers = []
    if is_main:
        console = _TqdmHandler(bar_active)
        console.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S"))
        handlers.append(console)
        if output_dir is not None:
            f = logging.FileHandler(output_dir / "log.txt")
            f.setFormatter(logging.Formatter("[%(asctime)s %(levelname)s] %(message)s", "%Y-%m-%d %H:%M:%S"))
            handlers.append(f)
    root = logging.getLogger("mocoeval")
    old_level, old_propagate = root.level, root.propagate
    root.setLevel(logging.INFO)
    root.propagate = False
    for h in handlers:
        root.addHandler(h)
    try:
        yield
    finally:
        for h in handlers:
            root.removeHandler(h)
            h.close()
        root.setLevel(old_level)
        root.propagate = old_propagate


def _hms(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


def _one_line(e: BaseException) -> str:
    """Errors raised inside loader workers come back with the worker's traceback: keep the last line."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    last = lines[-1] if lines else type(e).__name__
    return last.split("UserError: ", 1)[-1]


# ---------------------------------------------------------------- the run

def run_config(args, bn_splits: int, world_size: int) -> dict:
    """The resolved flags stored in checkpoints and run records (argparse dest names, JSON-able)."""
    cfg = {k: v for k, v in vars(args).items() if k not in ("config",)}
    cfg.update(bn_splits_effective=bn_splits, world_size=world_size)
    return cfg


def train(args, resume_ckpt: dict | None = None) -> dict:
    """Run (or continue) pretraining as the resolved `args` say; returns the final summary."""
    check_train_folder(args.data)  # bad input fails before anything is created
    check_output_dir(args.output_dir)
    if args.knn_data:
        check_imagefolder(args.knn_data, splits=("train", "val"))
    device, rank, world, local_world = setup_distributed(args.device)
    is_main = rank == 0
    out = Path(args.output_dir)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
    bar_active = is_main and sys.stderr.isatty()
    with _logging(out if is_main else None, is_main, bar_active):
        try:
            return _train(args, resume_ckpt, device, rank, world, local_world, out, bar_active)
        finally:
            if world > 1 and dist.is_initialized():
                dist.destroy_process_group()


def _train(args, resume_ckpt, device, rank, world, local_world, out: Path, bar_active: bool) -> dict:
    is_main = rank == 0
    if resume_ckpt is None and is_main and find_resume_checkpoint(out) is not None:
        raise UserError(f"{out} already holds checkpoints of a run: continue it with --resume auto, "
                        "or choose another --output-dir")
    if args.batch_size % world:
        raise UserError(f"--batch-size {args.batch_size} is not divisible by the {world} processes")
    batch = args.batch_size // world
    bn_splits = resolve_bn_splits(args.bn_splits, batch, world)
    if args.seed is None:
        seed = torch.tensor([int.from_bytes(os.urandom(4), "little") >> 1], device=device)
        if world > 1:
            dist.broadcast(seed, src=0)
        args.seed = int(seed.item())
    seed = args.seed
    workers = args.workers if args.workers is not None else default_workers(local_world)
    autocast_dtype = torch.bfloat16 if args.precision == "bf16" else None
    if autocast_dtype is not None and device.type == "cpu" and not cpu_has_fast_bf16():
        log.warning("WARNING: --precision bf16 on a CPU without AVX-512-bf16/AMX: oneDNN cannot run bf16 "
                    "convolutions here and PyTorch falls back to a slow path (measured ~8x slower than fp32 on "
                    "an AVX2 EPYC). Use --precision fp32 on this machine.")
    config = run_config(args, bn_splits, world)
    variant = pretrain_variant(config).to_record()  # a dict: checkpoints and metrics.json carry it
    ln_k1 = math.log(args.moco_k + 1)

    # ---- data
    loader = build_loader(args.data, args.image_size, args.aug_plus, seed, batch, workers, device, rank, world)
    dataset = loader.dataset
    n_images = len(dataset)
    if n_images // world < batch:
        raise UserError(f"{args.data}/train has {n_images} images, fewer than the batch size {args.batch_size}")
    if args.moco_k > K_FRACTION_WARN * n_images:
        log.warning("WARNING: --moco-k %d is %.0f%% of the %d training images (more than %.0f%%): the queue then "
                    "holds older keys of the same images as negatives and training tends to stall at loss ~ "
                    "ln(K+1) = %.2f. Use K <= %d or more images.", args.moco_k, 100 * args.moco_k / n_images,
                    n_images, 100 * K_FRACTION_WARN, ln_k1, int(K_FRACTION_WARN * n_images))
    sampler = loader.sampler
    steps_per_epoch = len(loader)

    # ---- model, optimizer, resume
    torch.manual_seed(seed)  # same initial weights and queue on every process
    model = build_model(args, bn_splits).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.compile:
        if device.type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
            raise UserError("--compile on CPU needs a C++ compiler (g++ or clang++) on PATH: "
                            "install one or drop --compile")
        compile_encoders(model)
    optimizer = build_optimizer(model, args, device)
    start_epoch, start_step, epoch_progress, history = 0, 0, None, []
    if resume_ckpt is not None:
        try:
            model.load_state_dict(strip_prefix(resume_ckpt["state_dict"]))
            optimizer.load_state_dict(resume_ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise UserError(f"cannot resume {args.resume}: {_one_line(e)[:300]}") from None
        for group in optimizer.param_groups:  # implementation choice of this machine, not of the checkpoint
            group["fused"], group["foreach"] = (True if device.type == "cuda" else None), None
        start_epoch = int(resume_ckpt["epoch"])
        history = list(resume_ckpt.get("history") or [])
        start_step = int(resume_ckpt.get("step_in_epoch") or 0)  # a resume point: steps into the next epoch
        if start_step:
            epoch_progress = resume_ckpt["epoch_progress"]
            if epoch_progress["steps_per_epoch"] != steps_per_epoch:
                raise UserError(f"{args.resume} stopped at step {start_step} of {epoch_progress['steps_per_epoch']} "
                                f"steps per epoch but this run has {steps_per_epoch} (other data or batch size): "
                                f"resume from a checkpoint_XXXX.pth.tar instead")
        log.info("resumed %s: %d of %d epochs done%s", args.resume, start_epoch, args.epochs,
                 f", and step {start_step}/{steps_per_epoch} of epoch {start_epoch + 1}" if start_step else "")
        if "config" not in resume_ckpt:
            log.warning("WARNING: %s has no stored config (an official checkpoint): arch, MLP, dim and K were "
                        "read off its tensors; aug+, cos, T, lr and epochs come from the flags", args.resume)
    model_ddp = (torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
        if world > 1 else model)

    knn = knn_loaders(args.knn_data, args.image_size, batch, workers) if args.knn_data else None
    writer = None
    if is_main:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(out / "tb"), purge_step=start_epoch * steps_per_epoch + start_step + 1)
        log.info("MoCo %s: %s, %d images, %d steps/epoch of %d (%d per process x %d), K %d, m %g, T %g, "
                 "BN splits %d, %s%s, seed %d, device %s, %d workers -> %s", variant["name"], args.arch, n_images,
                 steps_per_epoch, args.batch_size, batch, world, args.moco_k, args.moco_m, args.moco_t, bn_splits,
                 args.precision, (" channels_last" if args.channels_last else "")
                 + (" compiled" if args.compile else ""), seed, device, workers, out)
        atomic_write_json(out / "config.json", config)

    last_ckpt = find_latest_checkpoint(out) if is_main else None
    bar = tqdm(total=(args.epochs - start_epoch) * steps_per_epoch - start_step, unit="step", dynamic_ncols=True,
               disable=not bar_active, smoothing=0.05)
    bad_files: set[int] = set()
    run_start = time.time()
    steps_done = 0
    # what the (resumed) weights already hold
    branch_gain = residual_branch_gain(args, start_epoch + start_step / steps_per_epoch)
    # Ctrl-C / SIGTERM: a resume point after the step (every process agrees on which), then stop
    stop = StopRequest("saving a resume point after this step, then stopping")
    stop.install()
    last_resume_save = time.monotonic()

    def save_resume_point(epoch: int, done: int, monitor: StepMonitor, epoch_start: float, key_spread_now,
                          grad_ratio_now) -> Path | None:
        """Everything needed to continue after step `done` of `epoch` exactly as if never stopped (main only)."""
        if monitor.steps:  # fold the steps since the last log line into the epoch totals (one process only)
            _check_finite(monitor.read(model.queue, stage_grad_ratios(model.encoder_q)), epoch, done, last_ckpt)
        if not is_main:
            return None
        path = save_checkpoint(
            out / resume_point_name(epoch, done), model=model, optimizer=optimizer, epochs_done=epoch,
            arch=args.arch, config=config, variant=variant, seed=seed, history=history,
            mid_epoch={"step_in_epoch": done, "epoch_progress": {
                "steps_per_epoch": steps_per_epoch, "totals": list(monitor.epoch_totals),
                "elapsed_s": time.time() - epoch_start, "key_spread": key_spread_now, "grad_ratio": grad_ratio_now,
                "bad_files": sorted(bad_files), "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}})
        remove_resume_points(out, keep=path)
        log.info("resume point %s (epoch %d, step %d/%d)", path, epoch + 1, done, steps_per_epoch)
        return path

    try:
        for epoch in range(start_epoch, args.epochs):
            first_step = start_step if epoch == start_epoch else 0
            epoch_start = time.time()
            lr = lr_at_epoch(args, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            sampler.set_epoch(epoch, skip=first_step * batch)
            torch.manual_seed(derive_seed(seed, epoch, rank, 1))  # shuffle-BN permutations of this epoch
            model_ddp.train()
            bar.set_description(f"epoch {epoch + 1}/{args.epochs}")
            monitor = StepMonitor(device, args.batch_size)
            key_spread_now, grad_ratio_now = math.nan, {}  # the last log line's, recorded with the epoch
            if first_step:  # resumed mid-epoch: what the epoch had accumulated, and its random state
                epoch_start -= epoch_progress["elapsed_s"]
                monitor.epoch_totals = list(epoch_progress["totals"])
                key_spread_now, grad_ratio_now = epoch_progress["key_spread"], epoch_progress["grad_ratio"]
                bad_files |= set(epoch_progress["bad_files"])
                torch.set_rng_state(epoch_progress["rng_cpu"])
                if device.type == "cuda" and epoch_progress["rng_cuda"] is not None:
                    torch.cuda.set_rng_state(epoch_progress["rng_cuda"], device)
            done = first_step  # steps of this epoch completed
            try:
                for step, ((im_q, im_k), unreadable) in enumerate(loader, start=first_step):
                    _count_unreadable(unreadable, bad_files, dataset, n_images // world)
                    im_q = im_q.to(device, non_blocking=True)
                    im_k = im_k.to(device, non_blocking=True)
                    if args.channels_last:
                        im_q = im_q.contiguous(memory_format=torch.channels_last)
                        im_k = im_k.contiguous(memory_format=torch.channels_last)
                    if epoch < args.warmup_epochs:
                        lr = lr_at_step(args, epoch, step, steps_per_epoch)
                        for group in optimizer.param_groups:
                            group["lr"] = lr
                    gain = residual_branch_gain(args, epoch + (step + 1) / steps_per_epoch)
                    if gain != branch_gain:  # both encoders, so the keys stay the query's momentum average
                        for encoder in (model.encoder_q, model.encoder_k):
                            multiply_residual_branches(encoder, gain / branch_gain)
                        branch_gain = gain
                    monitor.add(*train_step(model_ddp, optimizer, im_q, im_k, autocast_dtype))
                    done = step + 1
                    steps_done += 1
                    bar.update(1)
                    at_log = monitor.steps == args.print_freq or step + 1 == steps_per_epoch
                    if at_log:
                        w = monitor.read(model.queue, stage_grad_ratios(model.encoder_q))  # the only host sync
                        _check_finite(w, epoch, step + 1, last_ckpt)
                        remaining = (args.epochs - epoch) * steps_per_epoch - step - 1
                        eta = (time.time() - run_start) / steps_done * remaining
                        bar.set_postfix_str(f"loss {w['loss']:.3f} (ln(K+1) {ln_k1:.2f}) acc1 {w['acc1']:.1f}% "
                                            f"lr {lr:.4g} {w['images_per_s']:.1f} img/s", refresh=False)
                        log.info("epoch %d/%d step %d/%d  loss %.4f (ln(K+1) = %.2f)  acc1 %.2f%%  key spread %.3f  "
                                 "lr %.5g  %.1f img/s  eta %s", epoch + 1, args.epochs, step + 1, steps_per_epoch,
                                 w["loss"], ln_k1, w["acc1"], w["key_spread"], lr, w["images_per_s"], _hms(eta),
                                 extra={"step_line": True})
                        key_spread_now, grad_ratio_now = w["key_spread"], w["grad_ratio"]
                        if writer:
                            gstep = epoch * steps_per_epoch + step + 1
                            for tag in ("loss", "acc1", "key_spread", "images_per_s"):
                                writer.add_scalar(f"train/{tag}", w[tag], gstep)
                            for stage, ratio in w["grad_ratio"].items():
                                writer.add_scalar(f"grad_ratio/{stage}", ratio, gstep)
                            writer.add_scalar("train/lr", lr, gstep)
                            writer.add_scalar("train/ln_K_plus_1", ln_k1, gstep)
                    # Mid-epoch resume points: every process must take the same decision, so with several
                    # they meet only at log steps (where they sync anyway); the epoch's end has its own.
                    if step + 1 < steps_per_epoch and (world == 1 or at_log):
                        timed = is_main and args.checkpoint_minutes > 0 and \
                            time.monotonic() - last_resume_save >= 60 * args.checkpoint_minutes
                        stop_now, save_now = any_process([stop.requested, timed], world, device)
                        if stop_now or save_now:
                            path = save_resume_point(epoch, done, monitor, epoch_start, key_spread_now,
                                                     grad_ratio_now)
                            last_resume_save = time.monotonic()
                            if stop_now:
                                _barrier(world)  # nobody exits while the main process writes
                                raise _stopped_mid_epoch(stop, epoch, done, steps_per_epoch, path)
            except UserError as e:
                if isinstance(e, TrainingDiverged):
                    raise
                raise UserError(_one_line(e)) from None
            except Exception:
                # A Ctrl-C also reaches the loader's workers, which exit: the next batch then fails before
                # the step above could save. Save the steps completed so far and stop as asked.
                if not (stop.requested and not stop.aborted and world == 1):
                    raise
                path = save_resume_point(epoch, done, monitor, epoch_start, key_spread_now, grad_ratio_now)
                raise _stopped_mid_epoch(stop, epoch, done, steps_per_epoch, path) from None

            # ---- end of epoch: metrics over all processes, kNN, checkpoint, metrics.json
            loss_mean, acc1_mean = monitor.epoch_means(world)
            entry = {"epoch": epoch + 1, "loss": loss_mean, "acc1": acc1_mean, "lr": lr, "ln_k_plus_1": ln_k1,
                     "key_spread": key_spread_now, "grad_ratio": grad_ratio_now,
                     "images_per_s": steps_per_epoch * args.batch_size / (time.time() - epoch_start),
                     "unreadable_images": len(bad_files),
                     "residual_branch_scale": residual_branch_scales(model.encoder_q)}
            if knn is not None and ((epoch + 1) % args.knn_every == 0 or epoch + 1 == args.epochs):
                entry["knn_top1"] = knn_top1(model.encoder_q, knn["train"], knn["val"], knn["num_classes"],
                                             device, args.knn_k, args.knn_t, autocast_dtype, args.channels_last)
            entry["time_s"] = time.time() - epoch_start
            history.append(entry)
            stop_now = any_process([stop.requested], world, device)[0] and epoch + 1 < args.epochs
            if stop.requested and epoch + 1 == args.epochs and is_main:
                log.warning("that was the last epoch: the run finishes (send the signal again to stop at once)")
            if is_main:
                log.info("epoch %d/%d done in %s: loss %.4f (ln(K+1) = %.2f), acc1 %.2f%%%s, %.1f img/s",
                         epoch + 1, args.epochs, _hms(entry["time_s"]), entry["loss"], ln_k1, entry["acc1"],
                         f", kNN top-1 {entry['knn_top1']:.2f}%" if "knn_top1" in entry else "",
                         entry["images_per_s"])
                if args.residual_bn_ramp:
                    log.info("residual branch scale (mean |last BN scale|) %s",
                             "  ".join(f"{k} {v:.3f}" for k, v in entry["residual_branch_scale"].items()))
                if entry["key_spread"] < COLLAPSED_SPREAD:
                    log.warning("epoch %d: the keys have collapsed (key spread %.3f; 1 = uniform, 0 = one point): "
                                "the projection maps nearly every image to the same direction, so the loss stays "
                                "near ln(K+1) = %.2f and a high acc1 only means the fresh positive beats older "
                                "queue keys. See results/claim-in-miniature/lab-notes.md, 'Collapse'.",
                                epoch + 1, entry["key_spread"], ln_k1)
                for tag in ("loss", "acc1", "key_spread", "images_per_s", "knn_top1"):
                    if tag in entry:
                        writer.add_scalar(f"epoch/{tag}", entry[tag], epoch + 1)
                writer.flush()
                if (epoch + 1) % args.save_every == 0 or epoch + 1 == args.epochs or stop_now:
                    last_ckpt = save_checkpoint(out / checkpoint_name(epoch + 1), model=model, optimizer=optimizer,
                                                epochs_done=epoch + 1, arch=args.arch, config=config,
                                                variant=variant, seed=seed, history=history)
                    _prune_checkpoints(out, args.keep_checkpoints)
                    remove_resume_points(out)  # all of them lie behind it
                    last_resume_save = time.monotonic()
                _write_metrics(out, config, variant, history, last_ckpt, None)
            if stop_now:
                _barrier(world)
                raise stop.interrupted(f"stopped after epoch {epoch + 1} of {args.epochs}, checkpoint "
                                       f"{last_ckpt or out / checkpoint_name(epoch + 1)}; continue with --resume auto")
    finally:
        stop.restore()
        bar.close()
        if writer:
            writer.close()

    if not is_main:
        return {"rank": rank}
    if start_epoch >= args.epochs:
        log.info("%s is already at epoch %d of %d: nothing to train", args.resume, start_epoch, args.epochs)
        if _already_finished(out) or not history:  # (no history: an official checkpoint, not our run)
            return {"checkpoint": str(out / FINAL_NAME) if (out / FINAL_NAME).is_file() else args.resume,
                    "history": history}
        last_ckpt = Path(args.resume)  # finish what an interrupted run left undone (final link, record)
    return _finish(out, last_ckpt, config, variant, history, seed)


def _check_finite(window: dict, epoch: int, step: int, last_ckpt):
    if window["nonfinite"]:
        raise TrainingDiverged(f"loss became NaN/Inf in epoch {epoch + 1} (step {step}); stopped. "
                               f"Last good checkpoint: {last_ckpt or 'none yet'}. Try a lower --lr or --precision fp32")


def _stopped_mid_epoch(stop: StopRequest, epoch: int, done: int, steps_per_epoch: int, path) -> BaseException:
    return stop.interrupted(f"stopped after step {done}/{steps_per_epoch} of epoch {epoch + 1}, resume point "
                            f"{path}; continue with --resume auto")


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


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
        raise UserError(f"{len(bad_files)} unreadable images (more than {MAX_UNREADABLE_FRACTION:.0%} of "
                        f"{n_local}), e.g. {first}: fix or remove them")


def knn_loaders(knn_data, image_size: int, batch: int, workers: int) -> dict:
    """Loaders of KNN_DATA/{train,val} (labelled, eval transform) and the class count, for `knn_top1`."""
    root = Path(knn_data)
    tf = eval_transform(image_size)
    train_set = LabelledImageFolder(root / "train", tf)
    val_set = LabelledImageFolder(root / "val", tf, class_names=train_set.classes)
    kw = dict(batch_size=max(batch, 64), shuffle=False, num_workers=workers, drop_last=False)
    return {"train": torch.utils.data.DataLoader(train_set, **kw), "val": torch.utils.data.DataLoader(val_set, **kw),
            "num_classes": len(train_set.classes)}


def _prune_checkpoints(out: Path, keep: int):
    if keep <= 0:
        return
    found = sorted((int(m.group(1)), p) for p in out.iterdir() if (m := CHECKPOINT_RE.match(p.name)))
    for _, path in found[:-keep]:
        path.unlink(missing_ok=True)


def _already_finished(out: Path) -> bool:
    try:
        metrics = json.loads((out / "metrics.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(metrics.get("run_record")) and (out / FINAL_NAME).is_file()


def _write_metrics(out: Path, config, variant, history, checkpoint, run_record):
    final = history[-1] if history else {}
    atomic_write_json(out / "metrics.json", {
        "variant": variant, "config": config, "epochs_done": len(history) and history[-1]["epoch"],
        "final": final, "history": history, "checkpoint": str(checkpoint) if checkpoint else None,
        "run_record": str(run_record) if run_record else None})


def _link_final(src: Path, out: Path) -> Path:
    """final.pth.tar: a hard link to the last checkpoint (a copy where links are impossible), made atomically."""
    final, tmp = out / FINAL_NAME, out / f".{FINAL_NAME}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, final)
    return final


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _finish(out: Path, last_ckpt: Path, config, variant, history, seed) -> dict:
    final = _link_final(Path(last_ckpt), out)
    remove_resume_points(out)
    sha = sha256_file(final)
    last = history[-1] if history else {}
    metrics = {"final_loss": last.get("loss"), "final_acc1": last.get("acc1"), "epochs": config["epochs"],
               "ln_k_plus_1": math.log(config["moco_k"] + 1), "images_per_s": last.get("images_per_s")}
    if "knn_top1" in last:
        metrics["final_knn_top1"] = last["knn_top1"]
    wall = sum(h.get("time_s", 0.0) for h in history)
    record = write_run_record("pretrain", variant=variant, metrics=metrics, source_sha256=sha, weights=str(final),
                              weights_sha256=sha, config=config, seeds=[seed], wall_time_s=wall,
                              extra={"output_dir": str(out), "checkpoint": str(last_ckpt)})
    _write_metrics(out, config, variant, history, final, record)
    log.info("done: %s (sha256 %s), loss %s, acc1 %s%%; run record %s", final, sha[:12],
             _fmt(metrics["final_loss"], ".4f"), _fmt(metrics["final_acc1"], ".2f"), record)
    return {"checkpoint": str(final), "sha256": sha, "metrics": metrics, "run_record": str(record),
            "history": history}
