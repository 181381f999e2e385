"""Pretraining throughput: image pairs per second of our MoCo step and loop, and of a peer's (lightly).

Three modes, so that the bottleneck is visible:
  step    the model step alone, on one batch already in memory (forward q and k, loss, backward, SGD,
          momentum update, enqueue);
  loop    the whole training loop: the data loader (decode + two aug+ views per image) feeding the step;
  loader  the loader alone, up to the views on the device (with 0 workers: its cost on one core).
Each implementation is built once and warmed up, then the implementations are timed in alternation
(A B A B ...) so that drifts of the machine (turbo, other load) hit both alike. The clock is read after a
device synchronisation only at the ends of a timed round.
"""

from __future__ import annotations

import copy
import resource
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.utils.data

from mocoeval.pretrain.augment import IMAGENET_MEAN, IMAGENET_STD
from mocoeval.pretrain.augment_batched import ViewBatch
from mocoeval.pretrain.config import PretrainConfig
from mocoeval.pretrain.engine import (
    build_loader,
    build_model,
    build_optimizer,
    colour_on_device,
    compile_encoders,
    resolve_bn_splits,
    train_step,
)
from mocoeval.runtime.precision import autocast_context


@dataclass
class BenchConfig:
    arch: str = "resnet50"
    image_size: int = 64
    batch_size: int = 32
    moco_k: int = 4096
    moco_m: float = 0.999
    moco_t: float = 0.2
    moco_dim: int = 128
    lr: float = 0.03
    device: str = "cpu"
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False  # torch.compile our encoders (train_moco.py --compile); the peer runs as it ships
    mode: str = "step"
    workers: int = 2
    data: str | None = None
    augment_on: str = "auto"  # ours: where the colour augmentations run (train_moco.py --augment-on)
    bn_splits: int = 0  # ours: train_moco.py --bn-splits (0: its default; lightly's MoCo has no shuffle BN: 1)


def _dtype(precision: str):
    return torch.bfloat16 if precision == "bf16" else None


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batches(cfg: BenchConfig, device: torch.device, loader_factory, finish):
    """An endless iterator of (im_q, im_k) on the device: the same in-memory batch (step) or the loader's,
    `finish(batch)` turning a loader batch into the two views on the device."""
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    if cfg.mode == "step":
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, cfg.batch_size, 3, cfg.image_size, cfg.image_size, generator=g)
        im_q, im_k = (t.to(device).contiguous(memory_format=fmt) for t in x)
        while True:
            yield im_q, im_k
    loader = loader_factory()
    epoch = 0
    while True:
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        for batch in loader:
            yield finish(batch)
        epoch += 1


