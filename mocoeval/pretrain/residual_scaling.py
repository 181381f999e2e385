"""The residual-branch scale extension, whole (beyond the MoCo recipe; README "Beyond the recipe").

`--residual-bn-init G` starts the last BN scale of every residual branch at G instead of torchvision's 1;
`--residual-bn-ramp START END` raises the branches geometrically to full scale between those epochs. Here: the
flag's check, setting / multiplying / measuring the branches of a torchvision ResNet, the ramp's gain, and the
same measurement on Detectron2-named weights (a converted .pkl, a fine-tuned detector).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

_BRANCH_LAST_BN = re.compile(r"(?:^|\.)(res[2-5])\.\d+\.conv3\.norm\.weight$")


def residual_branch_last_bns(encoder: nn.Module) -> dict:
    """Per stage, the last BN of each residual branch: a Bottleneck's bn3, a BasicBlock's bn2."""
    return {
        stage: [b.bn3 if hasattr(b, "bn3") else b.bn2 for b in getattr(encoder, stage)]
        for stage in ("layer1", "layer2", "layer3", "layer4")
    }


def set_residual_branch_scales(encoder: nn.Module, scale: float) -> None:
    """Sets the last BN scale of every residual branch to `scale` (no-op at torchvision's 1). A constant: it draws
    no random numbers, so every other weight is as without it."""
    if scale != 1.0:
        with torch.no_grad():
            for bns in residual_branch_last_bns(encoder).values():
                for bn in bns:
                    bn.weight.fill_(scale)


def multiply_residual_branches(encoder: nn.Module, factor: float) -> None:
    """Multiplies every residual branch's output by `factor`: the scale and shift of its last BN (in eval mode the
    branch's output is exactly `factor` times what it was; in training, its normalised part)."""
    with torch.no_grad():
        for bns in residual_branch_last_bns(encoder).values():
            for bn in bns:
                bn.weight.mul_(factor)
                bn.bias.mul_(factor)


def residual_branch_scales(encoder: nn.Module) -> dict:
    """Per stage, the mean |scale| of its residual branches' last BN: how loud the blocks are against their
    shortcuts. 1 at torchvision's init, 0 with zero init; a branch whose scale stays near 0 through training
    leaves the stage to its projection shortcut alone."""
    return {
        stage: sum(bn.weight.detach().abs().mean().item() for bn in bns) / len(bns)
        for stage, bns in residual_branch_last_bns(encoder).items()
    }


def residual_branch_gain(cfg, progress: float) -> float:
    """How much louder than at the start the residual branches are at `progress` (epochs done, fractional) under
    --residual-bn-ramp START END: 1 until START, then geometric, step by step, to 1 / --residual-bn-init at END, so
    branches that started at G end at about torchvision's scale 1 (their learnt changes kept). `cfg`: a
    PretrainConfig (not imported: the config imports this module)."""
    if not cfg.residual_bn_ramp:
        return 1.0
    start, end = cfg.residual_bn_ramp
    fraction = min(max((progress - start) / (end - start), 0.0), 1.0)
    return cfg.residual_bn_init**-fraction


def d2_residual_branch_scales(model: Mapping[str, Any]) -> dict[str, float]:
    """Per stage res2..res5 (res5 is the RoI head in R50-C4), the mean |scale| of its residual branches' last BN:
    `residual_branch_scales` for Detectron2 names, so for a converted .pkl, a fine-tuned
    model_final.pth or a live detector's state_dict (tensors or arrays). Empty if no such tensors."""
    per_stage: dict[str, list[float]] = {}
    for key, value in model.items():
        m = _BRANCH_LAST_BN.search(key)
        if m:
            array = value.detach().float().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
            per_stage.setdefault(m[1], []).append(float(np.abs(array).mean()))
    return {stage: sum(v) / len(v) for stage, v in sorted(per_stage.items())}
