"""COCO pieces shared by the mini-data generator, the layout checker and the COCO harness.

- `COCO_THING_CATEGORIES`: COCO's 80 instance categories (id, name) in Detectron2's order (equal to the
  `isthing` entries of `detectron2.data.datasets.builtin_meta.COCO_CATEGORIES`; a test asserts it). A literal,
  so that the generator and the layout checker do not import torch/detectron2.
- `COCO_SPLITS`: Detectron2's builtin `coco_2017_{train,val}` layout under DETECTRON2_DATASETS (image folder,
  annotation json), as `detectron2/data/datasets/builtin.py` lays it out (a test asserts it).
- `VOC_TO_COCO`: the COCO name of each VOC class (all 20 are COCO categories): the mini COCO's objects.
- `register_coco_datasets(root)`: point Detectron2's `coco_2017_{train,val}` names at `root`.
"""

from __future__ import annotations

import os
from pathlib import Path

COCO_THING_CATEGORIES = (
    (1, "person"),
    (2, "bicycle"),
    (3, "car"),
    (4, "motorcycle"),
    (5, "airplane"),
    (6, "bus"),
    (7, "train"),
    (8, "truck"),
    (9, "boat"),
    (10, "traffic light"),
    (11, "fire hydrant"),
    (13, "stop sign"),
    (14, "parking meter"),
    (15, "bench"),
    (16, "bird"),
    (17, "cat"),
    (18, "dog"),
    (19, "horse"),
    (20, "sheep"),
    (21, "cow"),
    (22, "elephant"),
    (23, "bear"),
    (24, "zebra"),
    (25, "giraffe"),
    (27, "backpack"),
    (28, "umbrella"),
    (31, "handbag"),
    (32, "tie"),
    (33, "suitcase"),
    (34, "frisbee"),
    (35, "skis"),
    (36, "snowboard"),
    (37, "sports ball"),
    (38, "kite"),
    (39, "baseball bat"),
    (40, "baseball glove"),
    (41, "skateboard"),
    (42, "surfboard"),
    (43, "tennis racket"),
    (44, "bottle"),
    (46, "wine glass"),
    (47, "cup"),
    (48, "fork"),
    (49, "knife"),
    (50, "spoon"),
    (51, "bowl"),
    (52, "banana"),
    (53, "apple"),
    (54, "sandwich"),
    (55, "orange"),
    (56, "broccoli"),
    (57, "carrot"),
    (58, "hot dog"),
    (59, "pizza"),
    (60, "donut"),
    (61, "cake"),
    (62, "chair"),
    (63, "couch"),
    (64, "potted plant"),
    (65, "bed"),
    (67, "dining table"),
    (70, "toilet"),
    (72, "tv"),
    (73, "laptop"),
    (74, "mouse"),
    (75, "remote"),
    (76, "keyboard"),
    (77, "cell phone"),
    (78, "microwave"),
    (79, "oven"),
    (80, "toaster"),
    (81, "sink"),
    (82, "refrigerator"),
    (84, "book"),
    (85, "clock"),
    (86, "vase"),
    (87, "scissors"),
    (88, "teddy bear"),
    (89, "hair drier"),
    (90, "toothbrush"),
)
COCO_SPLITS = {
    "coco_2017_train": ("coco/train2017", "coco/annotations/instances_train2017.json"),
    "coco_2017_val": ("coco/val2017", "coco/annotations/instances_val2017.json"),
}
VOC_TO_COCO = {
    "aeroplane": "airplane",
    "bicycle": "bicycle",
    "bird": "bird",
    "boat": "boat",
    "bottle": "bottle",
    "bus": "bus",
    "car": "car",
    "cat": "cat",
    "chair": "chair",
    "cow": "cow",
    "diningtable": "dining table",
    "dog": "dog",
    "horse": "horse",
    "motorbike": "motorcycle",
    "person": "person",
    "pottedplant": "potted plant",
    "sheep": "sheep",
    "sofa": "couch",
    "train": "train",
    "tvmonitor": "tv",
}


def register_coco_datasets(root: str | os.PathLike) -> list[str]:
    """(Re)register Detectron2's builtin `coco_2017_train` / `coco_2017_val` for the COCO folder under `root`.

    Detectron2 registers them once, at import, from DETECTRON2_DATASETS; a tool taking --dataset-root (and the
    tests) re-points them, with Detectron2's own COCO metadata (80 categories, the id -> contiguous id map,
    evaluator_type coco) and loader, as register_voc_datasets does for VOC.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances
    from detectron2.data.datasets.builtin_meta import _get_builtin_metadata

    root = Path(root).expanduser()
    for name, (images, json_file) in COCO_SPLITS.items():
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
        register_coco_instances(name, _get_builtin_metadata("coco"), str(root / json_file), str(root / images))
    return list(COCO_SPLITS)
