"""The loader's views finished on the training device (`ViewBatch`): normalised, or with the colour part of MoCo's
view pipelines applied there too, batched over cropped uint8 views.

The loader's workers draw every parameter of a view and crop it (`augment.TwoViewAugment` with
`colour_on_device`); here the rest runs batched from those parameters, in float32, without a host
synchronisation: the parameters arrive on the host with the views, so which views need an op is decided there
and each op runs only on those views (index_select / index_copy_ on the device).
  aug+: [jitter, in the view's order] -> [grayscale] -> [Gaussian blur] -> [flip] -> ImageNet mean/std
  v1:   [grayscale] -> jitter -> [flip] -> ImageNet mean/std
Jitter, grayscale and flip are torchvision's float-tensor ops (adjust_brightness/contrast/saturation/hue,
rgb_to_grayscale, hflip), per view. The reference pipeline runs them on PIL images, which round to uint8
after every op, and blurs with PIL's box-blur approximation of a Gaussian; so the views here equal the
reference's in distribution, not bit for bit (tests/test_views.py measures how close).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mocoeval.pretrain.augment import (
    BLUR_SIGMA,
    IMAGENET_MEAN,
    IMAGENET_STD,
    P_BLUR_ON,
    P_BLUR_SIGMA,
    P_BRIGHTNESS,
    P_FLIP_ON,
    P_GRAY_ON,
    P_HUE,
    P_JITTER_ON,
    P_ORDER,
    VIEW_PARAMS,
    normalize_views,
    standardize_,
    to_unit_float,
)

BLUR_RADIUS = math.ceil(3 * BLUR_SIGMA[1])  # the kernel covers +-3 sigma of the widest blur


@torch.no_grad()
def augment_views(
    views: torch.Tensor,
    params: torch.Tensor,
    aug_plus: bool,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
) -> torch.Tensor:
    """uint8 (N, 3, S, S) cropped views and their (N, VIEW_PARAMS) parameters -> float32 (N, 3, S, S), normalised.
    `params` is read on the host (where the loader delivers it; a device tensor is copied there, a sync)."""
    if views.ndim != 4 or views.shape[1] != 3 or params.shape != (views.shape[0], VIEW_PARAMS):
        raise ValueError(
            f"augment_views: views must be (N, 3, S, S) and params (N, {VIEW_PARAMS}), got "
            f"{tuple(views.shape)} and {tuple(params.shape)}"
        )
    x = to_unit_float(views)
    host = params.detach().to("cpu", torch.float32)
    check_params(host)
    p = host.to(x.device, non_blocking=True)

    def apply(op, rows: torch.Tensor, *args):
        """x[rows] = op(x[rows], *args[rows]) for the views in the host bool mask `rows`."""
        nonlocal x
        if not rows.any():
            return
        if rows.all():
            x = op(x, *args)
            return
        idx = rows.nonzero().flatten().to(x.device, non_blocking=True)
        x.index_copy_(0, idx, op(x.index_select(0, idx), *(a.index_select(0, idx) for a in args)))

    def gray(v):  # a tensor of its own: x is updated in place
        return grayscale(v).contiguous()

    if not aug_plus:
        apply(gray, host[:, P_GRAY_ON] > 0)
    jitter_on = host[:, P_JITTER_ON] > 0
    order = host[:, P_ORDER].round().long()
    ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)  # torchvision ColorJitter's fn ids
    for position in range(4):  # each view gets one op per position: disjoint rows
        for fn, op in enumerate(ops):
            apply(op, jitter_on & (order[:, position] == fn), p[:, P_BRIGHTNESS + fn])
    if aug_plus:
        apply(gray, host[:, P_GRAY_ON] > 0)
        apply(gaussian_blur, host[:, P_BLUR_ON] > 0, p[:, P_BLUR_SIGMA])
    apply(lambda v: v.flip(-1), host[:, P_FLIP_ON] > 0)
    return standardize_(x, mean, std)


_FLAGS = {"jitter": P_JITTER_ON, "grayscale": P_GRAY_ON, "blur": P_BLUR_ON, "flip": P_FLIP_ON}


def check_params(host: torch.Tensor):
    """One-line ValueError for the first view whose (host) parameter row `TwoViewAugment` could not have drawn:
    a flag not 0/1, a jitter order that is no permutation of the four ops, a factor outside what ColorJitter
    draws from, a blur sigma outside BLUR_SIGMA (the kernel is cut at its upper end). A few host ops per batch."""
    lo, hi = BLUR_SIGMA
    jitter, blur = host[:, P_JITTER_ON] == 1, host[:, P_BLUR_ON] == 1
    order_ok = (host[:, P_ORDER].sort(dim=1).values == torch.arange(4.0)).all(dim=1)
    factors_ok = (host[:, P_BRIGHTNESS:P_HUE] >= 0).all(dim=1) & (host[:, P_HUE].abs() <= 0.5)
    sigma_ok = (host[:, P_BLUR_SIGMA] >= lo - 1e-6) & (host[:, P_BLUR_SIGMA] <= hi + 1e-6)
    checks = [(~torch.isfinite(host).all(dim=1), "a number that is not finite")]
    checks += [((host[:, col] != 0) & (host[:, col] != 1), f"{name} flag not 0 or 1") for name, col in _FLAGS.items()]
    checks += [
        (jitter & ~order_ok, "jitter order not a permutation of 0-3"),
        (jitter & ~factors_ok, "jitter factor out of range (brightness, contrast, saturation >= 0; |hue| <= 0.5)"),
        (blur & ~sigma_ok, f"blur sigma outside [{lo}, {hi}]"),
    ]
    found = [(int(mask.nonzero()[0]), text) for mask, text in checks if mask.any()]
    if found:
        row, text = min(found, key=lambda f: f[0])
        raise ValueError(f"augment_views: params row {row}: {text}: {host[row].tolist()}")


def _per_view(factor: torch.Tensor) -> torch.Tensor:
    return factor.view(-1, 1, 1, 1)


def _blend(a: torch.Tensor, b: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """torchvision's _blend for float images: ratio * a + (1 - ratio) * b, clamped to [0, 1]."""
    r = _per_view(ratio)
    return (r * a + (1.0 - r) * b).clamp_(0.0, 1.0)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """rgb_to_grayscale with 3 output channels (ITU-R 601-2 luma, torchvision's weights)."""
    r, g, b = x.unbind(dim=-3)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(-3).expand_as(x)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, torch.zeros_like(x), factor)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = grayscale(x)[:, :1].mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(x, mean, factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, grayscale(x), factor)


