"""The optimiser and its learning-rate schedule, shared by the pretraining and linear loops (both the official
scripts': SGD with momentum, lr per epoch by a step or cosine schedule)."""

from __future__ import annotations

import functools
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
    """SGD with momentum over `params`; with a `device`, the implementation `sgd_implementation` picks there.
    Without a device, torch's default implementation."""
    implementation = sgd_implementation(device) if device is not None else {}
    return torch.optim.SGD(params, lr, momentum=momentum, weight_decay=weight_decay, **implementation)


def sgd_implementation(device: torch.device) -> dict:
    """The SGD param-group options for `device`: torch's fused kernel where this torch has one for the device (one
    kernel per step; on CPU half the time of the per-tensor loop for a ResNet-50, with the same numbers), else its
    default. A machine's choice, not the run's: a resumed optimizer state takes it (`engine.PretrainRun.resume`)."""
    return {"fused": True if _fused_sgd_runs_on(torch.device(device)) else None, "foreach": None}


@functools.cache
def _fused_sgd_runs_on(device: torch.device) -> bool:
    """One fused step on a one-element tensor: torch checks a device's fused support at the first step, and older
    torch versions (or other devices) have none."""
    p = torch.zeros(1, device=device, requires_grad=True)
    p.grad = torch.ones_like(p)
    try:
        torch.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=1e-4, fused=True).step()
    except (RuntimeError, TypeError, ValueError):
        return False
    return True
