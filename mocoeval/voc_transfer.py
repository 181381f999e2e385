"""VOC07+12 detection transfer (the MoCo protocol): N seeded Faster R-CNN R50-C4 trials, resumable.

One command trains and evaluates N trials of the same converted backbone, each with its own seed,
and summarises them (mean, population std, min, max). Layout of a run directory (`--output-dir`):

    trial_1/ ... trial_N/   one Detectron2 training each; trials are numbered from 1 and trial i
                            uses seed SEEDS[i-1] (default seed i-1, i.e. 0, 1, ..., N-1)
        trial.json          the trial's identity, written before it trains: seed, config hash, weights
        config.yaml         the full Detectron2 config it trains with
        log.txt             its log; events.json is Detectron2's per-iteration JSON event log
                            (Detectron2 calls it metrics.json; renamed, that name is ours)
        events.out.tfevents.*   tensorboard
        model_XXXXXXX.pth, last_checkpoint   Detectron2's periodic checkpoints: resume points, deleted
                            once the trial has finished (model_final.pth, the trained detector, stays)
        metrics.json        written once, atomically, after the VOC07 test evaluation: AP50/AP/AP75
    summary.json, summary.csv   over the requested trials (std with ddof=0, as the official README's ±)
    log.txt                 the orchestration log of every invocation
    run_record.json         which results-store record this directory wrote last

Re-running the same command skips finished trials, resumes an interrupted one from its last
checkpoint and never rewrites a finished trial's metrics. A trial directory remembers its config
hash, seed and weights; a request that differs is refused rather than mixed into one summary.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as _dt
import gc
import io
import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import yaml
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.engine import DefaultTrainer, HookBase, launch
from detectron2.evaluation import PascalVOCDetectionEvaluator
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter
from detectron2.utils.logger import setup_logger

from . import d2_modeling
from .d2_convert import NEW_IN_DETECTOR, quiet_loggers
from .errors import UserError
from .fileio import atomic_write_json, atomic_write_text, sha256_file, sha256_json

logger = logging.getLogger("mocoeval.voc")

METRICS = ("AP50", "AP", "AP75")
STD_DDOF = 0  # population std, like the official MoCo README's "± std" over 5 trials
DEFAULT_TRIALS = 5
# Only these may be new (randomly initialised) when a converted backbone is loaded into R50-C4:
# the RPN, the box predictor and the extra res5 norm (the converter's list).
ALLOWED_MISSING_PREFIXES = NEW_IN_DETECTOR
# Config keys that do not change what a trial computes; left out of the config hash so that e.g. a
# resumed run may use another checkpoint period or device. SEED and weights are checked separately.
RESULT_NEUTRAL_KEYS = ("OUTPUT_DIR", "SEED", "MODEL.WEIGHTS", "MODEL.DEVICE", "DATALOADER.NUM_WORKERS",
                       "SOLVER.CHECKPOINT_PERIOD", "VIS_PERIOD")
# Keys owned by command-line flags; setting them through --opts would bypass the bookkeeping.
FLAG_OWNED_KEYS = {"MODEL.WEIGHTS": "--weights", "SEED": "--seeds", "OUTPUT_DIR": "--output-dir",
                   "MODEL.DEVICE": "--device"}
VOC_DATASET_RE = re.compile(r"^voc_(\d{4})_(\w+)$")
TRIAL_DIR_RE = re.compile(r"^trial_(\d+)$")
LOGGER_NAMES = ("detectron2", "fvcore", "mocoeval")


def default_seeds(n: int) -> list[int]:
    """The documented default: trial i (1-based) uses seed i - 1, so `--trials 5` after `--trials 3`
    keeps the first three trials' seeds."""
    return list(range(n))


def trial_dir(output_dir: str | os.PathLike, index: int) -> Path:
    return Path(output_dir) / f"trial_{index}"


