"""The results store: one JSON record per finished run under results/runs/, joined later by tables.

Records of the same pretrained weights join across stages (pretrain, linear, voc, coco) through
`source_sha256`: the sha256 of the source checkpoint (the converter writes it into the .pkl it makes).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mocoeval import REPO_ROOT
from mocoeval.results.variants import HYPERPARAMS, Variant, recipe_departures
from mocoeval.runtime.fileio import atomic_write_json

SCHEMA_VERSION = 1
STAGES = ("pretrain", "linear", "voc", "coco")
# The metric names records carry: VOC per trial (Detectron2's PascalVOCDetectionEvaluator), COCO per trial
# (COCOeval through Detectron2's COCOEvaluator: box and mask AP), linear per network.
VOC_METRICS = ("AP50", "AP", "AP75")
COCO_METRICS = ("box_AP", "box_AP50", "box_AP75", "mask_AP", "mask_AP50", "mask_AP75")
TRIAL_METRICS = {"voc": VOC_METRICS, "coco": COCO_METRICS}  # the stages that record per-trial results
LINEAR_METRIC = "linear_top1"

# The MoCo v2 paper's Table 1 rows (plus MoCo v1) by the switches that define them.
# (d) and (e) differ only in epochs (200 vs 800). Temperature: 0.2 with the MLP head, 0.07 without.
PAPER_CASES = {
    "moco_v1": dict(mlp=False, aug_plus=False, cos=False),
    "a": dict(mlp=True, aug_plus=False, cos=False),
    "b": dict(mlp=False, aug_plus=True, cos=False),
    "c": dict(mlp=True, aug_plus=True, cos=False),
    "d": dict(mlp=True, aug_plus=True, cos=True),
}
SPECIAL_VARIANTS = ("random-init", "supervised")


# Relative to where the command runs (like Detectron2's ./output), not to where the package is installed.
DEFAULT_STORE_DIR = Path("results") / "runs"
STORE_HELP = "folder of run records (default: $MOCOEVAL_RESULTS_DIR, else ./results/runs under the current directory)"


def default_store_dir() -> Path:
    """The run records' folder: $MOCOEVAL_RESULTS_DIR, else ./results/runs. Tables go next to it (see
    `mocoeval.results.tables.default_out_dir`): ./results/, or the parent of $MOCOEVAL_RESULTS_DIR when that
    folder is named `runs`, else $MOCOEVAL_RESULTS_DIR itself."""
    return Path(os.environ.get("MOCOEVAL_RESULTS_DIR") or DEFAULT_STORE_DIR)


def case_of(mlp: bool, aug_plus: bool, cos: bool, epochs: int | None) -> str:
    """Paper case name for a switch combination: moco_v1, a, b, c, d (e = d at >= 800 epochs)."""
    for case, flags in PAPER_CASES.items():
        if flags == dict(mlp=bool(mlp), aug_plus=bool(aug_plus), cos=bool(cos)):
            return "e" if case == "d" and epochs and epochs >= 800 else case
    raise AssertionError("unreachable: every switch combination but cos-without-mlp/aug maps")  # pragma: no cover


def pretrain_variant(cfg: Mapping[str, Any], name: str | None = None) -> Variant:
    """The variant description of a pretraining run from its resolved flags (argparse dest names)."""
    mlp, aug, cos = bool(cfg.get("mlp")), bool(cfg.get("aug_plus")), bool(cfg.get("cos"))
    epochs = cfg.get("epochs")
    if name is None:
        try:
            name = case_of(mlp, aug, cos, epochs)
        except AssertionError:
            name = "custom"
    hyperparams = tuple((k, cfg.get(k, "resnet50" if k == "arch" else None)) for k in HYPERPARAMS)
    # the extensions are recorded only where a run departs from the recipe
    return Variant(name, mlp, aug, cos, epochs, hyperparams + recipe_departures(cfg))


def special_variant(name: str, **extensions) -> Variant:
    """Variants without MoCo pretraining: 'random-init', 'supervised', or a user-chosen name; `extensions`
    (e.g. residual_bn_init=0.1 for a random init) recorded where they depart from the recipe, as
    `pretrain_variant` records them."""
    return Variant(name, settings=recipe_departures(extensions))


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def write_run_record(
    stage: str,
    *,
    variant: Variant | Mapping,
    metrics: Mapping,
    source_sha256: str | None,
    weights: str | None = None,
    weights_sha256: str | None = None,
    seeds=None,
    config: Mapping | None = None,
    config_hash: str | None = None,
    trials=None,
    wall_time_s: float | None = None,
    extra: Mapping | None = None,
    store_dir: str | os.PathLike | None = None,
) -> Path:
    """Append one record (its own file, written atomically) and return its path."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    store = Path(store_dir) if store_dir else default_store_dir()
    store.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now(_dt.timezone.utc)
    record = {
        "schema": SCHEMA_VERSION,
        "stage": stage,
        "variant": variant.to_record() if isinstance(variant, Variant) else dict(variant),
        "metrics": dict(metrics),
        "source_sha256": source_sha256,
        "weights": str(weights) if weights else None,
        "weights_sha256": weights_sha256,
        "seeds": list(seeds) if seeds is not None else None,
        "trials": list(trials) if trials is not None else None,
        "config": dict(config) if config else None,
        "config_hash": config_hash,
        "commit": git_commit(),
        "date": now.isoformat(timespec="seconds"),
        "wall_time_s": wall_time_s,
        "extra": dict(extra) if extra else None,
    }
    fname = f"{now:%Y%m%dT%H%M%S}_{stage}_{variant.get('name', 'unnamed')}_{uuid.uuid4().hex[:8]}.json"
    return atomic_write_json(store / fname, record)


def load_records(store_dir: str | os.PathLike | None = None) -> list[dict]:
    """All readable records, oldest first; a corrupt file is skipped with a warning naming it."""
    store = Path(store_dir) if store_dir else default_store_dir()
    records = []
    for path in sorted(store.glob("*.json")):
        try:
            rec = json.loads(path.read_text())
            if not isinstance(rec, dict) or rec.get("stage") not in STAGES or "variant" not in rec:
                raise ValueError("not a run record")
        except (OSError, ValueError) as e:
            warnings.warn(f"skipping unreadable run record {path}: {e}", stacklevel=2)
            continue
        rec["_path"] = str(path)
        records.append(rec)
    return records
