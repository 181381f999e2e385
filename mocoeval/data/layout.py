"""Dataset layout checks run by every stage before it starts work: a bad folder gives a one-line
`UserError` naming the file or folder, instead of a traceback minutes into a run.

`check_voc_root(root, splits)` checks, for each (year, split):
  - ROOT/VOC<year>/ and its JPEGImages/, Annotations/ and ImageSets/Main/ folders exist;
  - ImageSets/Main/<split>.txt exists and lists at least 2 image ids, one per line (Detectron2's
    loader reads it with numpy.loadtxt, which fails on a single id);
  - every listed id has JPEGImages/<id>.jpg and Annotations/<id>.xml (checked against one directory
    listing per folder, so real VOC's ~17k files take milliseconds);
  - (parse_annotations=True, the default) every listed annotation is well-formed XML with a
    positive <size> width/height and objects whose <name> is one of the class names and whose
    <bndbox> has numeric xmin <= xmax, ymin <= ymax within the image (1-based, a pixel of slack).
    Only the XML of the listed ids is parsed (~1 s per 10k files); image files are not decoded.

`check_imagefolder(root, splits)` checks, for each split:
  - ROOT/<split>/ exists and has at least one class sub-folder;
  - every class folder holds at least one image (torchvision's ImageFolder extensions);
  - every split has the same class folders as the first split (ImageFolder numbers classes by
    sorted folder name, so a class missing from val would silently shift every label after it).
  Images are listed, not decoded.

`check_coco_root(root, splits)` checks, for each Detectron2 builtin COCO split (`coco_2017_train`, `coco_2017_val`):
  - ROOT/coco/<images>/ exists and ROOT/coco/annotations/instances_<split>.json exists and is COCO json
    (an object with lists `images`, `annotations`, `categories`);
  - its categories are COCO's 80 (Detectron2's builtin metadata asserts the same names);
  - every listed image has an id and a file_name present in the image folder (one listing per folder);
  - every annotation names a listed image and a known category, with a bbox of 4 numbers, w and h >= 0.
  The json is parsed once here (about half a minute for the real train2017 file); images are not decoded.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

from mocoeval.data.coco import COCO_SPLITS, COCO_THING_CATEGORIES
from mocoeval.data.voc import VOC_CLASS_NAMES
from mocoeval.runtime.errors import UserError

DEFAULT_VOC_SPLITS = (("2007", "trainval"), ("2007", "test"), ("2012", "trainval"))
# torchvision.datasets.folder.IMG_EXTENSIONS
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise UserError(f"{path}: missing {what} folder" if not path.exists() else f"{path}: {what} is not a folder")


def _listing(path: Path) -> set[str]:
    with os.scandir(path) as it:
        return {entry.name for entry in it}


def _read_split(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"{path}: missing split file")
    ids = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if len(line.split()) != 1:
            raise UserError(f"{path}:{lineno}: expected one image id per line, got '{line[:60]}'")
        ids.append(line)
    if len(ids) < 2:
        raise UserError(f"{path}: lists {len(ids)} image id(s); need at least 2")
    return ids


def _number(element, tag: str, path: Path) -> float:
    node = element.find(tag)
    if node is None or node.text is None:
        raise UserError(f"{path}: missing <{tag}>")
    try:
        return float(node.text)
    except ValueError:
        raise UserError(f"{path}: <{tag}> is not a number: '{node.text.strip()[:40]}'") from None


def check_voc_annotation(path: Path, class_names=VOC_CLASS_NAMES) -> int:
    """Parse one VOC annotation file; raise UserError naming it if broken. Returns its object count."""
    try:
        tree = ET.parse(path)
    except ET.ParseError as e:
        raise UserError(f"{path}: malformed XML ({e})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    size = tree.find("size")
    if size is None:
        raise UserError(f"{path}: missing <size>")
    width, height = _number(size, "width", path), _number(size, "height", path)
    if width <= 0 or height <= 0:
        raise UserError(f"{path}: <size> must be positive, got {width:g}x{height:g}")
    objects = tree.findall("object")
    for obj in objects:
        name_node = obj.find("name")
        name = (name_node.text or "").strip() if name_node is not None else ""
        if name not in class_names:
            raise UserError(
                f"{path}: unknown class name '{name}' (expected one of the {len(class_names)} "
                f"VOC classes: {', '.join(class_names)})"
            )
        box = obj.find("bndbox")
        if box is None:
            raise UserError(f"{path}: object '{name}' has no <bndbox>")
        x0, y0, x1, y1 = (_number(box, k, path) for k in ("xmin", "ymin", "xmax", "ymax"))
        if not (0 <= x0 <= x1 <= width + 1 and 0 <= y0 <= y1 <= height + 1):
            raise UserError(
                f"{path}: object '{name}' box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is not inside the "
                f"{width:g}x{height:g} image"
            )
    return len(objects)


def check_voc_root(
    root, splits=DEFAULT_VOC_SPLITS, class_names=VOC_CLASS_NAMES, parse_annotations: bool = True
) -> dict:
    """Check a DETECTRON2_DATASETS-style root holding VOC<year>/ folders (see module docstring).

    Returns {"VOC2007/trainval": {"images": n, "objects": m or None}, ...}; raises UserError.
    """
    root = Path(root).expanduser()
    _require_dir(root, "dataset root")
    summary = {}
    listings: dict[Path, set[str]] = {}
    for year, split in splits:
        voc = root / f"VOC{year}"
        _require_dir(voc, f"VOC{year}")
        folders = {sub: voc / sub for sub in ("JPEGImages", "Annotations", "ImageSets/Main")}
        for sub, path in folders.items():
            _require_dir(path, sub)
        ids = _read_split(folders["ImageSets/Main"] / f"{split}.txt")
        for key in ("JPEGImages", "Annotations"):
            if folders[key] not in listings:
                listings[folders[key]] = _listing(folders[key])
        images, annotations = listings[folders["JPEGImages"]], listings[folders["Annotations"]]
        split_file = f"ImageSets/Main/{split}.txt"
        objects = 0 if parse_annotations else None
        for image_id in ids:
            if f"{image_id}.jpg" not in images:
                raise UserError(
                    f"{folders['JPEGImages'] / (image_id + '.jpg')}: missing image (listed in {split_file})"
                )
            if f"{image_id}.xml" not in annotations:
                raise UserError(
                    f"{folders['Annotations'] / (image_id + '.xml')}: missing annotation for image "
                    f"{image_id}.jpg (listed in {split_file})"
                )
            if parse_annotations:
                objects += check_voc_annotation(folders["Annotations"] / f"{image_id}.xml", class_names)
        summary[f"VOC{year}/{split}"] = {"images": len(ids), "objects": objects}
    return summary


def check_imagefolder(root, splits=("train", "val"), extensions=IMG_EXTENSIONS) -> dict:
    """Check an ImageFolder-layout root (ROOT/<split>/<class>/<image>; see module docstring).

    Returns {split: {"classes": n, "images": m}}; raises UserError.
    """
    root = Path(root).expanduser()
    _require_dir(root, "dataset root")
    summary = {}
    reference: tuple[str, list[str]] | None = None
    for split in splits:
        folder = root / split
        _require_dir(folder, f"'{split}' split")
        with os.scandir(folder) as it:
            classes = sorted(entry.name for entry in it if entry.is_dir())
        if not classes:
            raise UserError(f"{folder}: no class folders (ImageFolder layout is {split}/<class>/<image>)")
        n_images = 0
        for name in classes:
            with os.scandir(folder / name) as it:
                count = sum(1 for entry in it if entry.name.lower().endswith(extensions) and entry.is_file())
            if count == 0:
                raise UserError(f"{folder / name}: class folder without images ({', '.join(extensions)})")
            n_images += count
        if reference is None:
            reference = (split, classes)
        elif classes != reference[1]:
            ref_split, ref_classes = reference
            extra = sorted(set(classes) - set(ref_classes))
            if extra:
                raise UserError(
                    f"{folder / extra[0]}: class not in {root / ref_split} "
                    f"(the splits must have the same class folders)"
                )
            missing = sorted(set(ref_classes) - set(classes))
            raise UserError(
                f"{folder / missing[0]}: missing class folder (present in {root / ref_split}; "
                f"ImageFolder would shift the labels)"
            )
        summary[split] = {"classes": len(classes), "images": n_images}
    return summary


def _coco_json(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: missing annotation file")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: malformed json ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise UserError(f"{path}: not COCO instances json (needs lists 'images', 'annotations', 'categories')")
    return data


def check_coco_root(root, splits=tuple(COCO_SPLITS)) -> dict:
    """Check a DETECTRON2_DATASETS-style root holding coco/ (see module docstring).

    Returns {"coco_2017_val": {"images": n, "annotations": m}, ...}; raises UserError.
    """
    root = Path(root).expanduser()
    _require_dir(root, "dataset root")
    expected = [list(c) for c in COCO_THING_CATEGORIES]
    summary = {}
    for split in splits:
        if split not in COCO_SPLITS:
            raise UserError(f"unknown COCO split {split!r} (supported: {', '.join(COCO_SPLITS)})")
        images_rel, json_rel = COCO_SPLITS[split]
        folder = root / images_rel
        _require_dir(folder, f"{split} image")
        path = root / json_rel
        data = _coco_json(path)
        try:
            categories = [[c["id"], c["name"]] for c in data["categories"]]
            image_files = {img["id"]: img["file_name"] for img in data["images"]}
        except (TypeError, KeyError) as e:
            raise UserError(f"{path}: an image or category entry lacks {e}") from None
        if categories != expected:
            raise UserError(
                f"{path}: categories are not COCO's 80 instance categories in order (Detectron2's "
                f"builtin metadata requires them); first: {categories[:2]}"
            )
        if not image_files:
            raise UserError(f"{path}: lists no images")
        present = _listing(folder)
        for image_id, name in image_files.items():
            if name not in present:
                raise UserError(f"{folder / name}: missing image (image {image_id} of {path.name})")
        category_ids = {c[0] for c in expected}
        for ann in data["annotations"]:
            if not isinstance(ann, dict):
                raise UserError(f"{path}: an annotation is not an object")
            box = ann.get("bbox")
            where = f"{path}: annotation {ann.get('id')}"
            if ann.get("image_id") not in image_files:
                raise UserError(f"{where} names image {ann.get('image_id')}, which is not listed")
            if ann.get("category_id") not in category_ids:
                raise UserError(f"{where} has unknown category_id {ann.get('category_id')}")
            if not (
                isinstance(box, list)
                and len(box) == 4
                and all(isinstance(v, (int, float)) for v in box)
                and box[2] >= 0
                and box[3] >= 0
            ):
                raise UserError(f"{where}: bbox must be [x, y, w, h] with w, h >= 0, got {box}")
        summary[split] = {"images": len(image_files), "annotations": len(data["annotations"])}
    return summary
