"""Linear classification on a frozen ResNet-50: the MoCo papers' "ImageNet linear accuracy".

The protocol is the official facebookresearch/moco `main_lincls.py` (constants in `LINCLS_DEFAULTS`, see
../shared/protocol.md "Linear classification"):

- torchvision ResNet-50 whose backbone comes from a checkpoint (any format `checkpoint_formats.load_resnet50`
  reads) or is randomly initialised (`--random-init`, seeded); every layer but `fc` frozen;
- the **whole model stays in eval mode while training** (the official script calls `model.eval()` in its
  train loop): BN layers normalise with the checkpoint's running statistics and never update them;
- a new `fc = Linear(2048, num_classes)`, weight ~ N(0, 0.01), bias 0, the only parameters the optimizer sees;
- SGD lr 30, momentum 0.9, weight decay 0, batch 256, 100 epochs, lr x 0.1 at epochs 60 and 80;
- train: RandomResizedCrop(size) (scale 0.08-1) + horizontal flip; val: Resize(size*256/224) + CenterCrop(size);
  ImageNet mean/std;
- top-1/top-5 on val after every epoch, the best tracked; a sanity check that every backbone tensor (BN buffers
  included) still equals the checkpoint's, re-read from disk (after the first epoch, as the official script
  does, and at the end): a mismatch fails the run.

Reproducibility: the training crops are drawn from an RNG seeded by (seed, epoch, image index) and the
shuffling from a generator seeded by (seed, epoch), so a run resumed at any epoch boundary, or run with any
number of data-loader workers, sees exactly the same batches as an uninterrupted one; no global RNG state needs
saving. Ctrl-C / SIGTERM stop after the current iteration (every process agrees at the next log step) with that
state in checkpoint.pth.tar (`step_in_epoch`, the epoch's sums so far): `--resume auto` skips the epoch's
batches already trained and ends exactly like the uninterrupted run. The backbone forward runs under
`torch.no_grad()` (optionally bf16 autocast and channels-last): only `fc` is in autograd.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.distributed as dist
import torch.nn as nn
from torchvision import datasets
from torchvision import transforms as T
from torchvision.models.resnet import Bottleneck, ResNet

from mocoeval.pretrain.residual_scaling import check_residual_bn_init
from mocoeval.runtime.checkpoint_io import torch_load_safely
from mocoeval.runtime.errors import UserError
from mocoeval.runtime.fileio import atomic_torch_save, atomic_write_json, check_output_dir
from mocoeval.runtime.stop_request import StopRequest, any_process

logger = logging.getLogger("mocoeval.linear")

ARCH = "resnet50"
FEATURE_DIM = 2048
LR_DECAY = 0.1  # at every epoch in `schedule`
FC_INIT_STD = 0.01
RRC_SCALE = (0.08, 1.0)  # torchvision's RandomResizedCrop default, as the official script uses it
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHECKPOINT_NAME = "checkpoint.pth.tar"
BEST_CHECKPOINT_NAME = "model_best.pth.tar"
METRICS_NAME = "metrics.json"
CHECKPOINT_FORMAT = "mocoeval-linear"
PRECISIONS = ("fp32", "bf16")


class SanityCheckError(UserError):
    """The backbone changed during linear training (it must stay frozen, BN statistics included)."""


# --------------------------------------------------------------------------------------------- data
def val_resize_size(image_size: int) -> int:
    """The shorter side the val images are resized to before the center crop: 256 for 224, same ratio else."""
    return int(image_size * 256 / 224)


def build_transforms(image_size: int) -> tuple[T.Compose, T.Compose]:
    normalize = T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    train = T.Compose([T.RandomResizedCrop(image_size, scale=RRC_SCALE), T.RandomHorizontalFlip(),
                       T.ToTensor(), normalize])
    val = T.Compose([T.Resize(val_resize_size(image_size)), T.CenterCrop(image_size), T.ToTensor(), normalize])
    return train, val


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed unique to (run seed, epoch, image index)."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class SeededAugmentation(torch.utils.data.Dataset):
    """Applies a random transform with the RNG seeded by (seed, epoch, index).

    The crops then depend neither on the number of workers nor on where a run was resumed. Workers are
    re-created every epoch (no persistent workers), so they always see the current `epoch`.
    """

    def __init__(self, base: torch.utils.data.Dataset, transform, seed: int):
        self.base, self.transform, self.seed, self.epoch = base, transform, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, target = self.base[index]
        gen = torch.default_generator  # torchvision's random transforms draw from it
        saved = gen.get_state()
        gen.manual_seed(sample_seed(self.seed, self.epoch, index))
        try:
            image = self.transform(image)
        finally:
            gen.set_state(saved)
        return image, target


class _ImageFolderWithClasses(datasets.ImageFolder):
    """ImageFolder using a given class -> index mapping (the train split's), so val labels line up."""

    def __init__(self, root, class_to_idx: Mapping[str, int], **kwargs):
        self._given_class_to_idx = dict(class_to_idx)
        super().__init__(root, allow_empty=True, **kwargs)

    def find_classes(self, directory):
        present = sorted(e.name for e in os.scandir(directory) if e.is_dir())
        unknown = [c for c in present if c not in self._given_class_to_idx]
        if unknown:
            raise UserError(f"{directory}: class folder(s) not in the train split: {', '.join(unknown[:5])}"
                            + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""))
        classes = sorted(self._given_class_to_idx, key=self._given_class_to_idx.get)
        return classes, self._given_class_to_idx