def format_seconds(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    return str(_dt.timedelta(seconds=int(round(max(0.0, seconds)))))


# --------------------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass
class ConfigNotes:
    """What build_config changed on its own, to print (and test)."""
    lr_scaled: tuple[float, float] | None = None  # (from, to)
    messages: list[str] = dataclasses.field(default_factory=list)


def _opts_pairs(opts: Sequence[str]) -> list[tuple[str, str]]:
    if len(opts) % 2:
        raise UserError(f"--opts takes KEY VALUE pairs, got an odd number of items: {' '.join(opts)}")
    return [(opts[i], opts[i + 1]) for i in range(0, len(opts), 2)]


def build_config(config_file: str | os.PathLike, opts: Sequence[str] = (), *, norm: str | None = None,
                 device: str = "cpu", weights: str | os.PathLike = "") -> tuple[CfgNode, ConfigNotes]:
    """The config every trial of a run shares (OUTPUT_DIR and SEED are set per trial).

    Linear scaling rule: if `--opts` changes SOLVER.IMS_PER_BATCH away from the config file's
    batch (16 in the protocol) and does not set SOLVER.BASE_LR itself, BASE_LR is scaled by the
    same factor. The schedule (MAX_ITER, STEPS) is never changed silently; the protocol's advice for a
    smaller batch (halve batch and lr, double steps and iterations) is printed instead.
    """
    config_file = Path(config_file)
    if not config_file.is_file():
        raise UserError(f"config file not found: {config_file}")
    pairs = _opts_pairs(list(opts))
    keys = [k for k, _ in pairs]
    for key in keys:
        if key in FLAG_OWNED_KEYS:
            raise UserError(f"set {key} with {FLAG_OWNED_KEYS[key]}, not --opts")
    try:
        file_cfg = d2_modeling.load_config(config_file)
    except (OSError, yaml.YAMLError, KeyError, ValueError, AssertionError) as e:
        raise UserError(f"cannot read config {config_file}: {_one_line(e)}") from None
    cfg = file_cfg.clone()
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, ValueError, AssertionError, SyntaxError) as e:
        raise UserError(f"bad --opts: {_one_line(e)}") from None
    notes = ConfigNotes()
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
                f"as given (no linear scaling, since --opts sets it)")
        else:
            new_lr = ref_lr * batch / ref_batch
            notes.lr_scaled = (ref_lr, new_lr)
            cfg.SOLVER.BASE_LR = new_lr
            notes.messages.append(
                f"SOLVER.IMS_PER_BATCH {batch} instead of {ref_batch}: BASE_LR scaled linearly "
                f"{ref_lr:g} -> {new_lr:g}")
        if not {"SOLVER.MAX_ITER", "SOLVER.STEPS"} & set(keys):
            factor = ref_batch / batch
            steps = tuple(int(round(s * factor)) for s in cfg.SOLVER.STEPS)
            notes.messages.append(
                f"schedule left as configured (MAX_ITER {cfg.SOLVER.MAX_ITER}, STEPS {tuple(cfg.SOLVER.STEPS)}); "
                f"the protocol scales it with the batch: --opts SOLVER.MAX_ITER "
                f"{int(round(cfg.SOLVER.MAX_ITER * factor))} SOLVER.STEPS \"{steps}\"")
    if cfg.SOLVER.MAX_ITER <= 0:
        raise UserError(f"SOLVER.MAX_ITER must be positive, got {cfg.SOLVER.MAX_ITER}")
    cfg.MODEL.WEIGHTS = str(Path(weights).resolve()) if weights else ""
    cfg.MODEL.DEVICE = device
    return cfg, notes


def config_identity(cfg: CfgNode) -> dict:
    """The config as a plain dict without the result-neutral keys: what the config hash covers."""
    data = yaml.safe_load(cfg.dump())
    for dotted in RESULT_NEUTRAL_KEYS:
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    return data


def config_hash(cfg: CfgNode) -> str:
    return sha256_json(config_identity(cfg))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(old: dict, new: dict, limit: int = 3) -> str:
    """'KEY (old -> new), ...' for the first few differing keys of two config dicts."""
    a, b = _flatten(old), _flatten(new)
    diffs = [f"{k} ({a.get(k, '<unset>')} -> {b.get(k, '<unset>')})" for k in sorted(set(a) | set(b))
             if a.get(k, "<unset>") != b.get(k, "<unset>")]
    more = f" and {len(diffs) - limit} more" if len(diffs) > limit else ""
    return ", ".join(diffs[:limit]) + more


def voc_splits(cfg: CfgNode) -> list[tuple[str, str]]:
    """(year, split) of every dataset the config uses; only Pascal VOC splits are supported."""
    splits = []
    for field in ("TRAIN", "TEST"):
        names = list(cfg.DATASETS[field])
        if not names:
            raise UserError(f"DATASETS.{field} is empty")
        for name in names:
            m = VOC_DATASET_RE.match(name)
            if not m:
                raise UserError(f"DATASETS.{field} names {name!r}: run_voc.py trains and evaluates on Pascal VOC "
                                f"splits only (voc_YYYY_split, e.g. voc_2007_test)")
            if (m[1], m[2]) not in splits:
                splits.append((m[1], m[2]))
    return splits


def check_dataset(cfg: CfgNode, dataset_root: str | os.PathLike) -> None:
    """Register Detectron2's VOC datasets under `dataset_root` and check every split the config uses."""
    from .data.layout import check_voc_root
    from .data.voc import register_voc_datasets

    root = Path(dataset_root)
    if not root.is_dir():
        raise UserError(f"dataset root not found: {root} (set --dataset-root or DETECTRON2_DATASETS)")
    check_voc_root(root, splits=tuple(voc_splits(cfg)))
    register_voc_datasets(root)


# --------------------------------------------------------------------------------------------------
# Weights


@dataclasses.dataclass(frozen=True)
class WeightsInfo:
    path: str
    sha256: str
    source: dict  # the converter's mocoeval_source ({} for a .pkl made elsewhere)
    source_sha256: str  # the source checkpoint's sha256, or the .pkl's own when unknown
    variant: dict


def check_weights(path: str | os.PathLike, variant_name: str | None = None) -> WeightsInfo:
    """Check that `path` is a converted R50 Detectron2 pickle; identify it for the results store."""
    from .d2_convert import check_d2_pickle
    from .results_store import SPECIAL_VARIANTS, special_variant

    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    data = check_d2_pickle(path)
    source = dict(data.get("mocoeval_source") or {})
    del data
    sha = sha256_file(path)
    variant = source.get("variant")
    if variant_name:
        if variant and variant_name not in SPECIAL_VARIANTS:
            variant = {**variant, "name": variant_name}
        else:
            variant = special_variant(variant_name)
    elif not variant:
        variant = special_variant(path.stem)
        logger.warning(f"{path} does not say which pretraining it comes from (not made by convert/to_d2.py); "
                       f"recording it as variant {path.stem!r} (set --variant to name it)")
    return WeightsInfo(path=str(path.resolve()), sha256=sha, source=source,
                       source_sha256=source.get("sha256") or sha, variant=dict(variant))


