"""The optimiser and its learning-rate schedule, shared by the pretraining and linear loops (both the official
scripts': SGD with momentum, lr per epoch by a step or cosine schedule)."""

from __future__ import annotations

import math

import torch


def lr_at_epoch(
    base_lr: float, epoch: int, *, schedule=(), epochs: int | None = None, cos: bool = False, decay: float = 0.1
) -> float:
    """Cosine (MoCo v2): base_lr * 0.5 * (1 + cos(pi * epoch / epochs)); step (MoCo v1, linear
    classification): base_lr * decay ** (milestones <= epoch), 0-based epochs as the official scripts."""
    if cos:
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    return base_lr * decay ** sum(epoch >= milestone for milestone in schedule)


def build_sgd(
    params, lr: float, *, momentum: float, weight_decay: float, device: torch.device | None = None
) -> torch.optim.SGD:
    """SGD with momentum over `params`; with a CUDA `device`, the fused implementation (one kernel per step).
    Without a device, torch's default implementation."""
    fused = True if device is not None and device.type == "cuda" else None
    return torch.optim.SGD(params, lr, momentum=momentum, weight_decay=weight_decay, fused=fused)
