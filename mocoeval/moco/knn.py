"""Weighted kNN monitor (Wu et al. 2018, as used to monitor MoCo): classify each val image by the labels of
its k nearest train images in the L2-normalised backbone feature space of f_q, each neighbour voting with
weight exp(cosine similarity / T). k = 200, T = 0.1 by default."""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F


def backbone_of(resnet: nn.Module) -> nn.Module:
    """The torchvision ResNet without its `fc` (the projection head): pooled features, flattened."""
    return nn.Sequential(*[m for name, m in resnet.named_children() if name != "fc"], nn.Flatten(1))


@torch.no_grad()
def extract_features(backbone: nn.Module, loader, device, autocast_dtype=None, channels_last=False):
    """(L2-normalised float32 features [N, D], labels [N]) on `device`, in the loader's order."""
    feats, labels = [], []
    amp = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext())
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
def knn_predict(test_feats, train_feats, train_labels, num_classes: int, k: int = 200, t: float = 0.1,
                chunk: int = 256) -> torch.Tensor:
    """Predicted class per test feature (features already L2-normalised)."""
    k = min(k, train_feats.shape[0])
    preds = []
    for start in range(0, test_feats.shape[0], chunk):
        sim = test_feats[start:start + chunk] @ train_feats.t()
        top_sim, top_idx = sim.topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], num_classes, device=sim.device)
        votes.scatter_add_(1, train_labels[top_idx], (top_sim / t).exp())
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds)


def knn_top1(encoder_q: nn.Module, train_loader, val_loader, num_classes: int, device, k: int = 200,
             t: float = 0.1, autocast_dtype=None, channels_last=False) -> float:
    """kNN top-1 (%) of `encoder_q`'s backbone, evaluated in eval mode (BN running statistics)."""
    was_training = encoder_q.training
    encoder_q.eval()
    try:
        backbone = backbone_of(encoder_q)
        train_f, train_y = extract_features(backbone, train_loader, device, autocast_dtype, channels_last)
        val_f, val_y = extract_features(backbone, val_loader, device, autocast_dtype, channels_last)
        pred = knn_predict(val_f, train_f, train_y, num_classes, k, t)
        return float((pred == val_y).float().mean().item() * 100.0)
    finally:
        encoder_q.train(was_training)