def classify_loaded_keys(missing: Iterable[str], unexpected: Iterable[str]) -> tuple[list[str], list[str]]:
    """(bad missing keys, unused checkpoint keys) after loading converted weights into the detector.

    Only the RPN, the box predictor and the extra res5 norm are new layers; BN's num_batches_tracked
    counters are bookkeeping, not weights.
    """
    bad = sorted(k for k in missing
                 if not k.startswith(ALLOWED_MISSING_PREFIXES) and not k.endswith("num_batches_tracked"))
    return bad, sorted(unexpected)


def check_loaded_keys(missing, unexpected, weights: str) -> list[str]:
    """Raise UserError if backbone/res5 tensors were not loaded; return the unused checkpoint keys."""
    bad, unused = classify_loaded_keys(missing, unexpected)
    if bad:
        raise UserError(f"{weights}: {len(bad)} detector tensors are not in the weights (only the RPN, box predictor "
                        f"and roi_heads.res5.norm may be new), e.g. {', '.join(bad[:3])}")
    if unused:
        logger.warning(f"{len(unused)} tensors of {weights} are not used by the detector "
                       f"(e.g. a projection head): {', '.join(unused[:6])}{' ...' if len(unused) > 6 else ''}")
    return unused


class TrialCheckpointer(DetectionCheckpointer):
    """Detectron2's checkpointer that keeps the incompatible keys of its last load (for the check
    that only the new detection layers were missing) and tags `last_checkpoint` atomically, so that a
    crash while tagging never leaves a trial that cannot resume."""

    last_incompatible = None

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        self.last_incompatible = incompatible
        return incompatible

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write_text(Path(self.save_dir) / "last_checkpoint", last_filename_basename)


def preflight_weights(cfg: CfgNode, weights: WeightsInfo) -> tuple[list[str], str]:
    """Build the detector on CPU and load the weights once, before any training: a .pkl whose backbone
    does not fit is refused up front (also before Slurm jobs are submitted).
    Returns (unused checkpoint keys, a one-line report of what was loaded and what is new)."""
    from detectron2.modeling import build_model

    cpu_cfg = cfg.clone()
    cpu_cfg.defrost()
    cpu_cfg.MODEL.DEVICE = "cpu"
    # the trial's own load logs Detectron2's key report
    with quiet_loggers(*(n for n in LOGGER_NAMES if n != "mocoeval")):
        model = build_model(cpu_cfg)
        n_model = len(model.state_dict())
        checkpointer = TrialCheckpointer(model)
        checkpointer.load(weights.path, checkpointables=[])
    incompatible = checkpointer.last_incompatible
    del model, checkpointer
    gc.collect()
    unused = check_loaded_keys(incompatible.missing_keys, incompatible.unexpected_keys, weights.path)
    new = [k for k in incompatible.missing_keys if k.startswith(ALLOWED_MISSING_PREFIXES)]
    groups = {"RPN": "proposal_generator.", "box predictor": "roi_heads.box_predictor.",
              "res5 norm": "roi_heads.res5.norm."}
    report = (f"weights fit the detector: {n_model - len(incompatible.missing_keys)} of {n_model} tensors loaded; "
              f"new, trained from scratch: " + ", ".join(f"{name} ({sum(k.startswith(p) for k in new)})"
                                                        for name, p in groups.items())
              + f"; unused in the file: {len(unused)}")
    return unused, report


# --------------------------------------------------------------------------------------------------
# Detectron2 trainer


class TrialProgress(HookBase):
    """Logs "trial i/N" with the trial's ETA and the whole command's ETA every `period` iterations.

    Seconds per iteration are measured from the end of the first iteration (which carries start-up
    costs); the remaining trials are estimated from the finished ones of this invocation when there are
    any (evaluation included), else as MAX_ITER iterations at the current speed.
    """

    def __init__(self, trial: int, n_trials: int, later_trials: int, later_trial_s: float | None,
                 period: int = 100):
        self.trial, self.n_trials = trial, n_trials
        self.later_trials, self.later_trial_s = later_trials, later_trial_s
        self.period = period
        self._t0 = self._iter0 = None

    def after_step(self):
        done = self.trainer.iter + 1
        now = time.perf_counter()
        if self._t0 is None:
            self._t0, self._iter0 = now, done
            return
        if done % self.period and done != self.trainer.max_iter:
            return
        s_per_iter = (now - self._t0) / max(1, done - self._iter0)
        trial_eta = s_per_iter * (self.trainer.max_iter - done)
        per_later = self.later_trial_s if self.later_trial_s else s_per_iter * self.trainer.max_iter
        overall = trial_eta + per_later * self.later_trials
        logger.info(f"trial {self.trial}/{self.n_trials}: iter {done}/{self.trainer.max_iter} "
                    f"({s_per_iter:.2f} s/iter), trial ETA {format_seconds(trial_eta)}, overall ETA "
                    f"{format_seconds(overall)} ({self.later_trials} more trial(s) after this one; "
                    f"evaluation not included)")


