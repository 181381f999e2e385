"""What differs between the detection benchmarks the harness runs (VOC, COCO): one small description each.

The harness (config, trial, run and the command) is shared; a benchmark only names its metrics, its default
config per schedule and weights layout, and how to check and register its data, evaluate and read the result.
Importing this module does not import Detectron2 (the command's --help uses the config names).
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path

from mocoeval import CONFIG_DIR
from mocoeval.runtime.errors import UserError

logger = logging.getLogger("mocoeval.voc")


class Benchmark:
    """name: the results-store stage, the default output folder's prefix and the Slurm job names; title: what the
    metrics are measured on; metrics: per trial, in metrics.json, the summary and the record; configs:
    {schedule: {weights layout: default config}} (one schedule, None, for VOC)."""

    name: str
    title: str
    metrics: tuple[str, ...]
    configs: dict[str | None, dict[str, Path]]

    @property
    def schedules(self) -> tuple[str, ...]:
        return tuple(s for s in self.configs if s is not None)

    @property
    def default_schedule(self) -> str | None:
        return next(iter(self.configs))

    def config_for(self, layout: str, schedule: str | None = None) -> Path:
        """The default config for weights of `layout` ("torchvision": converted MoCo, "caffe2": MSRA R-50.pkl)."""
        schedule = schedule or self.default_schedule
        if schedule not in self.configs:
            raise UserError(
                f"--schedule {schedule}: {self.name} has "
                + (f"the schedules {', '.join(self.schedules)}" if self.schedules else "one schedule (no --schedule)")
            )
        return self.configs[schedule][layout]

    def check_dataset(self, cfg, root: str | os.PathLike) -> None:
        """Check every dataset the config names under `root`, then point Detectron2's builtin names at it."""
        if not Path(root).is_dir():
            raise UserError(f"dataset root not found: {root} (set --dataset-root or DETECTRON2_DATASETS)")
        self._check(cfg, Path(root))
        self.register(root)

    # per benchmark
    def _check(self, cfg, root: Path) -> None:
        raise NotImplementedError

    def register(self, root: str | os.PathLike) -> None:
        raise NotImplementedError

    def evaluator(self, cfg, dataset_name: str):
        raise NotImplementedError

    def extract_metrics(self, results) -> dict[str, float]:
        raise NotImplementedError


class VOC(Benchmark):
    name, title = "voc", "VOC07 test"
    metrics = ("AP50", "AP", "AP75")
    # the official MoCo configs: MoCo (torchvision-converted) weights; the MSRA Caffe2 R-50.pkl (supervised row)
    configs = {
        None: {
            "torchvision": CONFIG_DIR / "pascal_voc_R_50_C4_24k_moco.yaml",
            "caffe2": CONFIG_DIR / "pascal_voc_R_50_C4_24k.yaml",
        }
    }
    dataset = "voc_2007_test (PascalVOCDetectionEvaluator, VOC07 11-point AP)"

    def _check(self, cfg, root):
        from mocoeval.data.layout import check_voc_root

        check_voc_root(root, splits=tuple(voc_splits(cfg)))

    def register(self, root):
        from mocoeval.data.voc import register_voc_datasets

        register_voc_datasets(root)

    def evaluator(self, cfg, dataset_name):
        from detectron2.evaluation import PascalVOCDetectionEvaluator

        return PascalVOCDetectionEvaluator(dataset_name)

    def extract_metrics(self, results):
        """AP50/AP/AP75 from the evaluator's {"bbox": {...}} (as DefaultTrainer.test returns it)."""
        return _pick(results, {"bbox": {m: m for m in self.metrics}})


