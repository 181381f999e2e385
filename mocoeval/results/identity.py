"""The protocol identity of a linear or VOC record: which settings that change the number it ran with, and
how they depart from the official protocol (what the tables key rows on and label them with).

- linear: the record's `config` (run_linear.py's argparse values) without the keys that do not change the
  result (`LINEAR_NEUTRAL_KEYS`), plus the number of classes it was evaluated on; official = main_lincls's
  values (`linear_eval.LINCLS_DEFAULTS`, raw features, fp32) on the 1000 ImageNet classes.
- VOC: the record's `config_hash` (voc_transfer.config.config_hash: the resolved Detectron2 config without its
  result-neutral keys); official = the hash of configs/pascal_voc_R_50_C4_24k_moco.yaml (the supervised
  row: pascal_voc_R_50_C4_24k.yaml), built the way run_voc.py builds it. Departures are the differing keys
  of the record's stored config.
- COCO: as VOC, official = configs/coco_R_50_C4_2x_moco.yaml (supervised: coco_R_50_C4_2x.yaml), the 2×
  schedule of the official protocol.

Detectron2 and torch are imported only when a record of their stage is looked at.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from mocoeval import CONFIG_DIR
from mocoeval.runtime.fileio import sha256_json

# run_linear.py settings that do not change the result: bookkeeping, the data path, the hardware, and the
# description of the weights (the weights themselves are the row's source, not its protocol). The seed is
# a repeat of the same protocol, like a VOC trial's SEED.
# The official main_lincls defaults (MoCo v1/v2 papers' linear classification protocol): run_linear.py's
# defaults, and what a linear record is compared with.
LINCLS_DEFAULTS = dict(
    lr=30.0,
    momentum=0.9,
    weight_decay=0.0,
    batch_size=256,
    epochs=100,
    schedule=(60, 80),
    image_size=224,
    print_freq=10,
)
# Detectron2 keys that do not change a VOC result: left out of the config identity (and its hash).
RESULT_NEUTRAL_KEYS = (
    "OUTPUT_DIR",
    "SEED",
    "MODEL.WEIGHTS",
    "MODEL.DEVICE",
    "DATALOADER.NUM_WORKERS",
    "SOLVER.CHECKPOINT_PERIOD",
    "VIS_PERIOD",
)
LINEAR_NEUTRAL_KEYS = frozenset(
    {
        "data",
        "output_dir",
        "workers",
        "print_freq",
        "resume",
        "device",
        "channels_last",
        "seed",
        "weights",
        "weights_format",
        "trust_pickle",
        "random_init",
        "residual_bn_init",
        "variant",
    }
)
IMAGENET_CLASSES = 1000
# Linear settings in the order a label shows them (what says most about a short probe first).
LINEAR_KEY_ORDER = (
    "epochs",
    "lr",
    "feature_norm",
    "image_size",
    "num_classes",
    "batch_size",
    "schedule",
    "weight_decay",
    "momentum",
    "precision",
)
VOC_CONFIGS = {"supervised": "pascal_voc_R_50_C4_24k.yaml"}  # every other variant: the MoCo config
VOC_MOCO_CONFIG = "pascal_voc_R_50_C4_24k_moco.yaml"
COCO_CONFIGS = {"supervised": "coco_R_50_C4_2x.yaml"}  # the 2x schedule is the official protocol
COCO_MOCO_CONFIG = "coco_R_50_C4_2x_moco.yaml"
# Per detection stage: (the supervised row's config by variant name, every other variant's config).
DETECTION_CONFIGS = {"voc": (VOC_CONFIGS, VOC_MOCO_CONFIG), "coco": (COCO_CONFIGS, COCO_MOCO_CONFIG)}
STAGE_TITLES = {"linear": "linear", "voc": "VOC", "coco": "COCO"}
# VOC keys shown first in a label (the schedule, the precision and the batch say most about a short run); others
# follow by name.
VOC_KEY_ORDER = ("SOLVER.MAX_ITER", "SOLVER.AMP.ENABLED", "SOLVER.IMS_PER_BATCH", "SOLVER.BASE_LR", "SOLVER.STEPS")
# Detection settings a label names in words rather than as 'KEY value' (value -> text).
_DETECTION_TEXT = {"SOLVER.AMP.ENABLED": {True: "AMP", False: "no AMP"}}


@dataclass(frozen=True)
class Identity:
    """One stage's protocol identity: `key` is what pools/replaces (equal keys = same protocol), `departures`
    the (setting, value) pairs in which it departs from the official protocol, most telling first."""

    stage: str
    key: Any
    departures: tuple = ()

    @property
    def official(self) -> bool:
        return not self.departures

    def departures_text(self, limit: int | None = None) -> str:
        """'10 ep, lr 0.01, 64 px, +6 more' (`limit` departures shown); '' for the official protocol."""
        texts = [_departure_text(self.stage, k, v) for k, v in self.departures]
        if limit is not None and len(texts) > limit:
            texts = texts[:limit] + [f"+{len(texts) - limit} more"]
        return ", ".join(texts)

    def describe(self, limit: int | None = None) -> str:
        """The departures with the stage named, as a row label shows them: 'linear: 10 ep, lr 0.01, +6 more'."""
        text = self.departures_text(limit)
        return text and f"{STAGE_TITLES[self.stage]}: {text}"


def _fmt(v) -> str:
    if isinstance(v, (list, tuple)):
        return "/".join(map(_fmt, v))
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


_LINEAR_TEXT = {
    "epochs": "{} ep",
    "lr": "lr {}",
    "schedule": "schedule {}",
    "batch_size": "batch {}",
    "image_size": "{} px",
    "weight_decay": "wd {}",
    "momentum": "momentum {}",
    "num_classes": "{} classes",
}


def _departure_text(stage: str, name: str, value) -> str:
    if stage == "linear":
        if name == "feature_norm":
            return "feature-norm" if value else "no feature-norm"
        if name in _LINEAR_TEXT:
            return _LINEAR_TEXT[name].format(_fmt(value))
    if stage in DETECTION_CONFIGS and name in _DETECTION_TEXT and value in _DETECTION_TEXT[name]:
        return _DETECTION_TEXT[name][value]
    if name == "config":  # a VOC record without a stored config: only its hash is known
        return f"config {value}"
    return f"{name.rsplit('.', 1)[-1] if stage in DETECTION_CONFIGS else name} {_fmt(value)}"


def _canonical(v):
    """Equal settings compare equal: lists as tuples, 30 and 30.0 alike."""
    if isinstance(v, (list, tuple)):
        return tuple(_canonical(x) for x in v)
    if isinstance(v, float) and math.isfinite(v) and v == int(v):
        return int(v)
    return v


@functools.lru_cache(maxsize=1)
def official_linear() -> dict:
    out = {k: _canonical(v) for k, v in LINCLS_DEFAULTS.items() if k not in LINEAR_NEUTRAL_KEYS}
    return {**out, "feature_norm": False, "precision": "fp32", "num_classes": IMAGENET_CLASSES}


def linear_identity(rec: Mapping) -> Identity:
    """A linear record's identity; one without a stored config has the identity 'protocol unknown'."""
    config = rec.get("config")
    if not isinstance(config, Mapping):
        return Identity("linear", "unknown", (("protocol", "unknown"),))
    settings = {k: _canonical(v) for k, v in config.items() if k not in LINEAR_NEUTRAL_KEYS}
    classes = (rec.get("metrics") or {}).get("num_classes")
    if classes is not None:
        settings["num_classes"] = classes
    official = official_linear()
    order = list(LINEAR_KEY_ORDER) + sorted(set(settings) - set(LINEAR_KEY_ORDER))
    departures = tuple((k, settings[k]) for k in order if k in settings and settings[k] != official.get(k))
    return Identity("linear", tuple(sorted(settings.items(), key=lambda kv: kv[0])), departures)


