"""Linear evaluation's model: torchvision's ResNet-50 with a frozen, always-eval backbone and a trainable fc,
the backbone read from a checkpoint (or a seeded random init), and the official frozen-backbone sanity check."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from mocoeval.runtime.errors import UserError
from mocoeval.transfer.linear_config import LinearConfig

ARCH = "resnet50"
FEATURE_DIM = 2048
FC_INIT_STD = 0.01


class SanityCheckError(UserError):
    """The backbone changed during linear training (it must stay frozen, BN statistics included)."""


class FrozenBackboneResNet50(ResNet):
    """torchvision ResNet-50 (same module names/state-dict keys) for linear classification.

    Every parameter but `fc.*` is frozen, and the model never leaves eval mode: `train()` is overridden to
    keep BN layers normalising with (and not updating) their running statistics, exactly like the official
    script's `model.eval()` during training. `fc` is a Linear layer, which behaves the same in both modes.

    With `feature_norm`, fc is Sequential(BatchNorm1d(2048, affine=False), Linear): the features are
    standardised with batch statistics in training and their running averages in evaluation (MAE's
    linear-probing recipe, not the MoCo protocol). It makes one learning rate fit backbones whose feature
    scales differ by orders of magnitude, e.g. a random-init ResNet-50 in eval mode (BN = identity) next to
    a pretrained one. fc is then the only part that leaves eval mode.
    """

    def __init__(self, num_classes: int, feature_norm: bool = False):
        super().__init__(Bottleneck, [3, 4, 6, 3], num_classes=num_classes)
        if feature_norm:
            self.fc = nn.Sequential(nn.BatchNorm1d(self.fc.in_features, affine=False, eps=1e-6), self.fc)
        for name, param in self.named_parameters():
            param.requires_grad = name.startswith("fc.")
        self.reset_fc()
        self.eval()

    @property
    def linear(self) -> nn.Linear:
        return self.fc[-1] if isinstance(self.fc, nn.Sequential) else self.fc

    def reset_fc(self) -> None:
        nn.init.normal_(self.linear.weight, mean=0.0, std=FC_INIT_STD)
        nn.init.zeros_(self.linear.bias)

    def train(self, mode: bool = True):
        super().train(False)
        if isinstance(self.fc, nn.Sequential):  # the feature-norm BN uses batch statistics while training
            self.fc.train(mode)
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 2048-d pooled backbone features (everything before fc)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def load_backbone_source(config: LinearConfig) -> tuple[dict[str, torch.Tensor], dict]:
    """(torchvision-keyed backbone state dict, info with format/source_sha256/variant) for the run's --weights,
    or its --random-init network (seeded by --seed, residual branches' last BN at --residual-bn-init)."""
    from mocoeval.convert.formats import load_resnet50, random_init_resnet50

    if config.random_init:
        return random_init_resnet50(config.seed, 1.0 if config.residual_bn_init is None else config.residual_bn_init)

    state, info = load_resnet50(
        config.weights, fmt=config.weights_format, trust_pickle=config.trust_pickle, variant=config.variant
    )
    return {k: v for k, v in state.items() if not k.startswith("fc.")}, dict(info)


def load_backbone(model: FrozenBackboneResNet50, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy the backbone tensors into `model`; exactly fc may be missing (num_batches_tracked too, unused)."""
    result = model.load_state_dict(dict(state), strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise UserError(
            f"{source}: not a ResNet-50 backbone (missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})"
        )


def backbone_mismatch(model_state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> str | None:
    """None if every non-fc tensor of `model_state` equals `reference`'s, else a description of the first one
    that differs. BN running statistics are compared too; `num_batches_tracked` only if the reference has it."""
    for key in sorted(k for k in model_state if not k.startswith("fc.")):
        current = model_state[key].detach()
        if key not in reference:
            if key.endswith("num_batches_tracked"):
                continue
            return f"{key} is not in the checkpoint"
        expected = reference[key]
        if tuple(current.shape) != tuple(expected.shape):
            return f"{key} has shape {tuple(current.shape)}, the checkpoint {tuple(expected.shape)}"
        current = current.to("cpu")
        if not torch.equal(current, expected.to(device="cpu", dtype=current.dtype)):
            diff = (current.double() - expected.double()).abs().max().item()
            return f"{key} differs from the checkpoint (max abs difference {diff:.3g})"
    extra = [k for k in reference if not k.startswith("fc.") and k not in model_state]
    if extra:
        return f"checkpoint tensor {extra[0]} is not in the model"
    return None


def check_backbone_unchanged(
    model_state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], source: str = "the checkpoint"
) -> None:
    """The official sanity check: raise SanityCheckError (one line) if any backbone tensor changed."""
    problem = backbone_mismatch(model_state, reference)
    if problem:
        raise SanityCheckError(f"sanity check failed against {source}: {problem}; the backbone must stay frozen")