class COCO(Benchmark):
    name, title = "coco", "COCO val2017"
    # box and mask AP at IoU .50:.95, .50, .75 (COCOeval), as the MoCo v1 paper's COCO tables
    metrics = ("box_AP", "box_AP50", "box_AP75", "mask_AP", "mask_AP50", "mask_AP75")
    # the official MoCo COCO config is the 2x one; 1x is the MoCo v1 paper's shorter schedule
    configs = {
        schedule: {
            "torchvision": CONFIG_DIR / f"coco_R_50_C4_{schedule}_moco.yaml",
            "caffe2": CONFIG_DIR / f"coco_R_50_C4_{schedule}.yaml",
        }
        for schedule in ("2x", "1x")
    }
    dataset = "coco_2017_val (COCOEvaluator: COCOeval box and mask AP)"

    def _check(self, cfg, root):
        from mocoeval.data.coco import COCO_SPLITS
        from mocoeval.data.layout import check_coco_root

        names = dataset_names(
            cfg, "run_coco.py", f"Detectron2's builtin {' and '.join(COCO_SPLITS)}", COCO_SPLITS.__contains__
        )
        if not cfg.MODEL.MASK_ON:
            raise UserError("MODEL.MASK_ON is False: the COCO protocol trains Mask R-CNN and reports mask AP")
        check_coco_root(root, splits=tuple(dict.fromkeys(names)))

    def register(self, root):
        from mocoeval.data.coco import register_coco_datasets

        register_coco_datasets(root)

    def evaluator(self, cfg, dataset_name):
        from detectron2.evaluation import COCOEvaluator

        try:  # Detectron2's compiled COCOeval (same numbers, faster) exists only in a build with its C++ ops
            from detectron2 import _C  # noqa: F401

            fast = True
        except ImportError:
            fast = False
        return COCOEvaluator(dataset_name, tasks=("bbox", "segm"), use_fast_impl=fast)

    def extract_metrics(self, results):
        """box_* from {"bbox": {...}}, mask_* from {"segm": {...}} (COCOEvaluator's percentages)."""
        out = _pick(
            results,
            {
                task: {f"{prefix}_{m}": m for m in ("AP", "AP50", "AP75")}
                for task, prefix in (("bbox", "box"), ("segm", "mask"))
            },
        )
        if any(math.isnan(v) for v in out.values()):
            # COCOEvaluator reports NaN when the model predicted nothing; against ground truth that is AP 0
            logger.warning("the detector predicted nothing on %s: AP 0", self.title)
            out = {k: 0.0 if math.isnan(v) else v for k, v in out.items()}
        return out


VOC_DATASET_RE = re.compile(r"^voc_(\d{4})_(\w+)$")


def dataset_names(cfg, command: str, supported: str, known) -> list[str]:
    """DATASETS.TRAIN + DATASETS.TEST, each accepted by `known(name)`; else a one-line error naming `supported`."""
    names = []
    for field in ("TRAIN", "TEST"):
        if not cfg.DATASETS[field]:
            raise UserError(f"DATASETS.{field} is empty")
        for name in cfg.DATASETS[field]:
            if not known(name):
                raise UserError(f"DATASETS.{field} names {name!r}: {command} trains and evaluates on {supported} only")
            names.append(name)
    return names


def voc_splits(cfg) -> list[tuple[str, str]]:
    """(year, split) of every dataset the config uses; only Pascal VOC splits are supported."""
    names = dataset_names(
        cfg, "run_voc.py", "Pascal VOC splits (voc_YYYY_split, e.g. voc_2007_test)", VOC_DATASET_RE.match
    )
    return list(dict.fromkeys(VOC_DATASET_RE.match(n).groups() for n in names))


def _pick(results, wanted: dict[str, dict[str, str]]) -> dict[str, float]:
    """{our name: float(results[task][evaluator's name])}; a RuntimeError names what is missing."""
    out = {}
    for task, names in wanted.items():
        if not isinstance(results, dict) or not isinstance(results.get(task), dict):
            raise RuntimeError(f"no {task} results from the evaluation: {results!r}")
        for ours, theirs in names.items():
            if theirs not in results[task]:
                raise RuntimeError(f"evaluation results lack {task} {theirs}: {results[task]!r}")
            out[ours] = float(results[task][theirs])
    return out


BENCHMARKS = {b.name: b for b in (VOC(), COCO())}