class VOCTrainer(DefaultTrainer):
    """Detectron2's DefaultTrainer evaluating with PascalVOCDetectionEvaluator (VOC07 11-point AP at
    IoU 0.50:0.05:0.95 -> AP, AP50, AP75), with our checkpointer, progress hook and event-log name."""

    def __init__(self, cfg, progress: TrialProgress | None = None):
        self._progress = progress  # read by build_hooks, which DefaultTrainer.__init__ calls
        super().__init__(cfg)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name):
        return PascalVOCDetectionEvaluator(dataset_name)

    def build_hooks(self):
        # DefaultTrainer.__init__ created a plain DetectionCheckpointer just before calling this; swap in
        # ours (same model, directory and trainer state) so that the checkpoint hook uses it too.
        self.checkpointer = TrialCheckpointer(self.checkpointer.model, self.cfg.OUTPUT_DIR,
                                              **self.checkpointer.checkpointables)
        hooks = super().build_hooks()
        if self._progress is not None and comm.is_main_process():
            hooks.insert(-1, self._progress)  # before the writers, which run last
        return hooks

    def build_writers(self):
        out = self.cfg.OUTPUT_DIR
        return [CommonMetricPrinter(self.max_iter), JSONWriter(os.path.join(out, "events.json")),
                TensorboardXWriter(out)]


def extract_voc_metrics(results: Any) -> dict[str, float]:
    """AP50/AP/AP75 from the evaluator's {"bbox": {...}} (as DefaultTrainer.test returns it)."""
    if not isinstance(results, dict) or not isinstance(results.get("bbox"), dict):
        raise RuntimeError(f"no VOC bbox results from the evaluation: {results!r}")
    box = results["bbox"]
    out = {}
    for m in METRICS:
        if m not in box:
            raise RuntimeError(f"evaluation results lack {m}: {box!r}")
        out[m] = float(box[m])
    return out


# --------------------------------------------------------------------------------------------------
# One trial


@dataclasses.dataclass
class TrialSpec:
    """Everything a worker process needs to run one trial (picklable: it crosses spawn/submitit)."""
    index: int
    n_trials: int
    seed: int
    cfg: CfgNode  # frozen; OUTPUT_DIR = the trial directory, SEED = seed
    identity: dict  # seed, config_hash, weights, weights_sha256 (copied into metrics.json)
    dataset_root: str
    num_gpus: int = 1
    num_machines: int = 1
    machine_rank: int = 0
    dist_url: str = "auto"
    later_trials: int = 0
    later_trial_s: float | None = None

    @property
    def dir(self) -> Path:
        return Path(self.cfg.OUTPUT_DIR)


def setup_logging(rank: int = 0) -> None:
    """Detectron2-style console logging for our loggers and Detectron2's (idempotent)."""
    for name in LOGGER_NAMES:
        setup_logger(output=None, distributed_rank=rank, name=name,
                     abbrev_name={"detectron2": "d2", "mocoeval": "mocoeval"}.get(name))


@contextlib.contextmanager
def log_file(path: Path):
    """Also log (our loggers and Detectron2's) to `path` while inside the block."""
    handler = logging.FileHandler(path)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(name)s %(levelname)s: %(message)s",
                                           datefmt="%m/%d %H:%M:%S"))
    loggers = [logging.getLogger(n) for n in LOGGER_NAMES]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
        handler.close()


def read_metrics(trial_path: Path) -> dict | None:
    """A finished trial's metrics.json, or None if the trial has not finished."""
    path = Path(trial_path) / "metrics.json"
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        if not all(isinstance(data.get(m), (int, float)) for m in METRICS):
            raise ValueError(f"lacks one of {METRICS}")
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is unreadable ({_one_line(e)}); move it away to re-run that trial") from None
    return data


def _write_metrics_once(path: Path, metrics: dict) -> None:
    if path.exists():  # e.g. a duplicate job finished first: never replace a finished trial's result
        raise RuntimeError(f"{path} already exists; not overwriting a finished trial's metrics")
    atomic_write_json(path, metrics)


