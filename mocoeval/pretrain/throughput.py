"""Pretraining throughput: image pairs per second of our MoCo step and loop, and of a peer's (lightly).

Four modes, so that the bottleneck is visible:
  step     the model step alone, on one batch already in memory (forward q and k, loss, backward, SGD,
           momentum update, enqueue);
  loop     the whole training loop: the data loader (decode + two aug+ views per image) feeding the step;
  loader   the loader alone, up to the views on the device (with 0 workers: its cost on one core);
  workers  one loader worker's share alone (decode, crop, the colour ops where they run in the workers, collate),
           single-threaded, as a worker runs: pairs/s per worker process, which sizes the CPU cores a GPU needs
           (with --augment-on device the colour ops are the GPU's, not the workers').
Each implementation runs in a process of its own, is built once and warmed up, then the implementations are
timed in alternation (A B A B ...) so that drifts of the machine (turbo, other load) hit both alike. The clock
is read after a device synchronisation only at the ends of a timed round.
"""

from __future__ import annotations

import copy
import dataclasses
import multiprocessing
import resource
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.utils.data

from mocoeval.pretrain.augment import IMAGENET_MEAN, IMAGENET_STD
from mocoeval.pretrain.augment_batched import ViewBatch
from mocoeval.pretrain.build import (
    build_loader,
    build_model,
    build_optimizer,
    colour_on_device,
    compile_encoders,
    idle_loader_workers,
    resolve_bn_splits,
)
from mocoeval.pretrain.config import PretrainConfig
from mocoeval.pretrain.step import train_step
from mocoeval.runtime.errors import UserError, one_line
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
    loader_priority: str = "auto"  # ours: the loader workers' CPU scheduling (train_moco.py --loader-priority)
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
    if cfg.mode == "workers":
        finish = _as_workers_deliver
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


def _as_workers_deliver(batch):
    """The batch as the workers hand it over (views and, ours, their parameters): nothing done in the main process."""
    return batch[0]


class OursRunner:
    """Our pretrainer's step (`step.train_step`) and loader (`build.build_loader`), as train_moco.py runs them."""

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
        idle = idle_loader_workers(cfg.loader_priority, device)
        self.batches = _batches(
            cfg,
            device,
            lambda: build_loader(
                cfg.data, cfg.image_size, True, 0, cfg.batch_size, cfg.workers, device, 0, 1, on_device, idle
            ),
            lambda batch: view_batch(*batch[0]),
        )
        self.colour_on_device = on_device
        self.idle_workers = idle and cfg.workers > 0 and cfg.mode in ("loop", "loader")

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
    """Peak device memory (CUDA) or the process's peak resident set size (CPU)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def benchmark(
    cfg: BenchConfig, implementations=("ours",), steps: int = 6, warmup: int = 2, rounds: int = 3
) -> list[dict]:
    """Pairs/s of each implementation for one configuration; one result dict each.

    Every implementation runs in a process of its own (spawned, then built and warmed up, one after the other) and
    the processes take turns, one timed round each, the others waiting idle (on CUDA having handed their cached
    memory back, so that both fit on one GPU; a round there starts with one untimed step). Sharing one process,
    the runner built first ran its loop slower than alone (README, "Pretraining throughput on CPU": ours 61.5
    pairs/s beside lightly against 67.2 alone on 2 cores), which had put ours below lightly's."""
    if cfg.mode == "workers":  # one worker's share, in the runner's process (single-threaded there, as a worker)
        cfg = dataclasses.replace(cfg, workers=0)
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold CUDA or thread pools
    runs = []
    try:
        for name in implementations:
            conn, child_conn = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(name, cfg, warmup, steps, child_conn), name=f"bench-{name}")
            proc.start()
            child_conn.close()
            runs.append((name, proc, conn))
            _answer(name, proc, conn)  # built and warmed up, one after the other: never two warm-ups at once
        elapsed = dict.fromkeys(implementations, 0.0)
        for _ in range(rounds):
            for name, proc, conn in runs:
                conn.send("round")
                elapsed[name] += _answer(name, proc, conn)
        results = []
        for name, proc, conn in runs:
            conn.send("stop")
            results.append(
                {
                    "impl": name,
                    "mode": cfg.mode,
                    "arch": cfg.arch,
                    "image_size": cfg.image_size,
                    "batch_size": cfg.batch_size,
                    "moco_k": cfg.moco_k,
                    "device": str(torch.device(cfg.device)),
                    "precision": cfg.precision,
                    "channels_last": cfg.channels_last,
                    "compile": cfg.compile and name == "ours",
                    "workers": 0 if cfg.mode == "step" else cfg.workers,
                    "steps_timed": rounds * steps,
                    "pairs_per_s": rounds * steps * cfg.batch_size / elapsed[name],
                    **_answer(name, proc, conn),  # threads, peak memory, BN groups, where the colour ops ran
                }
            )
    finally:
        for _, proc, conn in runs:
            conn.close()
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join()
    if {"ours", "lightly"} <= set(implementations):
        speed = {x["impl"]: x["pairs_per_s"] for x in results}
        for x in results:
            x["ratio"] = speed["ours"] / speed["lightly"]  # > 1: ours is faster
    return results


def _serve(name: str, cfg: BenchConfig, warmup: int, steps: int, conn) -> None:
    """One implementation's process: build and warm up, answer; then one timed round per "round" message, and at
    "stop" the facts of the run. Any error is sent as one line for the parent to raise."""
    try:
        if cfg.mode == "workers":
            torch.set_num_threads(1)  # as DataLoader runs each worker
        device = torch.device(cfg.device)
        runner = RUNNERS[name](cfg, device)
        trains = cfg.mode in ("step", "loop")
        work = runner.step if trains else runner.fetch
        for _ in range(warmup):
            out = work()
        _sync(device)
        if warmup and not torch.isfinite(out).all():
            raise RuntimeError(f"non-finite {'loss' if trains else 'views'} during warm-up")
        if device.type == "cuda":
            torch.cuda.empty_cache()
        conn.send(("ready", None))
        while conn.recv() == "round":
            if device.type == "cuda":
                work()  # untimed: refills the caching allocator the last round handed back
            _sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                work()
            _sync(device)
            conn.send(("elapsed", time.perf_counter() - start))
            if device.type == "cuda":  # while the others run, hold only live tensors: both fit on one GPU
                torch.cuda.empty_cache()
        facts = {
            "threads": torch.get_num_threads(),
            "peak_memory_mib": round(peak_memory_mib(device), 1),
            "bn_splits": getattr(runner, "bn_splits", 1),
            "colour_on_device": getattr(runner, "colour_on_device", False) and cfg.mode != "step",
            "idle_workers": getattr(runner, "idle_workers", False),
        }
        conn.send(("facts", facts))
    except UserError as e:  # bad input: the parent raises it as such, a one-line error for the command
        conn.send(("user-error", one_line(e)))
    except BaseException as e:  # noqa: BLE001 -- the parent raises it, with the implementation's name
        conn.send(("error", f"{type(e).__name__}: {one_line(e)}"))
    finally:
        conn.close()


def _answer(name: str, proc, conn):
    """The implementation's next answer; its error, or the death of its process, raised here in one line."""
    try:
        kind, value = conn.recv()
    except (EOFError, ConnectionResetError):
        proc.join(timeout=10)
        raise RuntimeError(f"{name}: its benchmark process died (exit code {proc.exitcode})") from None
    if kind == "user-error":
        raise UserError(f"{name}: {value}")
    if kind == "error":
        raise RuntimeError(f"{name}: {value}")
    return value
