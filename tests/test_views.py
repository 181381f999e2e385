"""The loader's view path: parameters drawn first, applied in the workers (uint8) or on the device, normalised on
the device -- the same views as the reference pipeline (`moco_transform`), exactly where the ops are the same."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

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
    TwoCropsTransform,
    TwoViewAugment,
    moco_transform,
    normalize_views,
)
from mocoeval.pretrain.augment_batched import ViewBatch, augment_views, gaussian_blur
from mocoeval.pretrain.build import build_loader, colour_on_device
from mocoeval.pretrain.config import RUNTIME_KEYS, parse_config
from mocoeval.pretrain.data import derive_seed


def structured_image(rng: np.random.Generator, h: int = 40, w: int = 52) -> Image.Image:
    """Smooth colour gradients, a bright square and noise: every colour op has something to change."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([xx, yy, 1 - xx * yy], axis=-1) * rng.uniform(80, 200, size=3)
    y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
    base[y0 : y0 + h // 3, x0 : x0 + w // 3] = rng.uniform(150, 255, size=3)
    noisy = base + rng.normal(0, 12, size=base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [structured_image(rng) for _ in range(6)]


@pytest.mark.parametrize("aug_plus", [True, False], ids=["aug+", "v1"])
def test_loader_views_are_the_reference_pipelines_bit_for_bit(images, aug_plus):
    reference = TwoCropsTransform(moco_transform(32, aug_plus=aug_plus))
    augment = TwoViewAugment(32, aug_plus=aug_plus)
    seen = {P_JITTER_ON: set(), P_GRAY_ON: set(), P_BLUR_ON: set(), P_FLIP_ON: set()}
    for n in range(60):
        img = images[n % len(images)]
        torch.manual_seed(n)
        expected = reference(img)
        after_reference = torch.rand(1)
        torch.manual_seed(n)
        views, params = augment(img)
        assert torch.equal(torch.rand(1), after_reference), "the generator must advance exactly as the reference's"
        assert views.dtype == torch.uint8 and views.shape == (2, 3, 32, 32)
        assert params.dtype == torch.float64 and params.shape == (2, VIEW_PARAMS)
        got = normalize_views(views)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
        for column, values in seen.items():
            values.update(params[:, column].tolist())
    # every branch was taken both ways (v1: the jitter always, blur never)
    assert seen[P_GRAY_ON] == seen[P_FLIP_ON] == {0.0, 1.0}
    assert seen[P_JITTER_ON] == ({0.0, 1.0} if aug_plus else {1.0})
    assert seen[P_BLUR_ON] == ({0.0, 1.0} if aug_plus else {0.0})


def test_drawn_parameters_stay_in_the_protocols_ranges(images):
    augment = TwoViewAugment(32, aug_plus=True)
    torch.manual_seed(0)
    rows = torch.cat([augment(images[n % len(images)])[1] for n in range(150)])
    jittered = rows[rows[:, P_JITTER_ON] == 1]
    for column, (lo, hi) in zip(range(1, 5), [(0.6, 1.4)] * 3 + [(-0.1, 0.1)]):
        assert jittered[:, column].min() >= lo and jittered[:, column].max() <= hi
    assert all(sorted(order) == [0, 1, 2, 3] for order in jittered[:, P_ORDER].tolist())
    blurred = rows[rows[:, P_BLUR_ON] == 1, P_BLUR_SIGMA]
    assert blurred.min() >= BLUR_SIGMA[0] and blurred.max() <= BLUR_SIGMA[1]
    # rates near the protocol's probabilities (300 views: 3 standard errors)
    for column, p in [(P_JITTER_ON, 0.8), (P_GRAY_ON, 0.2), (P_BLUR_ON, 0.5), (P_FLIP_ON, 0.5)]:
        rate = rows[:, column].mean().item()
        assert abs(rate - p) < 3 * (p * (1 - p) / len(rows)) ** 0.5, (column, rate)


def test_a_loader_batch_holds_each_samples_reference_views(tmp_path, images):
    """Through the real loader (2 workers) and ViewBatch: sample i of epoch e has the views the reference
    pipeline draws from the generator seeded with (seed, e, i), whichever worker made it."""
    for c in range(2):
        (tmp_path / "train" / f"c{c}").mkdir(parents=True)
        for i in range(4):
            images[(c * 4 + i) % len(images)].save(tmp_path / "train" / f"c{c}" / f"{i}.png")
    loader = build_loader(tmp_path, 32, True, seed=5, batch=4, workers=2, device=torch.device("cpu"))
    loader.sampler.set_epoch(1)
    order = [i for _, i in loader.sampler]
    (views, params), _ = next(iter(loader))
    im_q, im_k = ViewBatch(torch.device("cpu"), aug_plus=True, colour_on_device=False)(views, params)
    reference = TwoCropsTransform(moco_transform(32, aug_plus=True))
    for row, index in enumerate(order[:4]):
        path = loader.dataset.samples[index][0]
        torch.manual_seed(derive_seed(5, 1, index))
        q, k = reference(Image.open(path).convert("RGB"))
        assert torch.equal(im_q[row], q) and torch.equal(im_k[row], k)


def test_view_batch_gives_contiguous_views_in_the_asked_memory_format(images):
    augment = TwoViewAugment(32, aug_plus=True)
    torch.manual_seed(0)
    views, params = (torch.stack(t) for t in zip(*(augment(img) for img in images[:4])))
    for channels_last in (False, True):
        im_q, im_k = ViewBatch(torch.device("cpu"), True, False, channels_last)(views, params)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        assert im_q.shape == im_k.shape == (4, 3, 32, 32) and im_q.dtype == torch.float32
        assert im_q.is_contiguous(memory_format=fmt) and im_k.is_contiguous(memory_format=fmt)
        assert torch.equal(im_q, normalize_views(views[:, 0])) and torch.equal(im_k, normalize_views(views[:, 1]))


def test_augment_on_flag_resolves_per_device_and_is_a_runtime_setting(tmp_path):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not colour_on_device("auto", cpu) and colour_on_device("auto", cuda)
    assert colour_on_device("device", cpu) and not colour_on_device("loader", cuda)
    cfg, _ = parse_config([str(tmp_path), "--augment-on", "device"])
    assert cfg.augment_on == "device"
    assert parse_config([str(tmp_path)])[0].augment_on == "auto"
    assert "augment_on" in RUNTIME_KEYS  # how this process runs: never taken from a resumed checkpoint


# ------------------------------------------------------------------ the colour ops on the device (batched)


def _drawn(images, aug_plus: bool, n: int, seed: int = 0):
    """n views cropped in the loader, colour left for the device, and the same views finished in the loader."""
    on_device, in_loader = TwoViewAugment(32, aug_plus, colour_on_device=True), TwoViewAugment(32, aug_plus)
    crops, params, reference = [], [], []
    for i in range(n // 2):
        img = images[i % len(images)]
        torch.manual_seed(seed + i)
        v, p = on_device(img)
        torch.manual_seed(seed + i)
        r, p_ref = in_loader(img)
        assert torch.equal(p, p_ref)  # the same draws either way
        crops.append(v)
        params.append(p)
        reference.append(r)
    return torch.cat(crops), torch.cat(params), torch.cat(reference)


def _torchvision_reference(crops, params, aug_plus: bool) -> torch.Tensor:
    """Each view through torchvision's float-tensor functional ops, one image at a time (blur left out)."""
    import torchvision.transforms.functional as TF

    adjust = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    out = []
    for view, p in zip(crops, params.tolist()):
        x = view.float() / 255
        gray = lambda t: TF.rgb_to_grayscale(t, num_output_channels=3)  # noqa: E731
        if p[P_GRAY_ON] and not aug_plus:
            x = gray(x)
        if p[P_JITTER_ON]:
            for fn in p[P_ORDER]:
                x = adjust[int(fn)](x, p[1 + int(fn)])
        if p[P_GRAY_ON] and aug_plus:
            x = gray(x)
        if p[P_FLIP_ON]:
            x = TF.hflip(x)
        out.append(TF.normalize(x, IMAGENET_MEAN, IMAGENET_STD))
    return torch.stack(out)


@pytest.mark.parametrize("aug_plus", [True, False], ids=["aug+", "v1"])
def test_device_colour_ops_are_torchvisions_tensor_ops_per_view(images, aug_plus):
    crops, params, _ = _drawn(images, aug_plus, 80)
    params[:, P_BLUR_ON] = 0  # blur: its own test
    got = augment_views(crops, params.float(), aug_plus)
    expected = _torchvision_reference(crops, params, aug_plus)
    assert got.dtype == torch.float32 and got.shape == crops.shape
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()


@pytest.mark.parametrize("aug_plus", [True, False], ids=["aug+", "v1"])
def test_device_colour_ops_on_a_batch_equal_them_view_by_view(images, aug_plus):
    """Each op runs only on the views that drew it (index_select / index_copy_); one view at a time, every op
    runs on the whole batch or not at all: the two paths must agree."""
    crops, params, _ = _drawn(images, aug_plus, 24)
    batch = augment_views(crops, params.float(), aug_plus)
    one_by_one = torch.cat([augment_views(c[None], q[None].float(), aug_plus) for c, q in zip(crops, params)])
    assert torch.allclose(batch, one_by_one, atol=1e-5), (batch - one_by_one).abs().max()


def test_device_blur_is_a_gaussian_close_to_pils(images):
    """PIL's GaussianBlur approximates a Gaussian with box blurs and rounds to uint8: on these images the mean
    absolute difference to the true Gaussian here is 0.30-0.87/255 over sigmas in [0.1, 2] (measured), the bound
    leaves margin."""
    from PIL import ImageFilter

    torch.manual_seed(0)
    sigmas = torch.empty(12).uniform_(*BLUR_SIGMA)
    crops = torch.stack([TF_pil_to_tensor(images[i % len(images)].resize((32, 32))) for i in range(12)])
    got = gaussian_blur(crops.float() / 255, sigmas)
    for view, sigma, blurred in zip(crops, sigmas.tolist(), got):
        pil = TF_to_pil(view).filter(ImageFilter.GaussianBlur(radius=sigma))
        pil_t = TF_pil_to_tensor(pil).float() / 255
        assert (blurred - pil_t).abs().mean() < 2 / 255, sigma
    # the widest blur smooths, the narrowest nearly keeps the image
    assert (gaussian_blur(crops.float() / 255, torch.full((12,), 0.1)) - crops / 255).abs().max() < 1e-3


def TF_pil_to_tensor(img):  # noqa: N802 - torchvision's names
    import torchvision.transforms.functional as TF

    return TF.pil_to_tensor(img)


def TF_to_pil(t):  # noqa: N802
    import torchvision.transforms.functional as TF

    return TF.to_pil_image(t)


@pytest.mark.parametrize("aug_plus", [True, False], ids=["aug+", "v1"])
def test_device_views_match_the_reference_pipeline_in_distribution(images, aug_plus):
    """300 views, the same draws: colour on the device vs the reference PIL ops in the loader. Measured here:
    per-channel means 0.017-0.028 higher in normalised units (~1.2/255: PIL's enhancers truncate to uint8 after
    every jitter op, the float ops do not), stds within 0.0014, a view's mean absolute difference to its
    reference 1.4-1.5/255 (median) and at most 2.6-3.4/255. The bounds leave about 1.5-2x margin."""
    crops, params, reference = _drawn(images, aug_plus, 300, seed=100)
    got = augment_views(crops, params.float(), aug_plus)
    ref = normalize_views(reference)
    dims = (0, 2, 3)
    assert torch.allclose(got.mean(dims), ref.mean(dims), atol=0.045)
    assert torch.allclose(got.std(dims), ref.std(dims), atol=0.01)
    per_view = (got - ref).abs().mean(dim=(1, 2, 3)) * 0.226  # back to [0, 1] pixel units (about)
    assert per_view.median() < 2.5 / 255 and per_view.max() < 6 / 255, (per_view.median(), per_view.max())


def test_view_batch_on_device_path_and_memory_formats(images):
    crops, params, _ = _drawn(images, True, 8)
    views, params = crops.view(4, 2, 3, 32, 32), params.view(4, 2, -1)
    for channels_last in (False, True):
        im_q, im_k = ViewBatch(torch.device("cpu"), True, True, channels_last)(views, params)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        assert im_q.is_contiguous(memory_format=fmt) and im_k.shape == (4, 3, 32, 32)
        assert torch.equal(im_k, augment_views(views[:, 1], params[:, 1].float(), True))
    if torch.cuda.is_available():
        cuda = augment_views(crops.cuda(), params.view(8, -1).float().cuda(), True).cpu()
        # cuDNN may run the blur's convolutions in TF32 (10-bit mantissa): ~1e-3 of a pixel, not a bug
        assert torch.allclose(cuda, augment_views(crops, params.view(8, -1).float(), True), atol=5e-3)


def test_device_augment_bad_shapes_and_empty_batches():
    with pytest.raises(ValueError, match="params"):
        augment_views(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.zeros(2, 5), True)
    out = augment_views(torch.zeros(0, 3, 8, 8, dtype=torch.uint8), torch.zeros(0, VIEW_PARAMS), True)
    assert out.shape == (0, 3, 8, 8)


def test_device_augment_refuses_parameter_rows_the_loader_cannot_draw(images):
    crops, params, _ = _drawn(images, True, 4)
    params = params.float()
    augment_views(crops, params, True)  # the loader's own rows pass
    jittered = int((params[:, P_JITTER_ON] == 1).nonzero()[0])
    cases = {
        "not finite": (jittered, P_BRIGHTNESS, float("nan")),
        "flip flag not 0 or 1": (1, P_FLIP_ON, 0.5),
        "jitter order not a permutation": (jittered, P_ORDER.start, float(params[jittered, P_ORDER.start + 1])),
        "jitter factor out of range": (jittered, P_HUE, 0.7),
        "blur sigma outside": (2, P_BLUR_SIGMA, 2.5),
    }
    for text, (row, col, value) in cases.items():
        bad = params.clone()
        bad[row, col] = value
        if col == P_BLUR_SIGMA:
            bad[row, P_BLUR_ON] = 1.0
        with pytest.raises(ValueError, match=f"params row {row}: .*{text}") as err:
            augment_views(crops, bad, True)
        assert "\n" not in str(err.value)
