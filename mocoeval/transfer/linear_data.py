"""Linear evaluation's data: the protocol's transforms, crops seeded per (seed, epoch, image) so that a resumed
run or any number of workers sees the same batches, the val split numbered like train, and val shards."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torchvision import datasets
from torchvision import transforms as T

from mocoeval.runtime.errors import UserError

RRC_SCALE = (0.08, 1.0)  # torchvision's RandomResizedCrop default, as the official script uses it
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def val_resize_size(image_size: int) -> int:
    """The shorter side the val images are resized to before the center crop: 256 for 224, same ratio else."""
    return int(image_size * 256 / 224)


def input_mean_std(input_norm: Mapping[str, Any] | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalize's mean/std (0..1 scale) for the normalisation the weights record (`load_resnet50`'s info["input"],
    0..255 scale); ImageNet's when none is recorded. The images are read as RGB: other weights are refused."""
    if not input_norm:
        return IMAGENET_MEAN, IMAGENET_STD
    if input_norm.get("channels") != "RGB":
        raise UserError(f"the weights expect {input_norm.get('channels')} input; linear evaluation feeds RGB images")
    return (
        tuple(round(float(m) / 255, 6) for m in input_norm["pixel_mean"]),
        tuple(round(float(s) / 255, 6) for s in input_norm["pixel_std"]),
    )


def build_transforms(image_size: int, input_norm: Mapping[str, Any] | None = None) -> tuple[T.Compose, T.Compose]:
    mean, std = input_mean_std(input_norm)
    normalize = T.Normalize(mean=mean, std=std)
    train = T.Compose(
        [T.RandomResizedCrop(image_size, scale=RRC_SCALE), T.RandomHorizontalFlip(), T.ToTensor(), normalize]
    )
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


class ImageFolderWithClasses(datasets.ImageFolder):
    """ImageFolder using a given class -> index mapping (the train split's), so val labels line up."""

    def __init__(self, root, class_to_idx: Mapping[str, int], **kwargs):
        self._given_class_to_idx = dict(class_to_idx)
        super().__init__(root, allow_empty=True, **kwargs)

    def find_classes(self, directory):
        present = sorted(e.name for e in os.scandir(directory) if e.is_dir())
        unknown = [c for c in present if c not in self._given_class_to_idx]
        if unknown:
            raise UserError(
                f"{directory}: class folder(s) not in the train split: {', '.join(unknown[:5])}"
                + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
            )
        classes = sorted(self._given_class_to_idx, key=self._given_class_to_idx.get)
        return classes, self._given_class_to_idx


def build_datasets(data_dir, image_size: int, seed: int, input_norm: Mapping[str, Any] | None = None):
    """(train dataset with seeded augmentation, val dataset, class names) of an ImageFolder root, normalised as
    `input_norm` says (see input_mean_std)."""
    from mocoeval.data.layout import check_imagefolder

    data_dir = Path(data_dir)
    check_imagefolder(data_dir, splits=("train", "val"))
    train_tf, val_tf = build_transforms(image_size, input_norm)
    try:
        train_base = datasets.ImageFolder(data_dir / "train")
        val = ImageFolderWithClasses(data_dir / "val", train_base.class_to_idx, transform=val_tf)
    except FileNotFoundError as e:  # no class folder / no image in a split
        raise UserError(f"{data_dir}: {e}") from None
    if len(val) == 0:
        raise UserError(f"{data_dir / 'val'}: no images")
    return SeededAugmentation(train_base, train_tf, seed), val, list(train_base.classes)


def shard(dataset, rank: int, world: int):
    """Every world-th sample (no padding, unlike DistributedSampler): each val image counted exactly once."""
    return dataset if world == 1 else torch.utils.data.Subset(dataset, range(rank, len(dataset), world))
