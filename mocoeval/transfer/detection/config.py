"""The Detectron2 config of a trial: built from YAML + --opts, its identity (hash)."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from detectron2.config import CfgNode

from mocoeval.results.identity import flatten_config
from mocoeval.runtime.errors import UserError, one_line
from mocoeval.transfer.detection import modeling as d2_modeling

logger = logging.getLogger("mocoeval.voc")

# Config keys that do not change what a trial computes; left out of the config hash so that e.g. a
# resumed run may use another checkpoint period or device. SEED and weights are checked separately.
# Keys owned by command-line flags; setting them through --opts would bypass the bookkeeping.
FLAG_OWNED_KEYS = {
    "MODEL.WEIGHTS": "--weights",
    "SEED": "--seeds",
    "OUTPUT_DIR": "--output-dir",
    "MODEL.DEVICE": "--device",
}


@dataclasses.dataclass
class ConfigNotes:
    """What build_config changed on its own, to print (and test)."""

    lr_scaled: tuple[float, float] | None = None  # (from, to)
    # what the batch rule scaled: {"factor": 16 / batch, "MAX_ITER": [from, to], "STEPS": ..., ...} (JSON-ready)
    schedule_scaled: dict | None = None
    messages: list[str] = dataclasses.field(default_factory=list)


def opts_pairs(opts: Sequence[str]) -> list[tuple[str, str]]:
    if len(opts) % 2:
        raise UserError(
            f"config overrides (--opts or trailing pairs) come as KEY VALUE pairs, got {len(opts)} items, one "
            f"without its value: {' '.join(opts)}"
        )
    return [(opts[i], opts[i + 1]) for i in range(0, len(opts), 2)]


AMP_KEY = "SOLVER.AMP.ENABLED"  # set by --amp
SCHEDULE_KEYS = ("SOLVER.MAX_ITER", "SOLVER.STEPS", "SOLVER.WARMUP_ITERS")


def _scale_schedule(cfg: CfgNode, factor: float, keys: Sequence[str], notes: ConfigNotes) -> None:
    """Scale the schedule keys that --opts does not set by `factor` (= config batch / batch): the same
    number of epochs with another batch, as the protocol asks."""
    scaled, given = {}, []
    for key in SCHEDULE_KEYS:
        name = key.split(".")[1]
        old = cfg.SOLVER[name]
        if key in keys:
            given.append(f"{name} {_fmt(old)}")
        elif isinstance(old, (tuple, list)):
            cfg.SOLVER[name] = tuple(int(round(v * factor)) for v in old)
            scaled[name] = [list(old), list(cfg.SOLVER[name])]
        else:
            cfg.SOLVER[name] = int(round(old * factor))
            scaled[name] = [old, cfg.SOLVER[name]]
    given_text = f"as given by --opts: {', '.join(given)}" if given else ""
    if not scaled:
        notes.messages.append(f"schedule {given_text} (not scaled with the batch)")
        return
    notes.schedule_scaled = {"factor": factor, **scaled}
    notes.messages.append(
        f"schedule scaled by {factor:g} with the batch (same epochs): "
        + ", ".join(f"{k} {_fmt(a)} -> {_fmt(b)}" for k, (a, b) in scaled.items())
        + (f"; {given_text}" if given else "")
    )
    # e.g. a short check with MAX_ITER given: scaled steps past its end do nothing, a scaled warm-up is all of it
    late = [
        k
        for k in ("STEPS", "WARMUP_ITERS")
        if k in scaled and max(_as_tuple(cfg.SOLVER[k]), default=0) >= cfg.SOLVER.MAX_ITER
    ]
    if late:
        notes.messages.append(
            f"scaled {' and '.join(late)} reach MAX_ITER {cfg.SOLVER.MAX_ITER}: "
            f"set them with --opts too for a shorter schedule"
        )


def _as_tuple(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,)


def _fmt(v) -> str:
    return str(tuple(v)) if isinstance(v, (tuple, list)) else str(v)


def build_config(
    config_file: str | os.PathLike,
    opts: Sequence[str] = (),
    *,
    norm: str | None = None,
    device: str = "cpu",
    weights: str | os.PathLike = "",
    input_settings: Mapping[str, Any] | None = None,
    amp: bool = False,
) -> tuple[CfgNode, ConfigNotes]:
    """The config every trial of a run shares (OUTPUT_DIR and SEED are set per trial).

    `input_settings` (dotted key -> value, e.g. the normalisation converted weights record) replace the file's
    before `--opts` apply.

    The protocol's batch rule: if `--opts` changes SOLVER.IMS_PER_BATCH away from the config file's
    batch (16 in the protocol), BASE_LR is scaled by batch / 16 and MAX_ITER, STEPS and WARMUP_ITERS
    by 16 / batch (same number of epochs), each unless `--opts` sets it itself. What changed is in `notes`.

    `amp` (run_voc.py --amp) sets SOLVER.AMP.ENABLED, with which Detectron2's DefaultTrainer builds its AMPTrainer.
    """
    config_file = Path(config_file)
    if not config_file.is_file():
        raise UserError(f"config file not found: {config_file}")
    pairs = opts_pairs(list(opts))
    keys = [k for k, _ in pairs]
    for key in keys:
        if key in FLAG_OWNED_KEYS:
            raise UserError(f"set {key} with {FLAG_OWNED_KEYS[key]}, not --opts")
    try:
        file_cfg = d2_modeling.load_config(config_file)
    except (OSError, yaml.YAMLError, KeyError, ValueError, AssertionError) as e:
        raise UserError(f"cannot read config {config_file}: {one_line(e)}") from None
    cfg = file_cfg.clone()
    for dotted, value in (input_settings or {}).items():
        *parents, leaf = dotted.split(".")
        node = cfg
        for part in parents:
            node = node[part]
        node[leaf] = list(value) if isinstance(value, tuple) else value
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, ValueError, AssertionError, SyntaxError) as e:
        raise UserError(f"bad --opts: {one_line(e)}") from None
    notes = ConfigNotes()
    if amp:
        if AMP_KEY in keys and not cfg.SOLVER.AMP.ENABLED:
            raise UserError(f"--amp contradicts --opts {AMP_KEY} False: give one of them")
        cfg.SOLVER.AMP.ENABLED = True
    if cfg.SOLVER.AMP.ENABLED:
        # AMPTrainer.run_step asserts CUDA: refuse before any trial starts rather than fail at its first step
        if device == "cpu":
            raise UserError(f"AMP (--amp or {AMP_KEY} True) needs a GPU: Detectron2's AMPTrainer trains on CUDA only")
        notes.messages.append(
            "AMP: Detectron2's AMPTrainer (fp16 autocast, gradient scaling); the protocol trains in fp32, so the "
            "run's identity and its table rows say AMP"
        )
    if norm:
        cfg.MODEL.RESNETS.NORM = norm
    ref_batch, ref_lr = file_cfg.SOLVER.IMS_PER_BATCH, file_cfg.SOLVER.BASE_LR
    batch = cfg.SOLVER.IMS_PER_BATCH
    if batch <= 0:
        raise UserError(f"SOLVER.IMS_PER_BATCH must be positive, got {batch}")
    if batch != ref_batch:
        if "SOLVER.BASE_LR" in keys:
            notes.messages.append(
                f"SOLVER.IMS_PER_BATCH {batch} (config: {ref_batch}) with SOLVER.BASE_LR {cfg.SOLVER.BASE_LR} "
                f"as given (no linear scaling, since --opts sets it)"
            )
        else:
            new_lr = ref_lr * batch / ref_batch
            notes.lr_scaled = (ref_lr, new_lr)
            cfg.SOLVER.BASE_LR = new_lr
            notes.messages.append(
                f"SOLVER.IMS_PER_BATCH {batch} instead of {ref_batch}: BASE_LR scaled linearly {ref_lr:g} -> {new_lr:g}"
            )
        _scale_schedule(cfg, ref_batch / batch, keys, notes)
    if cfg.SOLVER.MAX_ITER <= 0:
        raise UserError(f"SOLVER.MAX_ITER must be positive, got {cfg.SOLVER.MAX_ITER}")
    cfg.MODEL.WEIGHTS = str(Path(weights).resolve()) if weights else ""
    cfg.MODEL.DEVICE = device
    return cfg, notes


def config_differences(old: dict, new: dict, limit: int = 3) -> str:
    """'KEY (old -> new), ...' for the first few differing keys of two config dicts."""
    a, b = flatten_config(old), flatten_config(new)
    diffs = [
        f"{k} ({a.get(k, '<unset>')} -> {b.get(k, '<unset>')})"
        for k in sorted(set(a) | set(b))
        if a.get(k, "<unset>") != b.get(k, "<unset>")
    ]
    more = f" and {len(diffs) - limit} more" if len(diffs) > limit else ""
    return ", ".join(diffs[:limit]) + more
