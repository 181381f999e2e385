"""One pretraining step and what is read from it: the step's lr, the step itself (shared with the throughput
benchmark), and the monitor that sums loss / top-1 on the device and reads them back once per log window."""

from __future__ import annotations

import math
import time

import torch
import torch.distributed as dist

from mocoeval.pretrain.builder import contrastive_loss, contrastive_top1, key_spread
from mocoeval.pretrain.config import PretrainConfig
from mocoeval.runtime.precision import autocast_context


def lr_at_step(cfg: PretrainConfig, epoch: int, step: int, steps_per_epoch: int) -> float:
    """The epoch's scheduled lr, times a linear ramp over the first --warmup-epochs epochs (counted in steps,
    so the first step already trains: lr * 1 / (warm-up steps))."""
    lr = cfg.epoch_lr(epoch)
    progress = epoch + (step + 1) / steps_per_epoch
    if progress < cfg.warmup_epochs:
        lr *= progress / cfg.warmup_epochs
    return lr


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
            [self.window, key_spread(queue).reshape(1), grad_ratios.to(self.window)]
        ).tolist()
        now = time.time()
        out = {
            "loss": loss_sum / self.steps,
            "acc1": 100 * acc_sum / self.steps,
            "nonfinite": nonfinite,
            "key_spread": spread,
            "grad_ratio": dict(zip(GRAD_STAGES, ratios)),
            "images_per_s": self.steps * self.images_per_step / max(now - self.start, 1e-9),
        }
        self.epoch_totals = [
            self.epoch_totals[0] + loss_sum,
            self.epoch_totals[1] + acc_sum,
            self.epoch_totals[2] + self.steps,
        ]
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