class OursRunner:
    """Our pretrainer's step (`engine.train_step`) and loader (`engine.build_loader`), as train_moco.py runs them."""

    name = "ours"

    def __init__(self, cfg: BenchConfig, device: torch.device):
        run_cfg = PretrainConfig.defaults(
            arch=cfg.arch,
            moco_dim=cfg.moco_dim,
            mlp=True,
            moco_k=cfg.moco_k,
            moco_m=cfg.moco_m,
            moco_t=cfg.moco_t,
            lr=cfg.lr,
            momentum=0.9,
            weight_decay=1e-4,
            residual_bn_init=1.0,
        )
        self.bn_splits = resolve_bn_splits(cfg.bn_splits, cfg.batch_size, 1)
        torch.manual_seed(0)
        self.model = build_model(run_cfg, self.bn_splits).to(device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if cfg.compile:
            compile_encoders(self.model)
        self.optimizer = build_optimizer(self.model, run_cfg, device)
        self.dtype = _dtype(cfg.precision)
        on_device = colour_on_device(cfg.augment_on, device)
        view_batch = ViewBatch(device, True, on_device, cfg.channels_last)
        self.batches = _batches(
            cfg,
            device,
            lambda: build_loader(
                cfg.data, cfg.image_size, True, 0, cfg.batch_size, cfg.workers, device, 0, 1, on_device
            ),
            lambda batch: view_batch(*batch[0]),
        )
        self.colour_on_device = on_device

    def step(self):
        im_q, im_k = next(self.batches)
        return train_step(self.model, self.optimizer, im_q, im_k, self.dtype)[0]

    def fetch(self):
        return next(self.batches)[0]


class LightlyRunner:
    """The same MoCo v2 recipe from lightly's building blocks, as its MoCo example writes it: torchvision
    backbone, MoCoProjectionHead, update_momentum, NTXentLoss with a memory bank, MoCoV2Transform + DataLoader."""

    name = "lightly"

    def __init__(self, cfg: BenchConfig, device: torch.device):
        import torchvision
        from lightly.loss import NTXentLoss
        from lightly.models.modules import MoCoProjectionHead
        from lightly.models.utils import deactivate_requires_grad, update_momentum
        from lightly.transforms import MoCoV2Transform

        self._update_momentum = update_momentum
        torch.manual_seed(0)
        resnet = torchvision.models.__dict__[cfg.arch]()
        feat = resnet.fc.in_features
        self.backbone = nn.Sequential(*list(resnet.children())[:-1]).to(device)
        self.head = MoCoProjectionHead(feat, feat, cfg.moco_dim).to(device)
        self.backbone_m, self.head_m = copy.deepcopy(self.backbone), copy.deepcopy(self.head)
        deactivate_requires_grad(self.backbone_m)
        deactivate_requires_grad(self.head_m)
        if cfg.channels_last:
            for m in (self.backbone, self.backbone_m):
                m.to(memory_format=torch.channels_last)
        self.criterion = NTXentLoss(temperature=cfg.moco_t, memory_bank_size=(cfg.moco_k, cfg.moco_dim)).to(device)
        params = list(self.backbone.parameters()) + list(self.head.parameters())
        self.optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=1e-4)
        self.m, self.dtype, self.device = cfg.moco_m, _dtype(cfg.precision), device

        def loader():
            transform = MoCoV2Transform(
                input_size=cfg.image_size, normalize={"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
            )
            dataset = torchvision.datasets.ImageFolder(f"{cfg.data}/train", transform=transform)
            return torch.utils.data.DataLoader(
                dataset,
                batch_size=cfg.batch_size,
                shuffle=True,
                drop_last=True,
                num_workers=cfg.workers,
                pin_memory=device.type == "cuda",
                persistent_workers=cfg.workers > 0,
            )

        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.batches = _batches(
            cfg,
            device,
            loader,
            lambda batch: tuple(v.to(device, non_blocking=True).contiguous(memory_format=fmt) for v in batch[0]),
        )

    def step(self):
        im_q, im_k = next(self.batches)
        self._update_momentum(self.backbone, self.backbone_m, m=self.m)
        self._update_momentum(self.head, self.head_m, m=self.m)
        with autocast_context(self.device, self.dtype):
            q = self.head(self.backbone(im_q).flatten(start_dim=1))
            with torch.no_grad():
                k = self.head_m(self.backbone_m(im_k).flatten(start_dim=1))
        loss = self.criterion(q.float(), k.float())
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def fetch(self):
        return next(self.batches)[0]


RUNNERS = {"ours": OursRunner, "lightly": LightlyRunner}


def peak_memory_mib(device: torch.device) -> float:
    """Peak device memory (CUDA) or the process's peak resident set size (CPU: all runners together)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def benchmark(
    cfg: BenchConfig, implementations=("ours",), steps: int = 6, warmup: int = 2, rounds: int = 3, on_round=None
) -> list[dict]:
    """Pairs/s of each implementation for one configuration, timed in alternation; one result dict each."""
    device = torch.device(cfg.device)
    runners = [RUNNERS[name](cfg, device) for name in implementations]
    work = {r.name: r.fetch if cfg.mode == "loader" else r.step for r in runners}
    for r in runners:
        for _ in range(warmup):
            out = work[r.name]()
        _sync(device)
        if not torch.isfinite(out).all():
            raise RuntimeError(f"{r.name}: non-finite {'views' if cfg.mode == 'loader' else 'loss'} during warm-up")
    elapsed = {r.name: 0.0 for r in runners}
    for i in range(rounds):
        for r in runners:
            _sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                work[r.name]()
            _sync(device)
            elapsed[r.name] += time.perf_counter() - start
            if on_round:
                on_round(r.name, i + 1, rounds)
    results = []
    for r in runners:
        pairs = rounds * steps * cfg.batch_size
        results.append(
            {
                "impl": r.name,
                "mode": cfg.mode,
                "arch": cfg.arch,
                "image_size": cfg.image_size,
                "batch_size": cfg.batch_size,
                "moco_k": cfg.moco_k,
                "device": str(device),
                "precision": cfg.precision,
                "channels_last": cfg.channels_last,
                "compile": cfg.compile and r.name == "ours",
                "workers": 0 if cfg.mode == "step" else cfg.workers,
                "threads": torch.get_num_threads(),
                "steps_timed": rounds * steps,
                "pairs_per_s": pairs / elapsed[r.name],
                "peak_memory_mib": round(peak_memory_mib(device), 1),
                "bn_splits": getattr(r, "bn_splits", 1),
                "colour_on_device": getattr(r, "colour_on_device", False) and cfg.mode != "step",
            }
        )
    if {"ours", "lightly"} <= set(implementations):
        speed = {x["impl"]: x["pairs_per_s"] for x in results}
        for x in results:
            x["ratio"] = speed["ours"] / speed["lightly"]  # > 1: ours is faster
    return results
