"""Linear evaluation's steps: the lr schedule and optimizer over fc, the Runner (frozen backbone forward, fc
possibly in DDP), one training epoch with its progress (a bar on a terminal, else step lines with an ETA), and
the evaluation."""

from __future__ import annotations

import logging
import time

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from mocoeval.runtime.logger import format_seconds
from mocoeval.runtime.precision import autocast_context, cpu_has_fast_bf16
from mocoeval.runtime.schedule import build_sgd
from mocoeval.runtime.schedule import lr_at_epoch as schedule_lr
from mocoeval.runtime.stop_request import StopRequest, any_process
from mocoeval.transfer.linear_model import FrozenBackboneResNet50

logger = logging.getLogger("mocoeval.linear")

LR_DECAY = 0.1  # at every epoch in `schedule`
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16}  # --precision -> backbone autocast dtype


def lr_at_epoch(base_lr: float, epoch: int, schedule) -> float:
    """Step schedule: base_lr x 0.1 for every milestone <= epoch (0-based epochs, as the official script)."""
    return schedule_lr(base_lr, epoch, schedule=schedule, decay=LR_DECAY)


def build_optimizer(model: FrozenBackboneResNet50, lr: float, momentum: float, weight_decay: float):
    params = [p for p in model.parameters() if p.requires_grad]
    assert len(params) == 2, "only fc.weight and fc.bias may be trainable"  # the official script's check
    return build_sgd(params, lr, momentum=momentum, weight_decay=weight_decay)


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks=(1, 5)) -> list[int]:
    """How many samples have their target among the top-k logits, for each k (k capped at num_classes)."""
    maxk = min(max(ks), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices
    hit = pred.eq(targets.view(-1, 1))
    return [int(hit[:, : min(k, maxk)].any(dim=1).sum().item()) for k in ks]


class Runner:
    """Everything a linear-eval step needs: model, the (possibly DDP-wrapped) fc, device, precision."""

    def __init__(
        self,
        model: FrozenBackboneResNet50,
        device: torch.device,
        precision: str = "fp32",
        channels_last: bool = False,
        distributed: bool = False,
    ):
        self.model, self.device, self.precision, self.channels_last = model, device, precision, channels_last
        self.autocast_dtype = AUTOCAST_DTYPES[precision]  # LinearConfig validated the name
        if precision == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16():
            logger.warning(
                "--precision bf16 on a CPU without AVX-512-BF16/AMX is emulated and usually several "
                "times slower than fp32 (measured 4x on an AVX2 EPYC); consider fp32 --channels-last"
            )
        model.to(device)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        self.head: nn.Module = model.fc
        if distributed:  # only fc has gradients to synchronise
            self.head = nn.parallel.DistributedDataParallel(
                model.fc, device_ids=[device.index] if device.type == "cuda" else None
            )

    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return images.to(self.device, non_blocking=True, memory_format=fmt)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen backbone forward: no autograd graph, optional bf16 autocast; fp32 output for fc."""
        with torch.no_grad(), autocast_context(self.device, self.autocast_dtype):
            return self.model.features(self.to_input(images)).float()

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


class RunEta:
    """The run's remaining time from its wall-clock pace so far (evaluations included, as they recur)."""

    def __init__(self, iterations_left: int):
        self.start, self.done, self.left = time.perf_counter(), 0, iterations_left

    def step(self) -> None:
        self.done, self.left = self.done + 1, self.left - 1

    def seconds_left(self) -> float | None:
        return (time.perf_counter() - self.start) / self.done * self.left if self.done else None


def train_one_epoch(
    runner: Runner,
    loader,
    optimizer,
    epoch: int,
    *,
    print_freq: int = 10,
    writer=None,
    progress: bool = True,
    desc: str = "",
    start_iter: int = 0,
    carried: list | None = None,
    stop: StopRequest | None = None,
    world: int = 1,
    eta: RunEta | None = None,
) -> dict:
    """One pass over `loader` updating fc only; returns train loss, top-1 and throughput.

    `progress` draws a bar (a terminal); every `print_freq` iterations a step line with images/s and the
    run's `eta` is logged as well, marked `step_line` so the console leaves it out while a bar shows it.

    Resumed mid-epoch, `loader` holds the epoch's batches from `start_iter` on and `carried` the sums before it
    ([loss sum, top-1 correct, images, seconds]). Once `stop` is requested (agreed by all `world` processes at log
    steps) it returns after the current iteration with "stopped_after" (iterations done) and those sums.
    """
    runner.model.train()  # stays in eval mode (see FrozenBackboneResNet50.train), like the official script
    criterion = nn.CrossEntropyLoss()
    loss_sum, correct1, seen, elapsed_before = carried or (0.0, 0, 0, 0.0)
    n_iters = start_iter + len(loader)
    start, seen_here = time.perf_counter(), 0
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True)
    for it, (images, targets) in enumerate(bar, start=start_iter):
        targets = targets.to(runner.device, non_blocking=True)
        logits = runner.logits(images)
        loss = criterion(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = targets.shape[0]
        loss_sum += loss.item() * n
        correct1 += topk_correct(logits.detach(), targets, ks=(1,))[0]
        seen, seen_here = seen + n, seen_here + n
        if eta is not None:
            eta.step()
        at_log = it % print_freq == 0 or it == n_iters - 1
        if at_log:
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", top1=f"{100 * correct1 / seen:.1f}")
            if writer is not None:
                writer.add_scalar("train/loss_iter", loss.item(), epoch * n_iters + it)
            logger.info(
                "%s iter %d/%d  loss %.4f  top-1 %.2f  lr %.4g  %.1f img/s  eta %s",
                desc or f"epoch {epoch + 1}",
                it + 1,
                n_iters,
                loss_sum / seen,
                100 * correct1 / seen,
                optimizer.param_groups[0]["lr"],
                seen_here * world / (time.perf_counter() - start),
                format_seconds(eta.seconds_left() if eta else None),
                extra={"step_line": True},
            )
        if (
            stop is not None
            and it + 1 < n_iters
            and (world == 1 or at_log)
            and any_process([stop.requested], world, runner.device)[0]
        ):
            sums = torch.tensor([loss_sum, correct1, seen], dtype=torch.float64, device=runner.device)
            if world > 1:
                dist.all_reduce(sums)  # the checkpoint carries the totals; rank 0 alone resumes with them
            bar.close()
            return {"stopped_after": it + 1, "carried": [*sums.tolist(), elapsed_before + time.perf_counter() - start]}
    elapsed = elapsed_before + time.perf_counter() - start
    stats = torch.tensor([loss_sum, correct1, seen], dtype=torch.float64, device=runner.device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(stats)
    loss_sum, correct1, seen = stats.tolist()
    return {
        "train_loss": loss_sum / max(seen, 1),
        "train_top1": 100 * correct1 / max(seen, 1),
        "train_images_per_s": seen / elapsed if elapsed > 0 else float("nan"),
        "train_time_s": elapsed,
    }


@torch.no_grad()
def evaluate(runner: Runner, loader, *, progress: bool = True, desc: str = "val") -> dict:
    """Top-1/top-5 (percent) and loss over `loader` (summed over ranks when distributed)."""
    runner.model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    loss_sum, c1, c5, seen = 0.0, 0, 0, 0
    for images, targets in tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        targets = targets.to(runner.device, non_blocking=True)
        logits = runner.model.fc(runner.features(images))
        loss_sum += criterion(logits, targets).item()
        k1, k5 = topk_correct(logits, targets, ks=(1, 5))
        c1, c5, seen = c1 + k1, c5 + k5, seen + targets.shape[0]
    stats = torch.tensor([loss_sum, c1, c5, seen], dtype=torch.float64, device=runner.device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(stats)
    loss_sum, c1, c5, seen = stats.tolist()
    return {
        "val_loss": loss_sum / max(seen, 1),
        "top1": 100 * c1 / max(seen, 1),
        "top5": 100 * c5 / max(seen, 1),
        "val_images": int(seen),
    }
