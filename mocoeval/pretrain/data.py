"""Pretraining data: an ImageFolder read without labels, two augmented views per image, and a sampler
whose order, like every sample's augmentation, is a pure function of (seed, epoch[, index]).

That makes a run independent of the number of loader workers and of interruptions: an epoch started
after `--resume` sees exactly the batches and views an uninterrupted run would have seen.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.utils.data
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

from mocoeval.data.layout import check_imagefolder
from mocoeval.runtime.errors import UserError

MAX_UNREADABLE_FRACTION = 0.01  # stop once more than 1% of the training images could not be read


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (seed, epoch, index, rank, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def find_classes(folder: Path) -> list[str]:
    return sorted(e.name for e in folder.iterdir() if e.is_dir() and not e.name.startswith("."))


def scan_image_folder(folder: str | Path, what: str = "data") -> tuple[list[tuple[str, int]], list[str]]:
    """(path, class index) pairs of an ImageFolder split, or a UserError naming what is wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{what} folder {folder} does not exist (expected {folder}/<class>/<image>)")
    classes = find_classes(folder)
    if not classes:
        raise UserError(f"{what} folder {folder} has no class sub-folders (expected {folder}/<class>/<image>)")
    samples = make_dataset(str(folder), {c: i for i, c in enumerate(classes)}, IMG_EXTENSIONS, allow_empty=True)
    if not samples:
        raise UserError(f"{what} folder {folder} holds no images ({', '.join(IMG_EXTENSIONS[:4])}, ...)")
    return samples, classes


def check_train_folder(data_dir: str | Path) -> Path:
    """DATA_DIR must hold train/<class>/<image> (ImageNet layout; labels are ignored)."""
    check_imagefolder(data_dir, splits=("train",))
    return Path(data_dir) / "train"


class TwoViewImageFolder(torch.utils.data.Dataset):
    """Unlabelled images -> (transform(image), unreadable) with keys (epoch, index) from `EpochSampler`; the
    pretraining transform (`augment.TwoViewAugment`) gives (views, params): two uint8 views and their parameters.

    Each sample's augmentation draws from torch's generator seeded with (seed, epoch, index). An unreadable
    file is replaced by the next readable one and its index returned in `unreadable` (-1 when none), so
    the training loop can count bad files and stop when there are too many.
    """

    def __init__(self, root: str | Path, transform, seed: int):
        self.root = Path(root)
        self.samples, self.classes = scan_image_folder(self.root, "training")
        self.transform = transform
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key):
        epoch, index = key
        unreadable = -1
        for attempt in range(len(self.samples)):
            i = (index + attempt) % len(self.samples)
            try:
                with Image.open(self.samples[i][0]) as f:
                    img = f.convert("RGB")
                break
            except Exception:  # noqa: BLE001 - whatever PIL raises, the file cannot be used
                unreadable = i if unreadable < 0 else unreadable
        else:
            raise UserError(f"no readable image in {self.root}")
        outer_state = torch.get_rng_state()  # leave the caller's generator untouched (workers=0)
        try:
            torch.default_generator.manual_seed(derive_seed(self.seed, epoch, index))
            views = self.transform(img)
        finally:
            torch.set_rng_state(outer_state)
        return views, unreadable


class EpochSampler(torch.utils.data.Sampler):
    """A permutation fixed by (seed, epoch), cut so that every process gets the same number of samples;
    this process takes every world-th one. Yields (epoch, index) so the dataset can seed each sample.
    `set_epoch(epoch, skip)` leaves out this process's first `skip` samples of the epoch (a run resumed
    mid-epoch); the length stays the whole epoch's."""

    def __init__(self, num_samples: int, seed: int, rank: int = 0, world_size: int = 1):
        self.num_samples, self.seed, self.rank, self.world_size = num_samples, int(seed), rank, world_size
        self.epoch = self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0):
        self.epoch, self.skip = int(epoch), int(skip)

    def __len__(self) -> int:
        return self.num_samples // self.world_size

    def __iter__(self):
        g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, 2**31 - 1))
        perm = torch.randperm(self.num_samples, generator=g)[: len(self) * self.world_size]
        for i in perm[self.rank :: self.world_size][self.skip :].tolist():
            yield self.epoch, i


class LabelledImageFolder(torch.utils.data.Dataset):
    """A labelled ImageFolder split for the kNN monitor; an unreadable image is a one-line error."""

    def __init__(self, root: str | Path, transform, class_names: list[str] | None = None):
        self.samples, self.classes = scan_image_folder(root, "kNN")
        if class_names is not None and self.classes != class_names:
            raise UserError(f"kNN folder {root} has classes {self.classes[:5]}... but train/ has {class_names[:5]}...")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        try:
            with Image.open(path) as f:
                img = f.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise UserError(f"unreadable image {path}: {e}") from None
        return self.transform(img), label