def run_trial(spec: TrialSpec) -> None:
    """Train and evaluate one trial in this process (one rank of it under launch()).

    Resumes from the trial's last checkpoint when there is one, else loads the converted weights
    (MODEL.WEIGHTS) and checks that only the new detection layers were missing.
    """
    rank = comm.get_rank()
    setup_logging(rank)
    from .data.voc import register_voc_datasets

    register_voc_datasets(spec.dataset_root)
    spec.dir.mkdir(parents=True, exist_ok=True)
    log_name = "log.txt" if rank == 0 else f"log.txt.rank{rank}"
    with log_file(spec.dir / log_name):
        start = time.time()
        seed_all_rng(spec.seed + rank)
        progress = TrialProgress(spec.index, spec.n_trials, spec.later_trials, spec.later_trial_s,
                                 period=max(1, min(100, spec.cfg.SOLVER.MAX_ITER // 10)))
        trainer = VOCTrainer(spec.cfg, progress=progress)
        resumed = trainer.checkpointer.has_checkpoint()
        trainer.resume_or_load(resume=True)
        if resumed:
            logger.info(f"trial {spec.index}/{spec.n_trials}: resuming from iteration {trainer.start_iter}")
        else:
            inc = trainer.checkpointer.last_incompatible
            check_loaded_keys(inc.missing_keys, inc.unexpected_keys, spec.cfg.MODEL.WEIGHTS)
        trainer.train()
        results = getattr(trainer, "_last_eval_results", None)  # set by DefaultTrainer's final EvalHook
        if comm.is_main_process():
            metrics = extract_voc_metrics(results)
            record = {
                "trial": spec.index, **metrics, **spec.identity,
                "iterations": spec.cfg.SOLVER.MAX_ITER,
                "resumed_from_iter": trainer.start_iter if resumed else None,
                "wall_time_s": round(time.time() - start, 3),  # of the session that finished the trial
                "world_size": comm.get_world_size(), "device": spec.cfg.MODEL.DEVICE,
                "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            }
            _write_metrics_once(spec.dir / "metrics.json", record)
            # The intermediate checkpoints were resume points only; model_final.pth stays.
            for ckpt in spec.dir.glob("model_[0-9]*.pth"):
                ckpt.unlink()
        del trainer
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def launch_trial(spec: TrialSpec) -> None:
    """run_trial over spec.num_gpus processes per machine with Detectron2's launch (one process: direct
    call, no process group)."""
    launch(run_trial, spec.num_gpus, num_machines=spec.num_machines, machine_rank=spec.machine_rank,
           dist_url=spec.dist_url, args=(spec,))


class SlurmTrialJob:
    """The callable submitted with submitit for one trial. On a time limit or preemption submitit calls
    `checkpoint`, which requeues the same job: it then resumes from the trial's last checkpoint."""

    def __init__(self, spec: TrialSpec):
        self.spec = spec

    def __call__(self):
        launch_trial(self.spec)
        return read_metrics(self.spec.dir)

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(SlurmTrialJob(self.spec))


# --------------------------------------------------------------------------------------------------
# The run: plan, execute, summarise


@dataclasses.dataclass
class RunOptions:
    weights: str
    trials: int | None = None
    seeds: list[int] | None = None
    config_file: str = str(d2_modeling.DEFAULT_VOC_CONFIG)
    output_dir: str | None = None
    num_gpus: int = 1
    num_machines: int = 1
    machine_rank: int = 0
    dist_url: str = "auto"
    dataset_root: str | None = None
    norm: str | None = None
    opts: list[str] = dataclasses.field(default_factory=list)
    variant: str | None = None
    device: str = "auto"
    launcher: str = "local"
    partition: str | None = None
    gpus_per_job: int | None = None
    time_min: int = 24 * 60
    cpus_per_task: int = 10
    dry_run: bool = False
    # submitit cluster behind --launcher slurm; "local" runs the same jobs as local processes (tests)
    slurm_cluster: str = "slurm"


@dataclasses.dataclass
class TrialPlan:
    index: int
    seed: int
    status: str  # "finished", "resume", "new"
    metrics: dict | None = None


def resolve_seeds(trials: int | None, seeds: Sequence[int] | None) -> list[int]:
    if seeds:
        if trials is not None and trials != len(seeds):
            raise UserError(f"--trials {trials} but {len(seeds)} --seeds given; give one seed per trial")
        if len(set(seeds)) != len(seeds):
            raise UserError(f"--seeds must differ: {' '.join(map(str, seeds))}")
        if any(s < 0 for s in seeds):
            raise UserError("--seeds must be >= 0 (Detectron2 treats a negative seed as 'random')")
        return list(seeds)
    n = DEFAULT_TRIALS if trials is None else trials
    if n < 1:
        raise UserError(f"--trials must be >= 1, got {n}")
    return default_seeds(n)


def _identity_mismatch(tdir: Path, recorded: dict, identity: dict, cfg_identity: dict, source: str) -> str | None:
    if recorded.get("seed") != identity["seed"]:
        return (f"{tdir} was run with seed {recorded.get('seed')}, not {identity['seed']} "
                f"(pass the same --seeds as before)")
    if recorded.get("weights_sha256") != identity["weights_sha256"]:
        return (f"{tdir} was trained from other weights ({recorded.get('weights')}, sha256 "
                f"{str(recorded.get('weights_sha256'))[:12]}) than {identity['weights']}")
    if recorded.get("config_hash") != identity["config_hash"]:
        detail = ""
        cfg_file = tdir / "config.yaml"
        if cfg_file.exists():
            try:
                old = d2_modeling.load_config(cfg_file)
                detail = ": " + config_differences(config_identity(old), cfg_identity)
            except Exception:  # a foreign/corrupt config.yaml only loses the detail
                detail = ""
        return f"{tdir} ({source}) was run with a different config{detail}"
    return None


def plan_trials(output_dir: Path, seeds: Sequence[int], identity_base: dict, cfg_identity: dict) -> list[TrialPlan]:
    """Which of trials 1..N are finished, to be resumed, or new; refuse to mix different setups."""
    plans = []
    for i, seed in enumerate(seeds, start=1):
        tdir = trial_dir(output_dir, i)
        identity = {**identity_base, "seed": seed}
        metrics = read_metrics(tdir)
        hint = "; use another --output-dir"
        if metrics is not None:
            why = _identity_mismatch(tdir, metrics, identity, cfg_identity, "finished")
            if why:
                raise UserError(why + "; refusing to mix results" + hint)
            plans.append(TrialPlan(i, seed, "finished", metrics))
            continue
        trial_json = tdir / "trial.json"
        has_ckpt = (tdir / "last_checkpoint").exists()
        if trial_json.exists():
            try:
                recorded = json.loads(trial_json.read_text())
            except (OSError, ValueError) as e:
                raise UserError(f"{trial_json} is unreadable ({_one_line(e)}){hint}") from None
            why = _identity_mismatch(tdir, recorded, identity, cfg_identity, "unfinished")
            if why:
                raise UserError(f"{why}; delete {tdir} to restart that trial, or use another --output-dir")
            plans.append(TrialPlan(i, seed, "resume" if has_ckpt else "new"))
        elif has_ckpt:
            raise UserError(f"{tdir} holds checkpoints of an unknown run (no trial.json){hint}")
        else:
            plans.append(TrialPlan(i, seed, "new"))
    return plans


def summarize(output_dir: Path, trial_metrics: list[dict], requested: int, failed: list[int]) -> tuple[dict, str]:
    """Write summary.json and summary.csv; return the summary and a printable table."""
    import pandas as pd

    columns = ["trial", "seed", *METRICS, "wall_time_s"]
    rows = pd.DataFrame([{c: m.get(c) for c in columns} for m in trial_metrics], columns=columns)
    stats = {}
    for m in METRICS:
        values = rows[m].astype(float)
        stats[m] = {"mean": float(values.mean()), "std": float(values.std(ddof=STD_DDOF)) if len(values) else math.nan,
                    "min": float(values.min()), "max": float(values.max()), "n": int(values.count()),
                    "values": [float(v) for v in values]}
    summary = {
        "metrics": stats, "std_ddof": STD_DDOF, "n_trials": len(trial_metrics), "requested_trials": requested,
        "failed_trials": failed, "trials": rows.to_dict(orient="records"),
        "dataset": "voc_2007_test (PascalVOCDetectionEvaluator, VOC07 11-point AP)",
    }
    atomic_write_json(output_dir / "summary.json", summary)

    def cell(v, digits):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        return str(int(v)) if digits == 0 else f"{float(v):.{digits}f}"

    def table_rows(digits):
        out = [{"row": f"trial_{t['trial']}", "trial": cell(t["trial"], 0), "seed": cell(t["seed"], 0),
                **{m: cell(t[m], digits) for m in METRICS}, "wall_time_s": cell(t["wall_time_s"], 1)}
               for t in summary["trials"]]
        for label, key in [("mean", "mean"), (f"std (ddof={STD_DDOF})", "std"), ("min", "min"), ("max", "max"),
                           ("n", "n")]:
            out.append({"row": label, "trial": "", "seed": "", "wall_time_s": "",
                        **{m: cell(stats[m][key], 0 if key == "n" else digits) for m in METRICS}})
        return pd.DataFrame(out, columns=["row", "trial", "seed", *METRICS, "wall_time_s"])

    buf = io.StringIO()
    table_rows(4).to_csv(buf, index=False, quoting=csv.QUOTE_MINIMAL)
    atomic_write_text(output_dir / "summary.csv", buf.getvalue())
    text = table_rows(2)[["row", "seed", *METRICS]].to_string(index=False)
    return summary, text


def record_run(output_dir: Path, summary: dict, weights: WeightsInfo, cfg_hash: str, cfg_identity: dict,
               seeds: list[int], wall_time_s: float, invocation_s: float | None = None) -> Path | None:
    """One results-store record per distinct result of this run directory (re-runs that change nothing
    write none); a record for more trials names the one it supersedes in extra.supersedes."""
    from . import results_store

    marker = output_dir / "run_record.json"
    content_hash = sha256_json({"metrics": summary["metrics"], "trials": summary["trials"], "weights": weights.sha256,
                                "config_hash": cfg_hash})
    previous = None
    if marker.exists():
        try:
            previous = json.loads(marker.read_text())
        except (OSError, ValueError):
            previous = None
    if previous and previous.get("content_hash") == content_hash and Path(previous.get("record", "")).exists():
        logger.info(f"results already recorded in {previous['record']}")
        return None
    metrics = {m: summary["metrics"][m]["mean"] for m in METRICS}
    metrics.update({f"{m}_std": summary["metrics"][m]["std"] for m in METRICS})
    metrics.update({"n_trials": summary["n_trials"], "std_ddof": STD_DDOF,
                    "per_trial": {m: summary["metrics"][m]["values"] for m in METRICS}})
    path = results_store.write_run_record(
        "voc", variant=weights.variant, metrics=metrics, source_sha256=weights.source_sha256,
        weights=weights.path, weights_sha256=weights.sha256, seeds=seeds, config=cfg_identity,
        config_hash=cfg_hash, trials=summary["trials"], wall_time_s=round(wall_time_s, 3),
        extra={"run_dir": str(output_dir.resolve()), "wall_time": "summed over the trials",
               "invocation_s": round(invocation_s, 3) if invocation_s is not None else None,
               "supersedes": previous.get("record") if previous else None,
               "weights_source": weights.source or None})
    atomic_write_json(marker, {"record": str(path), "content_hash": content_hash})
    logger.info(f"results recorded in {path}")
    return path


def regenerate_tables() -> None:
    try:
        from . import tables
    except ImportError as e:
        logger.warning(f"results tables not regenerated (mocoeval.tables unavailable: {e})")
        return
    try:
        tables.regenerate()
    except Exception as e:  # the VOC results are safe on disk; the tables can be rebuilt later
        logger.warning(f"results tables not regenerated ({type(e).__name__}: {_one_line(e)}); "
                       f"run python results/make_tables.py")


def _resolve_device(device: str, num_gpus: int, launcher: str) -> str:
    if device == "auto":
        device = "cuda" if (torch.cuda.is_available() or launcher == "slurm") else "cpu"
    if device == "cuda" and launcher == "local" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is available here")
    if device == "cpu" and num_gpus > 1:
        raise UserError(f"--num-gpus {num_gpus} needs CUDA; CPU runs use one process")
    return device


def run(opts: RunOptions) -> int:
    """The whole command: checks, trials (skip/resume/new), summary, results record, tables.
    Returns the exit code: 0 if every requested trial has finished, 1 if any failed."""
    t_start = time.time()
    setup_logging(0 if opts.machine_rank == 0 else 1)
    seeds = resolve_seeds(opts.trials, opts.seeds)
    n = len(seeds)
    if opts.num_gpus < 1 or opts.num_machines < 1 or not (0 <= opts.machine_rank < opts.num_machines):
        raise UserError("--num-gpus and --num-machines must be >= 1 and 0 <= --machine-rank < --num-machines")
    if opts.num_machines > 1 and opts.dist_url == "auto":
        raise UserError("--num-machines > 1 needs --dist-url tcp://HOST:PORT of machine 0")
    if opts.launcher == "slurm" and opts.num_machines > 1:
        raise UserError("--launcher slurm runs each trial as a one-node job; use --gpus-per-job, not --num-machines")
    if opts.launcher == "slurm":
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise UserError("--launcher slurm needs submitit: pip install submitit") from None
    gpus_per_trial = (opts.gpus_per_job or opts.num_gpus) if opts.launcher == "slurm" else opts.num_gpus
    device = _resolve_device(opts.device, gpus_per_trial, opts.launcher)

    weights = check_weights(opts.weights, opts.variant)
    cfg, notes = build_config(opts.config_file, opts.opts, norm=opts.norm, device=device, weights=weights.path)
    world = gpus_per_trial * opts.num_machines
    if cfg.SOLVER.IMS_PER_BATCH % world:
        raise UserError(f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} is not divisible by {world} processes")
    if cfg.MODEL.RESNETS.NORM == "BN" and world > 1:
        notes.messages.append(f"NORM BN with {world} processes normalises per GPU "
                              f"({cfg.SOLVER.IMS_PER_BATCH // world} images); the protocol synchronises BN")
    dataset_root = opts.dataset_root or os.environ.get("DETECTRON2_DATASETS", "datasets")
    check_dataset(cfg, dataset_root)
    output_dir = Path(opts.output_dir or Path("output") / f"voc_{Path(opts.weights).stem}")
    cfg_hash, cfg_identity = config_hash(cfg), config_identity(cfg)
    identity_base = {"config_hash": cfg_hash, "weights": weights.path, "weights_sha256": weights.sha256}
    plans = plan_trials(output_dir, seeds, identity_base, cfg_identity)
    pending = [p for p in plans if p.status != "finished"]
    unused, load_report = preflight_weights(cfg, weights) if pending else ([], None)

    is_main = opts.machine_rank == 0
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    with (log_file(output_dir / "log.txt") if is_main else contextlib.nullcontext()):
        for msg in notes.messages:
            logger.info(msg)
        logger.info(f"{n} trial(s) in {output_dir}: weights {weights.path} (sha256 {weights.sha256[:12]}), "
                    f"variant {weights.variant.get('name')}, config {opts.config_file} (hash {cfg_hash[:12]}), "
                    f"seeds {seeds}, device {device}, data {dataset_root}")
        if load_report:
            logger.info(load_report)
        for p in plans:
            if p.status == "finished":
                logger.info(f"trial {p.index}/{n} (seed {p.seed}): finished earlier, skipped — "
                            + ", ".join(f"{m} {p.metrics[m]:.2f}" for m in METRICS))
        extra_dirs = sorted(int(m[1]) for d in output_dir.glob("trial_*") if (m := TRIAL_DIR_RE.match(d.name))
                            and int(m[1]) > n) if output_dir.is_dir() else []
        if extra_dirs:
            logger.info(f"trials {extra_dirs} exist in {output_dir} but are outside --trials {n}: not summarised")
        if opts.dry_run:
            for p in pending:
                logger.info(f"trial {p.index}/{n} (seed {p.seed}): would {'resume' if p.status == 'resume' else 'start'}")
            logger.info("dry run: nothing trained")
            return 0

        specs = []
        for k, p in enumerate(pending):
            tcfg = cfg.clone()
            tcfg.OUTPUT_DIR = str(trial_dir(output_dir, p.index).resolve())
            tcfg.SEED = p.seed
            tcfg.freeze()
            specs.append(TrialSpec(
                index=p.index, n_trials=n, seed=p.seed, cfg=tcfg,
                identity={**identity_base, "seed": p.seed, "dataset_root": str(Path(dataset_root).resolve()),
                          "unused_weight_keys": unused},
                dataset_root=str(Path(dataset_root).resolve()), num_gpus=gpus_per_trial,
                num_machines=opts.num_machines, machine_rank=opts.machine_rank, dist_url=opts.dist_url,
                later_trials=(len(pending) - k - 1) if opts.launcher == "local" else 0))
            if is_main:
                _prepare_trial_dir(specs[-1])

        failed: dict[int, str] = {}
        if opts.launcher == "slurm":
            failed = _run_on_slurm(specs, opts, output_dir)
        else:
            failed = _run_locally(specs)

        if not is_main:
            return 1 if failed else 0
        finished = []
        for p in plans:
            m = read_metrics(trial_dir(output_dir, p.index))
            if m is not None:
                finished.append(m)
            elif p.index not in failed:
                failed[p.index] = "no metrics.json after the run"
        summary = None
        if finished:
            summary, table = summarize(output_dir, finished, n, sorted(failed))
            logger.info(f"VOC07 test over {len(finished)}/{n} trial(s) (std: population, ddof={STD_DDOF}):\n{table}")
            logger.info(f"summary: {output_dir / 'summary.json'}, {output_dir / 'summary.csv'}")
        if failed or summary is None:
            for i, why in sorted(failed.items()):
                logger.error(f"trial {i}/{n} FAILED: {why} (log: {trial_dir(output_dir, i) / 'log.txt'})")
            logger.error(f"{len(failed)} of {n} trial(s) failed; re-run the same command to retry them "
                         f"(finished trials are kept); no results record written")
            return 1
        # the record's wall time: the trials' own (training + evaluation, summed), not this invocation's
        trials_s = sum(float(m.get("wall_time_s") or 0.0) for m in finished)
        if record_run(output_dir, summary, weights, cfg_hash, cfg_identity, seeds, trials_s,
                      invocation_s=time.time() - t_start):
            regenerate_tables()
        return 0


def _prepare_trial_dir(spec: TrialSpec) -> None:
    """trial.json (identity, written once) and config.yaml, before the trial trains."""
    spec.dir.mkdir(parents=True, exist_ok=True)
    trial_json = spec.dir / "trial.json"
    if not trial_json.exists():
        atomic_write_json(trial_json, {
            "trial": spec.index, **spec.identity,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "detectron2": __import__("detectron2").__version__})
    atomic_write_text(spec.dir / "config.yaml", spec.cfg.dump())


def _run_locally(specs: list[TrialSpec]) -> dict[int, str]:
    failed: dict[int, str] = {}
    durations: list[float] = []
    for k, spec in enumerate(specs):
        if durations:
            spec.later_trial_s = sum(durations) / len(durations)
        resuming = (spec.dir / "last_checkpoint").exists()
        logger.info(f"trial {spec.index}/{spec.n_trials} (seed {spec.seed}): "
                    f"{'resuming' if resuming else 'starting'} in {spec.dir}")
        t0 = time.time()
        try:
            launch_trial(spec)
        except UserError:
            raise  # bad input concerns every trial: stop with its one-line message
        except Exception as e:
            logger.exception(f"trial {spec.index}/{spec.n_trials} failed")
            failed[spec.index] = f"{type(e).__name__}: {_one_line(e)}"
            continue
        took = time.time() - t0
        durations.append(took)
        m = read_metrics(spec.dir)
        left = len(specs) - k - 1
        if m is not None and comm.get_rank() == 0 and spec.machine_rank == 0:
            logger.info(f"trial {spec.index}/{spec.n_trials} done in {format_seconds(took)}: "
                        + ", ".join(f"{x} {m[x]:.2f}" for x in METRICS)
                        + (f"; overall ETA {format_seconds(left * sum(durations) / len(durations))} "
                           f"for {left} more trial(s)" if left else ""))
    return failed


def _run_on_slurm(specs: list[TrialSpec], opts: RunOptions, output_dir: Path) -> dict[int, str]:
    """Submit each pending trial as its own Slurm job (trials run in parallel), then wait for all.
    A job still queued or running from an earlier invocation is waited for, not submitted again."""
    import submitit

    folder = output_dir / "slurm"
    jobs = {}
    for spec in specs:
        job_file = spec.dir / "slurm_job.json"
        if job_file.exists():
            try:
                job_id = json.loads(job_file.read_text())["job_id"]
                if opts.slurm_cluster != "slurm":
                    raise RuntimeError(f"cannot re-attach to a {opts.slurm_cluster} job")
                job = submitit.SlurmJob(folder=folder / "%j", job_id=job_id)
                if not job.done():
                    logger.info(f"trial {spec.index}/{spec.n_trials}: waiting for its earlier job {job_id}")
                    jobs[spec.index] = job
                    continue
            except Exception as e:  # unknown to Slurm any more: submit anew
                logger.info(f"trial {spec.index}: earlier job not found ({_one_line(e)}); submitting again")
        spec.dist_url = "auto"
        executor = submitit.AutoExecutor(folder=folder / "%j", cluster=opts.slurm_cluster)
        gpus = spec.num_gpus if spec.cfg.MODEL.DEVICE == "cuda" else 0
        executor.update_parameters(
            name=f"voc_trial{spec.index}", nodes=1, tasks_per_node=1, gpus_per_node=gpus,
            cpus_per_task=opts.cpus_per_task, timeout_min=opts.time_min,
            **({"slurm_partition": opts.partition} if opts.partition else {}))
        try:
            job = executor.submit(SlurmTrialJob(spec))
        except Exception as e:
            raise UserError(f"Slurm submission failed: {_one_line(e)}") from None
        atomic_write_json(job_file, {"job_id": job.job_id})
        logger.info(f"trial {spec.index}/{spec.n_trials} (seed {spec.seed}): Slurm job {job.job_id}")
        jobs[spec.index] = job
    failed: dict[int, str] = {}
    waiting = dict(jobs)
    last_report = 0.0
    while waiting:
        for index, job in list(waiting.items()):
            if not job.done():
                continue
            del waiting[index]
            try:
                job.result()
                m = read_metrics(trial_dir(output_dir, index))
                logger.info(f"trial {index}: Slurm job {job.job_id} finished"
                            + (": " + ", ".join(f"{x} {m[x]:.2f}" for x in METRICS) if m else ""))
            except Exception as e:
                failed[index] = f"Slurm job {job.job_id}: {type(e).__name__}: {_one_line(e)}"
        if waiting and time.time() - last_report > 600:
            last_report = time.time()
            logger.info(f"waiting for {len(waiting)} of {len(jobs)} Slurm job(s): "
                        + ", ".join(f"trial {i} ({j.job_id}: {j.state})" for i, j in waiting.items()))
        if waiting:
            time.sleep(30)
    return failed


def _one_line(e: BaseException | str) -> str:
    text = str(e).strip() or type(e).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " ".join(lines)[:500]