def build_datasets(data_dir, image_size: int, seed: int):
    """(train dataset with seeded augmentation, val dataset, class names) of an ImageFolder root."""
    from mocoeval.data.layout import check_imagefolder

    data_dir = Path(data_dir)
    check_imagefolder(data_dir, splits=("train", "val"))
    train_tf, val_tf = build_transforms(image_size)
    try:
        train_base = datasets.ImageFolder(data_dir / "train")
        val = _ImageFolderWithClasses(data_dir / "val", train_base.class_to_idx, transform=val_tf)
    except FileNotFoundError as e:  # no class folder / no image in a split
        raise UserError(f"{data_dir}: {e}") from None
    if len(val) == 0:
        raise UserError(f"{data_dir / 'val'}: no images")
    return SeededAugmentation(train_base, train_tf, seed), val, list(train_base.classes)


# -------------------------------------------------------------------------------------------- model
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


def load_backbone_source(args: argparse.Namespace) -> tuple[dict[str, torch.Tensor], dict]:
    """(torchvision-keyed backbone state dict, info with format/source_sha256/variant) for the run's --weights,
    or its --random-init network (seeded by --seed, residual branches' last BN at --residual-bn-init)."""
    from mocoeval.convert.formats import load_resnet50, random_init_resnet50

    if args.random_init:
        return random_init_resnet50(args.seed, 1.0 if args.residual_bn_init is None else args.residual_bn_init)

    state, info = load_resnet50(args.weights, fmt=args.weights_format, trust_pickle=args.trust_pickle)
    return {k: v for k, v in state.items() if not k.startswith("fc.")}, dict(info)