@functools.cache
def _official_detection(config_name: str) -> tuple[str, dict]:
    """(hash, flattened identity) of an official detection config, built as run_voc.py builds it."""
    with warnings.catch_warnings():  # torch/detectron2 import-time deprecation notices are not the tables' news
        warnings.simplefilter("ignore", DeprecationWarning)
        from detectron2.config import get_cfg  # lazy: detectron2

    cfg = get_cfg()  # as run_voc.py builds it with no --opts (weights and device are result-neutral)
    cfg.merge_from_file(str(CONFIG_DIR / config_name))
    return config_hash(cfg), flatten_config(config_identity(cfg))


def official_config(stage: str, variant_name: str) -> str:
    """The file name of the official config of a detection stage ('voc', 'coco') for a variant."""
    by_variant, default = DETECTION_CONFIGS[stage]
    return by_variant.get(variant_name, default)


def official_config_hash(variant_name: str, stage: str = "voc") -> str:
    return _official_detection(official_config(stage, variant_name))[0]


def detection_identity(rec: Mapping) -> Identity:
    """A VOC or COCO record's identity: its config hash, departures from its variant's official config."""
    stage = rec["stage"]
    h = rec.get("config_hash")
    if not isinstance(h, str) or not h:
        return Identity(stage, "unknown", (("config", "unknown"),))
    name = official_config(stage, rec["variant"]["name"])
    if not (CONFIG_DIR / name).is_file():  # the stage's configs are not in this checkout: nothing to compare with
        return Identity(stage, h, (("config", h[:12]),))
    official_hash, official = _official_detection(name)
    if h == official_hash:
        return Identity(stage, h)
    if not isinstance(rec.get("config"), Mapping):
        return Identity(stage, h, (("config", h[:12]),))
    from detectron2.config import CfgNode

    ours = flatten_config(config_identity(CfgNode(rec["config"])))
    missing = "<unset>"
    differing = [
        k for k in set(ours) | set(official) if _canonical(ours.get(k, missing)) != _canonical(official.get(k, missing))
    ]
    rank = {k: i for i, k in enumerate(VOC_KEY_ORDER)}
    differing.sort(key=lambda k: (rank.get(k, len(rank)), k))
    return Identity(stage, h, tuple((k, _canonical(ours.get(k, missing))) for k in differing))


# ---------------------------------------------------------------- the Detectron2 config's identity
def config_identity(cfg) -> dict:
    """The config as a plain dict without the result-neutral keys: what the config hash covers."""
    data = yaml.safe_load(cfg.dump())
    for dotted in RESULT_NEUTRAL_KEYS:
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    return data


def config_hash(cfg) -> str:
    return sha256_json(config_identity(cfg))


def flatten_config(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_config(v, key + "."))
        else:
            out[key] = v
    return out
