"""MoCo's two-view augmentations on PIL images: v1 (MoCo v1 / InstDisc) and aug+ (MoCo v2 / SimCLR-style).

Order and numbers are the protocol's (see /work/shared/protocol.md, "Pretraining"):
  v1:   RandomResizedCrop(s, scale 0.2-1) -> RandomGrayscale(0.2) -> ColorJitter(0.4, 0.4, 0.4, 0.4)
        -> HorizontalFlip -> ToTensor -> ImageNet mean/std
  aug+: RandomResizedCrop(s, scale 0.2-1) -> RandomApply(ColorJitter(0.4, 0.4, 0.4, 0.1), p 0.8)
        -> RandomGrayscale(0.2) -> RandomApply(GaussianBlur(sigma ~ U[0.1, 2.0]), p 0.5)
        -> HorizontalFlip -> ToTensor -> ImageNet mean/std
All randomness comes from torch's global generator, so seeding it fixes a sample's views.
"""

from __future__ import annotations

import torch
import torchvision.transforms as T
from PIL import ImageFilter

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_SCALE = (0.2, 1.0)
GRAYSCALE_P = 0.2
JITTER_V1 = (0.4, 0.4, 0.4, 0.4)
JITTER_AUG_PLUS = (0.4, 0.4, 0.4, 0.1)
JITTER_AUG_PLUS_P = 0.8
BLUR_SIGMA = (0.1, 2.0)
BLUR_P = 0.5


class GaussianBlur:
    """PIL Gaussian blur with sigma drawn uniformly from `sigma` for every call (SimCLR's blur)."""

    def __init__(self, sigma=BLUR_SIGMA):
        self.sigma = tuple(sigma)

    def __call__(self, img):
        lo, hi = self.sigma
        radius = lo + (hi - lo) * torch.rand(()).item()
        return img.filter(ImageFilter.GaussianBlur(radius=radius))

    def __repr__(self):
        return f"{type(self).__name__}(sigma={self.sigma})"


def moco_transform(image_size: int = 224, aug_plus: bool = False) -> T.Compose:
    """One view's augmentation: v1 by default, MoCo v2's aug+ with `aug_plus`."""
    normalize = T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    if aug_plus:
        ops = [
            T.RandomResizedCrop(image_size, scale=CROP_SCALE),
            T.RandomApply([T.ColorJitter(*JITTER_AUG_PLUS)], p=JITTER_AUG_PLUS_P),
            T.RandomGrayscale(p=GRAYSCALE_P),
            T.RandomApply([GaussianBlur(BLUR_SIGMA)], p=BLUR_P),
            T.RandomHorizontalFlip(),
        ]
    else:
        ops = [
            T.RandomResizedCrop(image_size, scale=CROP_SCALE),
            T.RandomGrayscale(p=GRAYSCALE_P),
            T.ColorJitter(*JITTER_V1),
            T.RandomHorizontalFlip(),
        ]
    return T.Compose(ops + [T.ToTensor(), normalize])


class TwoCropsTransform:
    """Two independent views of one image: [query view, key view]."""

    def __init__(self, base_transform):
        self.base_transform = base_transform

    def __call__(self, img):
        return [self.base_transform(img), self.base_transform(img)]

    def __repr__(self):
        return f"{type(self).__name__}({self.base_transform})"


def eval_transform(image_size: int = 224) -> T.Compose:
    """Deterministic view for feature extraction (kNN monitor): resize to size*256/224, centre crop."""
    return T.Compose(
        [
            T.Resize(round(image_size * 256 / 224)),
            T.CenterCrop(image_size),
            T.ToTensor(),
            T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ]
    )
