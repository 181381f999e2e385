"""Pascal VOC pieces shared by the mini-data generator, the layout checker and the VOC harness.

- `VOC_CLASS_NAMES`: the 20 VOC class names in Detectron2's order (equal to
  `detectron2.data.datasets.pascal_voc.CLASS_NAMES`; a test asserts it). Kept here as a literal so
  that the data generator and layout checker do not import torch/detectron2 (seconds per process).
- `annotation_xml(...)`: one annotation file, element for element as the VOC devkit writes it.
- `register_voc_datasets(root)`: point Detectron2's built-in `voc_*` dataset names at `root`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

VOC_CLASS_NAMES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

# Detectron2's built-in VOC names (detectron2/data/datasets/builtin.py: register_all_pascal_voc).
BUILTIN_VOC_DATASETS = (
    "voc_2007_trainval",
    "voc_2007_train",
    "voc_2007_val",
    "voc_2007_test",
    "voc_2012_trainval",
    "voc_2012_train",
    "voc_2012_val",
)


@dataclass(frozen=True)
class VocObject:
    """One annotated object; the box is in VOC's 1-based inclusive pixel coordinates."""

    name: str
    xmin: int
    ymin: int
    xmax: int
    ymax: int
    truncated: int = 0
    difficult: int = 0
    pose: str = "Unspecified"


def annotation_xml(folder: str, filename: str, width: int, height: int, objects, source: dict) -> str:
    """The text of one `Annotations/<id>.xml`, with VOC's element order and tab indentation.

    `source` fills `<source>` (VOC: database / annotation / image); we name the real origin of the
    background photo there instead of Flickr.
    """
    t = "\t"
    lines = [
        "<annotation>",
        f"{t}<folder>{escape(folder)}</folder>",
        f"{t}<filename>{escape(filename)}</filename>",
        f"{t}<source>",
    ]
    for key in ("database", "annotation", "image"):
        lines.append(f"{t}{t}<{key}>{escape(str(source[key]))}</{key}>")
    lines += [
        f"{t}</source>",
        f"{t}<size>",
        f"{t}{t}<width>{width}</width>",
        f"{t}{t}<height>{height}</height>",
        f"{t}{t}<depth>3</depth>",
        f"{t}</size>",
        f"{t}<segmented>0</segmented>",
    ]
    for o in objects:
        lines += [
            f"{t}<object>",
            f"{t}{t}<name>{o.name}</name>",
            f"{t}{t}<pose>{o.pose}</pose>",
            f"{t}{t}<truncated>{o.truncated}</truncated>",
            f"{t}{t}<difficult>{o.difficult}</difficult>",
            f"{t}{t}<bndbox>",
        ]
        for key in ("xmin", "ymin", "xmax", "ymax"):
            lines.append(f"{t}{t}{t}<{key}>{getattr(o, key)}</{key}>")
        lines += [f"{t}{t}</bndbox>", f"{t}</object>"]
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


def register_voc_datasets(root: str | os.PathLike) -> list[str]:
    """(Re)register Detectron2's built-in VOC names (`voc_2007_trainval`, `voc_2012_trainval`,
    `voc_2007_test`, ...) for the VOC folders under `root`, i.e. `root/VOC2007`, `root/VOC2012`.

    Detectron2 registers these names once, when `detectron2.data` is first imported, from the
    environment variable DETECTRON2_DATASETS (default `./datasets`). A tool taking `--dataset-root`
    (and the tests) must therefore re-point them: earlier registrations are removed from
    DatasetCatalog and MetadataCatalog, then Detectron2's own `register_all_pascal_voc` runs for
    `root`, so names, metadata (dirname, year, split, evaluator_type) and loader are exactly the
    built-in ones. Returns the registered names.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets.builtin import register_all_pascal_voc

    for name in BUILTIN_VOC_DATASETS:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
    register_all_pascal_voc(str(Path(root).expanduser()))
    return list(BUILTIN_VOC_DATASETS)
