"""How each image of the mini datasets is drawn (`make_mini_data` decides which, where, and writes the rest):
real photo crops and emoji glyphs composed into VOC / COCO scenes with exact boxes and masks, and object-centric
ImageNet-mini images. `draw_task(task)` draws one image of a task list and returns what the annotations need;
every image is a function of its task (seed, split, number) only."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mocoeval.data import sources
from mocoeval.data.coco import COCO_THING_CATEGORIES, VOC_TO_COCO
from mocoeval.data.voc import VOC_CLASS_NAMES, VocObject, annotation_xml

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


def draw_task(task: dict) -> dict:
    assets = load_assets(task["sizes"])
    if task["kind"].startswith("coco"):
        return _coco_image(task, assets)
    return _voc_image(task, assets) if task["kind"].startswith("voc") else _imagenet_image(task, assets)
