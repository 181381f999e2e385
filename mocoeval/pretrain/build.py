"""The parts a pretraining run is built from -- model, optimizer, loaders, BN groups, loader workers -- shared by the
run (`engine.PretrainRun`), the throughput benchmark (`throughput`) and `inspect_collapse`, so that each measures
what train_moco.py trains."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.utils.data

from mocoeval.pretrain.augment import TwoViewAugment, eval_transform
from mocoeval.pretrain.builder import MoCo, resnet_encoder
from mocoeval.pretrain.config import PretrainConfig
from mocoeval.pretrain.data import EpochSampler, LabelledImageFolder, TwoViewImageFolder, check_train_folder
from mocoeval.runtime.errors import UserError
from mocoeval.runtime.schedule import build_sgd


def build_model(cfg: PretrainConfig, bn_splits: int = 1) -> MoCo:
    """MoCo with the config's architecture; BN layers split into `bn_splits` sub-batches in training."""
    return MoCo(
        lambda: resnet_encoder(cfg.arch, cfg.moco_dim, cfg.mlp, bn_splits, cfg.residual_bn_init),
        dim=cfg.moco_dim,
        K=cfg.moco_k,
        m=cfg.moco_m,
        T=cfg.moco_t,
    )


def compile_encoders(model: MoCo) -> MoCo:
    """torch.compile each encoder in place (nn.Module.compile): parameter and buffer names, hence checkpoints,
    stay those of the plain model. The queue, shuffle and loss stay eager: they are cheap and data-dependent."""
    model.encoder_q.compile()
    model.encoder_k.compile()
    return model


def build_optimizer(model: torch.nn.Module, cfg: PretrainConfig, device: torch.device) -> torch.optim.SGD:
    """SGD over all parameters, as the official code (the key encoder's never get gradients, so they
    are skipped; keeping them keeps official optimizer states loadable). Weight decay on every tensor."""
    return build_sgd(model.parameters(), cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, device=device)


def build_loader(
    data_dir,
    image_size: int,
    aug_plus: bool,
    seed: int,
    batch: int,
    workers: int,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
    colour_on_device: bool = False,
    idle_workers: bool = False,
) -> torch.utils.data.DataLoader:
    """Two views per image of DATA_DIR/train as uint8 with their drawn parameters (`augment.TwoViewAugment`;
    `augment_batched.ViewBatch` finishes them on the device), batches of `batch` per process; the sampler
    (`loader.sampler.set_epoch`) fixes the order and every view from (seed, epoch, index). With `idle_workers`
    the workers run at idle CPU priority (`idle_loader_workers`)."""
    dataset = TwoViewImageFolder(
        check_train_folder(data_dir), TwoViewAugment(image_size, aug_plus, colour_on_device), seed
    )
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch,
        sampler=EpochSampler(len(dataset), seed, rank, world),
        num_workers=workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),  # its own: the global one stays per-epoch seeded
        worker_init_fn=run_at_idle_priority if idle_workers else None,
    )


def colour_on_device(augment_on: str, device: torch.device) -> bool:
    """--augment-on auto: the colour ops run on a GPU (the workers only decode and crop), in the loader on CPU,
    where the workers' PIL ops are cheaper than batched float ops taken from the step's own cores."""
    return augment_on == "device" or (augment_on == "auto" and device.type == "cuda")


def idle_loader_workers(loader_priority: str, device: torch.device) -> bool:
    """--loader-priority auto: idle workers when training on the CPU, normal ones on GPUs. On the CPU the step's
    threads take every core, and a worker that preempts one of them stalls the step's whole parallel region until
    that thread runs again; at idle priority the workers take only the cores the step leaves free (between its
    parallel regions; while it waits for a batch, if ever), which made the CPU loop faster (README, "Pretraining
    throughput on CPU"). On a GPU the loader decides the throughput and must not yield to anything."""
    if loader_priority == "auto":
        return device.type == "cpu" and hasattr(os, "SCHED_IDLE")
    if loader_priority == "idle" and not hasattr(os, "SCHED_IDLE"):
        raise UserError("--loader-priority idle needs Linux's SCHED_IDLE scheduling policy; use normal here")
    return loader_priority == "idle"


def run_at_idle_priority(worker_id: int) -> None:
    """DataLoader worker_init_fn: this worker process runs at SCHED_IDLE; what it computes does not change, only
    when it gets a core. Lowering one's own priority needs no privilege; where a sandbox forbids the call anyway,
    the worker stays at normal priority (the loop is then only slower)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except OSError:
        pass


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


def default_workers(local_world: int) -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(32, cpus) // max(local_world, 1))


def knn_loaders(knn_data, image_size: int, batch: int, workers: int) -> dict:
    """Loaders of KNN_DATA/{train,val} (labelled, eval transform) and the class count, for `knn_top1`."""
    root = Path(knn_data)
    tf = eval_transform(image_size)
    train_set = LabelledImageFolder(root / "train", tf)
    val_set = LabelledImageFolder(root / "val", tf, class_names=train_set.classes)
    kw = dict(batch_size=max(batch, 64), shuffle=False, num_workers=workers, drop_last=False)
    return {
        "train": torch.utils.data.DataLoader(train_set, **kw),
        "val": torch.utils.data.DataLoader(val_set, **kw),
        "num_classes": len(train_set.classes),
    }
