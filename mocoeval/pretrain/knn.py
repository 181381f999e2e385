"""Weighted kNN monitor (Wu et al. 2018, as used to monitor MoCo): classify each val image by the labels of
its k nearest train images in the L2-normalised backbone feature space of f_q, each neighbour voting with
weight exp(cosine similarity / T). k = 200, T = 0.1 by default."""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from mocoeval.pretrain.config import STAGES


def backbone_of(resnet: nn.Module, stage: str = "layer4") -> nn.Module:
    """The torchvision ResNet up to `stage` (default: all of it but the projection head `fc`), global-average
    pooled and flattened. Earlier stages show where along the depth pretraining helped or hurt."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    children = []
    for name, module in resnet.named_children():
        if name in ("avgpool", "fc"):
            break
        children.append(module)
        if name == stage:
            break
    return nn.Sequential(*children, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


@torch.no_grad()
def extract_features(backbone: nn.Module, loader, device, autocast_dtype=None, channels_last=False):
    """(L2-normalised float32 features [N, D], labels [N]) on `device`, in the loader's order."""
    feats, labels = [], []
    amp = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    for images, target in loader:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with amp:
            f = backbone(images)
        feats.append(F.normalize(f.float(), dim=1))
        labels.append(target.to(device, non_blocking=True))
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def reestimate_bn_statistics(model: nn.Module, loader, device) -> None:
    """Replace every BatchNorm's running statistics by their equal-weight average over `loader`'s batches
    (training-mode passes, momentum None), as Detectron2's precise BN does before evaluating. The model's
    mode and BN momenta are put back."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    was_training = model.training
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    try:
        for images, _ in loader:
            model(images.to(device, non_blocking=True))
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        model.train(was_training)


@torch.no_grad()
def knn_predict(
    test_feats, train_feats, train_labels, num_classes: int, k: int = 200, t: float = 0.1, chunk: int = 256
) -> torch.Tensor:
    """Predicted class per test feature (features already L2-normalised)."""
    k = min(k, train_feats.shape[0])
    preds = []
    for start in range(0, test_feats.shape[0], chunk):
        sim = test_feats[start : start + chunk] @ train_feats.t()
        top_sim, top_idx = sim.topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], num_classes, device=sim.device)
        votes.scatter_add_(1, train_labels[top_idx], (top_sim / t).exp())
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds)


def knn_top1(
    encoder_q: nn.Module,
    train_loader,
    val_loader,
    num_classes: int,
    device,
    k: int = 200,
    t: float = 0.1,
    autocast_dtype=None,
    channels_last=False,
    stage: str = "layer4",
) -> float:
    """kNN top-1 (%) of `encoder_q`'s backbone up to `stage`, in eval mode (BN running statistics)."""
    was_training = encoder_q.training
    encoder_q.eval()
    try:
        backbone = backbone_of(encoder_q, stage)
        train_f, train_y = extract_features(backbone, train_loader, device, autocast_dtype, channels_last)
        val_f, val_y = extract_features(backbone, val_loader, device, autocast_dtype, channels_last)
        pred = knn_predict(val_f, train_f, train_y, num_classes, k, t)
        return float((pred == val_y).float().mean().item() * 100.0)
    finally:
        encoder_q.train(was_training)