def load_backbone(model: FrozenBackboneResNet50, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy the backbone tensors into `model`; exactly fc may be missing (num_batches_tracked too, unused)."""
    result = model.load_state_dict(dict(state), strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise UserError(f"{source}: not a ResNet-50 backbone (missing {missing[:3]}, "
                        f"unexpected {result.unexpected_keys[:3]})")


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


def check_backbone_unchanged(model_state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor],
                             source: str = "the checkpoint") -> None:
    """The official sanity check: raise SanityCheckError (one line) if any backbone tensor changed."""
    problem = backbone_mismatch(model_state, reference)
    if problem:
        raise SanityCheckError(f"sanity check failed against {source}: {problem}; the backbone must stay frozen")


# ------------------------------------------------------------------------------------ train / eval
def lr_at_epoch(base_lr: float, epoch: int, schedule) -> float:
    """Step schedule: base_lr x 0.1 for every milestone <= epoch (0-based epochs, as the official script)."""
    return base_lr * LR_DECAY ** sum(epoch >= m for m in schedule)


def build_optimizer(model: FrozenBackboneResNet50, lr: float, momentum: float, weight_decay: float):
    params = [p for p in model.parameters() if p.requires_grad]
    assert len(params) == 2, "only fc.weight and fc.bias may be trainable"  # the official script's check
    return torch.optim.SGD(params, lr, momentum=momentum, weight_decay=weight_decay)


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks=(1, 5)) -> list[int]:
    """How many samples have their target among the top-k logits, for each k (k capped at num_classes)."""
    maxk = min(max(ks), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices
    hit = pred.eq(targets.view(-1, 1))
    return [int(hit[:, :min(k, maxk)].any(dim=1).sum().item()) for k in ks]


def cpu_has_fast_bf16() -> bool:
    """Native bf16 matrix instructions (AVX-512-BF16 or AMX); without them bf16 autocast is slow on CPU."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # older torch: assume it is fine and let the user measure
        return True


class Runner:
    """Everything a linear-eval step needs: model, the (possibly DDP-wrapped) fc, device, precision."""

    def __init__(self, model: FrozenBackboneResNet50, device: torch.device, precision: str = "fp32",
                 channels_last: bool = False, distributed: bool = False):
        if precision not in PRECISIONS:
            raise UserError(f"--precision must be one of {PRECISIONS}, got {precision!r}")
        self.model, self.device, self.precision, self.channels_last = model, device, precision, channels_last
        if precision == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16():
            logger.warning("--precision bf16 on a CPU without AVX-512-BF16/AMX is emulated and usually several "
                           "times slower than fp32 (measured 4x on an AVX2 EPYC); consider fp32 --channels-last")
        model.to(device)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        self.head: nn.Module = model.fc
        if distributed:  # only fc has gradients to synchronise
            self.head = nn.parallel.DistributedDataParallel(
                model.fc, device_ids=[device.index] if device.type == "cuda" else None)

    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return images.to(self.device, non_blocking=True, memory_format=fmt)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen backbone forward: no autograd graph, optional bf16 autocast; fp32 output for fc."""
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                             enabled=self.precision == "bf16"):
            return self.model.features(self.to_input(images)).float()

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def train_one_epoch(runner: Runner, loader, optimizer, epoch: int, *, print_freq: int = 10, writer=None,
                    progress: bool = True, desc: str = "", start_iter: int = 0, carried: list | None = None,
                    stop: StopRequest | None = None, world: int = 1) -> dict:
    """One pass over `loader` updating fc only; returns train loss, top-1 and throughput.

    Resumed mid-epoch, `loader` holds the epoch's batches from `start_iter` on and `carried` the sums before it
    ([loss sum, top-1 correct, images, seconds]). Once `stop` is requested (agreed by all `world` processes at log
    steps) it returns after the current iteration with "stopped_after" (iterations done) and those sums.
    """
    from tqdm import tqdm

    runner.model.train()  # stays in eval mode (see FrozenBackboneResNet50.train), like the official script
    criterion = nn.CrossEntropyLoss()
    loss_sum, correct1, seen, elapsed_before = carried or (0.0, 0, 0, 0.0)
    n_iters = start_iter + len(loader)
    start = time.perf_counter()
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True)
    for it, (images, targets) in enumerate(bar, start=start_iter):
        targets = targets.to(runner.device, non_blocking=True)
        logits = runner.logits(images)
        loss = criterion(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = targets.shape[0]
        loss_sum += loss.item() * n
        correct1 += topk_correct(logits.detach(), targets, ks=(1,))[0]
        seen += n
        at_log = it % print_freq == 0 or it == n_iters - 1
        if at_log:
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", top1=f"{100 * correct1 / seen:.1f}")
            if writer is not None:
                writer.add_scalar("train/loss_iter", loss.item(), epoch * n_iters + it)
        if stop is not None and it + 1 < n_iters and (world == 1 or at_log) \
                and any_process([stop.requested], world, runner.device)[0]:
            sums = torch.tensor([loss_sum, correct1, seen], dtype=torch.float64, device=runner.device)
            if world > 1:
                dist.all_reduce(sums)  # the checkpoint carries the totals; rank 0 alone resumes with them
            bar.close()
            return {"stopped_after": it + 1,
                    "carried": [*sums.tolist(), elapsed_before + time.perf_counter() - start]}
    elapsed = elapsed_before + time.perf_counter() - start
    stats = torch.tensor([loss_sum, correct1, seen], dtype=torch.float64, device=runner.device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(stats)
    loss_sum, correct1, seen = stats.tolist()
    return {"train_loss": loss_sum / max(seen, 1), "train_top1": 100 * correct1 / max(seen, 1),
            "train_images_per_s": seen / elapsed if elapsed > 0 else float("nan"), "train_time_s": elapsed}


@torch.no_grad()
def evaluate(runner: Runner, loader, *, progress: bool = True, desc: str = "val") -> dict:
    """Top-1/top-5 (percent) and loss over `loader` (summed over ranks when distributed)."""
    from tqdm import tqdm

    runner.model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    loss_sum, c1, c5, seen = 0.0, 0, 0, 0
    for images, targets in tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        targets = targets.to(runner.device, non_blocking=True)
        logits = runner.model.fc(runner.features(images))
        loss_sum += criterion(logits, targets).item()
        k1, k5 = topk_correct(logits, targets, ks=(1, 5))
        c1, c5, seen = c1 + k1, c5 + k5, seen + targets.shape[0]
    stats = torch.tensor([loss_sum, c1, c5, seen], dtype=torch.float64, device=runner.device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(stats)
    loss_sum, c1, c5, seen = stats.tolist()
    return {"val_loss": loss_sum / max(seen, 1), "top1": 100 * c1 / max(seen, 1), "top5": 100 * c5 / max(seen, 1),
            "val_images": int(seen)}


# ------------------------------------------------------------------------------ distributed set-up
def init_distributed(device_arg: str | None) -> tuple[torch.device, int, int, bool]:
    """(device, rank, world size, distributed?) — a process group only under torchrun with WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want = device_arg or ("cuda" if torch.cuda.is_available() else "cpu")
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {want}: CUDA is not available on this machine (use --device cpu)")
    if world > 1:
        if want.startswith("cuda"):
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return device, dist.get_rank(), dist.get_world_size(), True
    device = torch.device(want)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    return device, rank, 1, False


def _shard(dataset, rank: int, world: int):
    """Every world-th sample (no padding, unlike DistributedSampler): each val image counted exactly once."""
    return dataset if world == 1 else torch.utils.data.Subset(dataset, range(rank, len(dataset), world))


def setup_logging(output_dir: Path | None, is_main: bool) -> None:
    """Log lines through tqdm.write (they don't break progress bars) and into output_dir/log.txt."""
    from tqdm import tqdm

    class TqdmHandler(logging.Handler):
        def emit(self, record):
            tqdm.write(self.format(record), file=sys.stdout)

    for old in list(logger.handlers):  # a previous run in this process (tests) left its handlers
        logger.removeHandler(old)
        old.close()
    logger.propagate = False
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    fmt = logging.Formatter("[%(asctime)s linear] %(message)s", "%m/%d %H:%M:%S")
    handler = TqdmHandler()
    handler.setFormatter(fmt)
    logger.addHandler(handler)
    if output_dir is not None and is_main:
        file_handler = logging.FileHandler(output_dir / "log.txt")
        file_handler.setFormatter(fmt)
        logger.addHandler(file_handler)


# ---------------------------------------------------------------------------------------- the run
# Settings a resumed run must share with the checkpoint; anything else may change (with a warning).
_RESUME_IDENTITY = ("seed", "image_size", "batch_size", "lr", "momentum", "weight_decay", "schedule",
                    "feature_norm")


def default_output_dir(args) -> Path:
    name = "random-init" if args.random_init else Path(args.weights).name.split(".")[0]
    if args.random_init and args.residual_bn_init not in (None, 1.0):  # another network: its own folder
        name += f"_residual-bn-{args.residual_bn_init:g}"
    return Path("output") / "linear" / f"{name}_seed{args.seed}"


def _load_checkpoint(path: Path) -> dict:
    ckpt = torch_load_safely(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: not a linear-eval checkpoint written by transfer/run_linear.py")
    return ckpt


def resolve_resume(resume: str | None, output_dir: Path) -> Path | None:
    if not resume:
        return None
    if resume == "auto":
        path = output_dir / CHECKPOINT_NAME
        return path if path.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise UserError(f"--resume {resume}: no such file")
    return path


def run(args: argparse.Namespace) -> dict:
    """The whole linear evaluation for parsed CLI arguments; returns the metrics written to metrics.json."""
    wall_start = time.time()
    if args.random_init == bool(args.weights):
        raise UserError("give exactly one of --weights CKPT or --random-init")
    if args.residual_bn_init is not None:
        if not args.random_init:
            raise UserError("--residual-bn-init describes a --random-init network; a checkpoint has its own scales")
        check_residual_bn_init(args.residual_bn_init)
    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size),
                        ("--image-size", args.image_size), ("--print-freq", args.print_freq)):
        if value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    if args.workers < 0:
        raise UserError(f"--workers must be >= 0, got {args.workers}")
    device, rank, world, distributed = init_distributed(args.device)
    is_main = rank == 0
    if args.batch_size % world:
        raise UserError(f"--batch-size {args.batch_size} is not divisible by the {world} processes")
    output_dir = check_output_dir(args.output_dir or default_output_dir(args))
    # Every input is read before anything is created (no output folder, no log.txt for bad input): the data
    # first, so that a bad folder fails before the (slow) checkpoint read, then the backbone and --resume.
    train_set, val_set, classes = build_datasets(args.data, args.image_size, args.seed)
    backbone_state, info = load_backbone_source(args)
    resume_path = resolve_resume(args.resume, output_dir)
    ckpt = _load_checkpoint(resume_path) if resume_path is not None else None

    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    if distributed:
        dist.barrier()
    setup_logging(output_dir, is_main)
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()}
    config["output_dir"] = str(output_dir)
    logger.info("linear classification: %s", " ".join(f"{k}={v}" for k, v in sorted(config.items())))
    if device.type == "cuda":
        # bit-reproducible (exact resume, as on CPU), like the official script given --seed; measured on an
        # H100 at 224 px, batch 256: no slower than cudnn.benchmark for this forward-only backbone
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    logger.info("data %s: %d train / %d val images, %d classes", args.data, len(train_set), len(val_set),
                len(classes))
    source = info["format_description"] if args.random_init else str(args.weights)
    variant = dict(info.get("variant") or {})
    if args.variant:
        variant["name"] = args.variant
    logger.info("backbone: %s (format %s, variant %s, sha256 %s)", source, info.get("format"),
                variant.get("name"), str(info.get("source_sha256"))[:12])

    torch.manual_seed(args.seed)  # fc initialisation
    model = FrozenBackboneResNet50(num_classes=len(classes), feature_norm=args.feature_norm)
    load_backbone(model, backbone_state, source)
    del backbone_state
    runner = Runner(model, device, args.precision, args.channels_last, distributed)
    optimizer = build_optimizer(model, args.lr, args.momentum, args.weight_decay)

    history: list[dict] = []
    best = {"top1": -1.0, "top5": 0.0, "epoch": 0}
    start_epoch, start_iter, carried = 0, 0, None
    per_rank_batch = args.batch_size // world
    # per process: DistributedSampler pads to ceil(len / world) images; the last batch may be partial
    iters_per_epoch = math.ceil(math.ceil(len(train_set) / world) / per_rank_batch)
    if args.resume == "auto" and resume_path is None:
        logger.info("--resume auto: no %s in %s, starting from scratch", CHECKPOINT_NAME, output_dir)
    if ckpt is not None:
        if ckpt.get("source_sha256") != info.get("source_sha256"):
            raise UserError(f"--resume {resume_path}: it was trained on another backbone "
                            f"(sha256 {str(ckpt.get('source_sha256'))[:12]}, this run {str(info.get('source_sha256'))[:12]})")
        if list(ckpt.get("classes", [])) != classes:
            raise UserError(f"--resume {resume_path}: its classes differ from {args.data}/train's")
        old_args = ckpt.get("args", {})
        for key in _RESUME_IDENTITY:
            if key in old_args and old_args[key] != config.get(key):
                raise UserError(f"--resume {resume_path}: it was run with {key}={old_args[key]!r}, "
                                f"this run has {config.get(key)!r}; pass the same value")
        changed = [k for k in config if k in old_args and old_args[k] != config[k]
                   and k not in ("resume", "output_dir", "workers", "print_freq", "device", "epochs")]
        if changed:
            logger.warning("resuming with changed settings: %s", ", ".join(
                f"{k} {old_args[k]!r} -> {config[k]!r}" for k in changed))
        if int(ckpt["epoch"]) > args.epochs:
            raise UserError(f"--resume {resume_path}: it is at epoch {ckpt['epoch']}, beyond --epochs {args.epochs}")
        model.fc.load_state_dict(ckpt["fc"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch = int(ckpt["epoch"])
        history = list(ckpt.get("history", []))
        best = dict(ckpt.get("best", best))
        start_iter = int(ckpt.get("step_in_epoch") or 0)  # stopped mid-epoch: that many iterations of the next
        if start_iter:
            progress = ckpt["epoch_progress"]
            if progress["iters_per_epoch"] != iters_per_epoch:
                raise UserError(f"--resume {resume_path}: it stopped at iteration {start_iter} of "
                                f"{progress['iters_per_epoch']} per epoch, this run has {iters_per_epoch} "
                                "(other data or number of processes)")
            carried = progress["carried"] if rank == 0 else [0.0, 0, 0, progress["carried"][3]]
        logger.info("resumed from %s at epoch %d%s (best top-1 %.2f at epoch %d)%s", resume_path, start_epoch,
                    f", iteration {start_iter}/{iters_per_epoch} of epoch {start_epoch + 1}" if start_iter else "",
                    best["top1"], best["epoch"],
                    "; training already finished: re-checking and re-recording it" if start_epoch == args.epochs
                    else "")

    if distributed:
        train_sampler = torch.utils.data.DistributedSampler(train_set, num_replicas=world, rank=rank,
                                                            shuffle=True, seed=args.seed)
    else:
        train_sampler = None
    loader_kwargs = dict(num_workers=args.workers, pin_memory=device.type == "cuda")
    val_loader = torch.utils.data.DataLoader(_shard(val_set, rank, world), batch_size=per_rank_batch,
                                             shuffle=False, **loader_kwargs)

    writer = None
    if is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(output_dir / "tb"))

    from tqdm import tqdm

    sanity_checked_first_epoch = False

    def sanity_check(when: str) -> None:
        reference, _ = load_backbone_source(args)
        check_backbone_unchanged(model.state_dict(), reference, source)
        logger.info("sanity check %s passed: every backbone tensor equals %s", when, source)

    def save_checkpoint(epochs_done: int, improved: bool = False, mid_epoch: dict | None = None) -> Path:
        path = output_dir / CHECKPOINT_NAME
        if is_main:
            ckpt = {"format": CHECKPOINT_FORMAT, "epoch": epochs_done, "arch": ARCH, "classes": classes,
                    "fc": {k: v.detach().cpu() for k, v in model.fc.state_dict().items()},
                    "optimizer": optimizer.state_dict(), "best": best, "history": history,
                    "source_sha256": info.get("source_sha256"), "variant": variant, "args": config,
                    **(mid_epoch or {})}
            atomic_torch_save(ckpt, path)
            if improved:
                atomic_torch_save(ckpt, output_dir / BEST_CHECKPOINT_NAME)
        if distributed:
            dist.barrier()  # nobody stops while rank 0 writes
        return path

    # Ctrl-C / SIGTERM: finish the iteration, save it, stop (every process agrees at the next log step)
    stop = StopRequest("saving after this iteration, then stopping").install()
    epochs_bar = tqdm(total=args.epochs, initial=start_epoch, desc="epochs", disable=not is_main,
                      dynamic_ncols=True)
    try:
        for epoch in range(start_epoch, args.epochs):
            first_iter = start_iter if epoch == start_epoch else 0
            lr = lr_at_epoch(args.lr, epoch, args.schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr
            train_set.set_epoch(epoch)
            if train_sampler is not None:
                train_sampler.set_epoch(epoch)
                sampler = train_sampler
            else:
                gen = torch.Generator().manual_seed(sample_seed(args.seed, epoch, -1))
                sampler = torch.utils.data.RandomSampler(train_set, generator=gen)
            if first_iter:  # resumed mid-epoch: the same order, without the batches already trained
                sampler = list(sampler)[first_iter * per_rank_batch:]
            train_loader = torch.utils.data.DataLoader(train_set, batch_size=per_rank_batch, sampler=sampler,
                                                       **loader_kwargs)
            desc = f"epoch {epoch + 1}/{args.epochs}"
            train_stats = train_one_epoch(runner, train_loader, optimizer, epoch, print_freq=args.print_freq,
                                          writer=writer, progress=is_main, desc=desc, start_iter=first_iter,
                                          carried=carried if first_iter else None, stop=stop, world=world)
            if "stopped_after" in train_stats:
                done = train_stats["stopped_after"]
                path = save_checkpoint(epoch, mid_epoch={"step_in_epoch": done, "epoch_progress": {
                    "iters_per_epoch": iters_per_epoch, "carried": train_stats["carried"]}})
                raise stop.interrupted(f"stopped after iteration {done}/{iters_per_epoch} of epoch {epoch + 1}, "
                                       f"state in {path}; continue with --resume auto")
            val_stats = evaluate(runner, val_loader, progress=is_main, desc=f"{desc} val")
            entry = {"epoch": epoch + 1, "lr": lr, **train_stats, **val_stats}
            history.append(entry)
            if val_stats["top1"] > best["top1"]:
                best = {"top1": val_stats["top1"], "top5": val_stats["top5"], "epoch": epoch + 1}
                improved = True
            else:
                improved = False
            logger.info("epoch %d/%d lr %.4g: train loss %.4f top-1 %.2f (%.0f img/s) | val top-1 %.2f top-5 %.2f"
                        " | best top-1 %.2f (epoch %d)", epoch + 1, args.epochs, lr, train_stats["train_loss"],
                        train_stats["train_top1"], train_stats["train_images_per_s"], val_stats["top1"],
                        val_stats["top5"], best["top1"], best["epoch"])
            if writer is not None:
                for key in ("train_loss", "train_top1", "train_images_per_s"):
                    writer.add_scalar(f"train/{key[len('train_'):]}", train_stats[key], epoch + 1)
                writer.add_scalar("train/lr", lr, epoch + 1)
                for key in ("top1", "top5", "val_loss"):
                    writer.add_scalar(f"val/{key}", val_stats[key], epoch + 1)
                writer.flush()
            path = save_checkpoint(epoch + 1, improved)
            epochs_bar.update(1)
            epochs_bar.set_postfix(top1=f"{val_stats['top1']:.2f}", best=f"{best['top1']:.2f}")
            # a signal during the evaluation: the epoch is saved, stop here (unless it was the last)
            if any_process([stop.requested], world, device)[0] and epoch + 1 < args.epochs:
                raise stop.interrupted(f"stopped after epoch {epoch + 1} of {args.epochs}, state in {path}; "
                                       "continue with --resume auto")
            # the official script checks once after its first epoch; so do we (early failure), and at the end
            if not sanity_checked_first_epoch and epoch + 1 < args.epochs:
                sanity_check("after the first epoch")
                sanity_checked_first_epoch = True
    finally:
        stop.restore()
        epochs_bar.close()
    if writer is not None:
        writer.close()

    if not history:
        raise UserError(f"nothing to evaluate: --epochs {args.epochs} and the checkpoint is at epoch {start_epoch}")
    sanity_check("at the end")
    final = history[-1]
    metrics = {
        "top1": final["top1"], "top5": final["top5"], "best_top1": best["top1"], "best_top5": best["top5"],
        "best_epoch": best["epoch"], "epochs": len(history), "val_images": final["val_images"],
        "num_classes": len(classes), "sanity_check": "passed", "source_sha256": info.get("source_sha256"),
        "source_format": info.get("format"), "weights": None if args.random_init else str(args.weights),
        "variant": variant, "settings": config, "world_size": world, "history": history,
    }
    if is_main:
        atomic_write_json(output_dir / METRICS_NAME, metrics)
        logger.info("final top-1 %.2f top-5 %.2f; best top-1 %.2f (epoch %d); wrote %s", metrics["top1"],
                    metrics["top5"], metrics["best_top1"], metrics["best_epoch"], output_dir / METRICS_NAME)
        record_and_tabulate(args, info, variant, metrics, config, wall_time_s=time.time() - wall_start)
    if distributed:
        dist.barrier()
    return metrics


def record_and_tabulate(args, info: Mapping[str, Any], variant: Mapping, metrics: Mapping, config: Mapping,
                        wall_time_s: float) -> Path:
    """One record in the results store (the command rebuilds the tables from the store afterwards)."""
    from mocoeval.results.store import write_run_record

    record_metrics = {k: metrics[k] for k in ("top1", "top5", "best_top1", "best_top5", "best_epoch", "epochs",
                                              "num_classes", "val_images")}
    path = write_run_record(
        "linear", variant=variant, metrics=record_metrics, source_sha256=info.get("source_sha256"),
        weights=None if args.random_init else str(args.weights),
        weights_sha256=None if args.random_init else info.get("source_sha256"),
        config=config, seeds=[args.seed], wall_time_s=wall_time_s,
        extra={"source_format": info.get("format"), "sanity_check": "passed",
               "feature_norm": bool(getattr(args, "feature_norm", False))})
    logger.info("results record: %s", path)
    return path