def adjust_hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    h, s, v = rgb_to_hsv(x).unbind(dim=-3)
    h = torch.remainder(h + factor.view(-1, 1, 1), 1.0)
    return hsv_to_rgb(torch.stack((h, s, v), dim=-3))


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """torchvision's float RGB -> HSV (h in [0, 1)), batched."""
    r, g, b = x.unbind(dim=-3)
    maxc, _ = x.max(dim=-3)
    minc, _ = x.min(dim=-3)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_divisor = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_divisor, (maxc - g) / cr_divisor, (maxc - b) / cr_divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), dim=-3)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """torchvision's float HSV -> RGB, batched."""
    h, s, v = x.unbind(dim=-3)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int32)
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    i = i % 6
    mask = i.unsqueeze(dim=-3) == torch.arange(6, device=i.device).view(-1, 1, 1)
    a1 = torch.stack((v, q, p, p, t, v), dim=-3)
    a2 = torch.stack((t, v, v, q, p, p), dim=-3)
    a3 = torch.stack((p, p, t, v, v, q), dim=-3)
    a4 = torch.stack((a1, a2, a3), dim=-4)
    return torch.einsum("...ijk, ...xijk -> ...xjk", mask.to(dtype=x.dtype), a4)


def gaussian_kernels(sigma: torch.Tensor, radius: int = BLUR_RADIUS) -> torch.Tensor:
    """(N, 2 * radius + 1) normalised 1-D Gaussian kernels, one per sigma."""
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=sigma.device)
    sigma = sigma.clamp(min=1e-3).view(-1, 1)
    k = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return k / k.sum(dim=1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int = BLUR_RADIUS) -> torch.Tensor:
    """Separable Gaussian blur, sigma per view, edges replicated (as PIL's blur treats them): one grouped
    convolution per direction over all views and channels."""
    n, c, h, w = x.shape
    if n == 0:
        return x
    k = gaussian_kernels(sigma, radius).repeat_interleave(c, dim=0)  # (N * C, K)
    flat = x.reshape(1, n * c, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), k.view(n * c, 1, 1, -1), groups=n * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), k.view(n * c, 1, -1, 1), groups=n * c)
    return flat.view(n, c, h, w)


class ViewBatch:
    """A loader batch's views (uint8 (B, 2, 3, S, S) and params (B, 2, VIEW_PARAMS)) -> (im_q, im_k), float and
    normalised on `device`, in `memory_format`: normalisation only, or with `colour_on_device` the colour ops
    as well (batched on the device; statistically, not bitwise, equal to the PIL ops)."""

    def __init__(self, device: torch.device, aug_plus: bool, colour_on_device: bool, channels_last: bool = False):
        self.device, self.aug_plus, self.colour_on_device = device, aug_plus, colour_on_device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, views: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        views = views.to(self.device, non_blocking=True)
        if self.colour_on_device:
            flat = params.flatten(0, 1)  # stays on the host: augment_views picks each op's views there
            x = augment_views(views.flatten(0, 1), flat, self.aug_plus).unflatten(0, views.shape[:2])
        else:
            x = normalize_views(views)
        return tuple(x[:, v].contiguous(memory_format=self.memory_format) for v in range(2))
