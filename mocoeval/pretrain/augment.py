"""MoCo's two-view augmentations on PIL images: v1 (MoCo v1 / InstDisc) and aug+ (MoCo v2 / SimCLR-style).

Order and numbers are the protocol's (see /work/shared/protocol.md, "Pretraining"):
  v1:   RandomResizedCrop(s, scale 0.2-1) -> RandomGrayscale(0.2) -> ColorJitter(0.4, 0.4, 0.4, 0.4)
        -> HorizontalFlip -> ToTensor -> ImageNet mean/std
  aug+: RandomResizedCrop(s, scale 0.2-1) -> RandomApply(ColorJitter(0.4, 0.4, 0.4, 0.1), p 0.8)
        -> RandomGrayscale(0.2) -> RandomApply(GaussianBlur(sigma ~ U[0.1, 2.0]), p 0.5)
        -> HorizontalFlip -> ToTensor -> ImageNet mean/std
All randomness comes from torch's global generator, so seeding it fixes a sample's views.

`moco_transform` is that pipeline as torchvision ops (the reference). The loader runs it as `TwoViewAugment`:
every random parameter of a view is drawn first, with torchvision's own `get_params` in the order the
reference consumes the generator, then applied. So the views are the reference's, exactly, for the same
generator state; they leave the workers as uint8 with their parameters, and `augment_batched.ViewBatch`
finishes them on the training device -- normalising (bit-identical to ToTensor + Normalize), or, with
`colour_on_device`, applying the colour ops there as well, so a GPU's loader only decodes and crops.
"""

from __future__ import annotations

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
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
FLIP_P = 0.5

# One view's drawn parameters, a row of VIEW_PARAMS numbers (float64, so the loader applies exactly what it ships).
P_JITTER_ON, P_BRIGHTNESS, P_CONTRAST, P_SATURATION, P_HUE = 0, 1, 2, 3, 4
P_ORDER = slice(5, 9)  # ColorJitter's fn_idx: 0 brightness, 1 contrast, 2 saturation, 3 hue, in application order
P_GRAY_ON, P_BLUR_ON, P_BLUR_SIGMA, P_FLIP_ON = 9, 10, 11, 12
VIEW_PARAMS = 13


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


class TwoViewAugment:
    """`TwoCropsTransform(moco_transform(image_size, aug_plus))` as the loader runs it: PIL image ->
    (views, params), views uint8 (2, 3, S, S) cropped -- and, unless `colour_on_device`, colour-augmented and
    flipped -- params float64 (2, VIEW_PARAMS). Normalisation is left to `augment_batched.ViewBatch` on the training device."""

    def __init__(self, image_size: int, aug_plus: bool, colour_on_device: bool = False):
        self.image_size, self.aug_plus, self.colour_on_device = int(image_size), bool(aug_plus), colour_on_device
        self.crop = T.RandomResizedCrop(image_size, scale=CROP_SCALE)
        self.jitter = T.ColorJitter(*(JITTER_AUG_PLUS if aug_plus else JITTER_V1))

    def __call__(self, img):
        views, params = zip(*(self.view(img) for _ in range(2)))
        return torch.stack(views), torch.tensor(params, dtype=torch.float64)

    def view(self, img) -> tuple[torch.Tensor, list[float]]:
        c = self.crop
        i, j, h, w = c.get_params(img, c.scale, c.ratio)
        img = TF.resized_crop(img, i, j, h, w, c.size, c.interpolation, antialias=c.antialias)
        params = self.draw_colour_params()
        if not self.colour_on_device:
            img = apply_colour(img, params, self.aug_plus)
        return TF.pil_to_tensor(img), params

    def draw_colour_params(self) -> list[float]:
        """The draws of the reference pipeline after its crop, in its order (RandomApply applies when
        `p >= rand`, RandomGrayscale / RandomHorizontalFlip when `rand < p`)."""
        p = [0.0] * VIEW_PARAMS
        if self.aug_plus:
            if not JITTER_AUG_PLUS_P < torch.rand(1):
                self._draw_jitter(p)
            p[P_GRAY_ON] = float(torch.rand(1) < GRAYSCALE_P)
            if not BLUR_P < torch.rand(1):
                lo, hi = BLUR_SIGMA  # as GaussianBlur.__call__ draws it
                p[P_BLUR_ON], p[P_BLUR_SIGMA] = 1.0, lo + (hi - lo) * torch.rand(()).item()
        else:
            p[P_GRAY_ON] = float(torch.rand(1) < GRAYSCALE_P)
            self._draw_jitter(p)
        p[P_FLIP_ON] = float(torch.rand(1) < FLIP_P)
        return p

    def _draw_jitter(self, p: list[float]):
        j = self.jitter
        order, *factors = j.get_params(j.brightness, j.contrast, j.saturation, j.hue)
        p[P_JITTER_ON] = 1.0
        p[P_BRIGHTNESS : P_HUE + 1] = factors
        p[P_ORDER] = [float(i) for i in order]

    def __repr__(self):
        where = "on the device" if self.colour_on_device else "in the loader"
        return f"{type(self).__name__}({self.image_size} px, {'aug+' if self.aug_plus else 'v1'}, colour {where})"


_ADJUST = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)


def apply_colour(img, p: list[float], aug_plus: bool):
    """A cropped PIL view's colour ops and flip from its drawn parameters, as the reference applies them."""
    gray = p[P_GRAY_ON] > 0
    if gray and not aug_plus:  # v1 greys before the jitter
        img = TF.rgb_to_grayscale(img, num_output_channels=3)
    if p[P_JITTER_ON] > 0:
        for fn in p[P_ORDER]:
            img = _ADJUST[int(fn)](img, p[P_BRIGHTNESS + int(fn)])
    if gray and aug_plus:
        img = TF.rgb_to_grayscale(img, num_output_channels=3)
    if p[P_BLUR_ON] > 0:
        img = img.filter(ImageFilter.GaussianBlur(radius=p[P_BLUR_SIGMA]))
    if p[P_FLIP_ON] > 0:
        img = TF.hflip(img)
    return img


def to_unit_float(views: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 in [0, 1], as ToTensor computes it."""
    return views.to(torch.float32).div_(255)


def standardize_(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Normalize's float operations, in place, on (..., 3, H, W)."""
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return x.sub_(mean_t).div_(std_t)


def normalize_views(views: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float, the reference's ToTensor + Normalize in the same float operations."""
    return standardize_(to_unit_float(views), mean, std)
