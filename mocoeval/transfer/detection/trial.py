"""One trial (VOC or COCO): the weights checks, the Detectron2 trainer with progress, train + evaluate + metrics.json."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import functools
import gc
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.engine import DefaultTrainer, HookBase, launch
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter
from detectron2.utils.logger import setup_logger

from mocoeval.convert.detectron2_weights import NEW_IN_DETECTOR
from mocoeval.pretrain.residual_scaling import d2_residual_branch_scales
from mocoeval.runtime.errors import UserError, one_line
from mocoeval.runtime.fileio import atomic_write_json, atomic_write_text, sha256_file
from mocoeval.runtime.logger import quiet_loggers
from mocoeval.runtime.stop_request import StopRequest

# registers Res5ROIHeadsExtraNorm: launch() workers and submitit jobs import only this module
from mocoeval.transfer.detection import modeling as d2_modeling  # noqa: F401
from mocoeval.transfer.detection.benchmark import BENCHMARKS, Benchmark

logger = logging.getLogger("mocoeval.voc")

# Only these may be new (randomly initialised) when a converted backbone is loaded into R50-C4:
# the RPN, the box predictor and the extra res5 norm (the converter's list), and Mask R-CNN's mask head (COCO).
MASK_HEAD = "roi_heads.mask_head."
ALLOWED_MISSING_PREFIXES = (*NEW_IN_DETECTOR, MASK_HEAD)
LOGGER_NAMES = ("detectron2", "fvcore", "mocoeval")


def trial_dir(output_dir: str | os.PathLike, index: int) -> Path:
    return Path(output_dir) / f"trial_{index}"


def format_seconds(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    return str(_dt.timedelta(seconds=int(round(max(0.0, seconds)))))


# --------------------------------------------------------------------------------------------------
# Weights


@dataclasses.dataclass(frozen=True)
class WeightsInfo:
    path: str
    sha256: str
    source: dict  # the converter's mocoeval_source ({} for a .pkl made elsewhere)
    source_sha256: str  # the source checkpoint's sha256, or the .pkl's own when unknown
    variant: dict
    layout: str = "torchvision"  # d2_convert.read_weights: "torchvision" (converted) or "caffe2" (MSRA R-50.pkl)


def check_weights(path: str | os.PathLike, variant_name: str | None = None) -> WeightsInfo:
    """Check that `path` is a converted R50 Detectron2 pickle or a Caffe2 R50 (the MSRA R-50.pkl of the
    supervised row); identify it for the results store."""
    from mocoeval.convert.detectron2_weights import read_weights
    from mocoeval.results.store import SPECIAL_VARIANTS, special_variant

    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    layout, data = read_weights(path)
    source = dict(data.get("mocoeval_source") or {}) if layout == "torchvision" else {}
    del data
    if layout == "caffe2" and not variant_name:
        variant_name = "supervised"  # Caffe2 R50s are Detectron's ImageNet-supervised models (table 1's row)
    sha = sha256_file(path)
    variant = source.get("variant")
    if variant_name:
        if variant and variant_name not in SPECIAL_VARIANTS:
            variant = {**variant, "name": variant_name}
        else:
            variant = special_variant(variant_name).to_record()
    elif not variant:
        variant = special_variant(path.stem).to_record()
        logger.warning(
            f"{path} does not say which pretraining it comes from (not made by convert/to_d2.py); "
            f"recording it as variant {path.stem!r} (set --variant to name it)"
        )
    return WeightsInfo(
        path=str(path.resolve()),
        sha256=sha,
        source=source,
        source_sha256=source.get("sha256") or sha,
        variant=dict(variant),
        layout=layout,
    )


def classify_loaded_keys(
    missing: Iterable[str], unexpected: Iterable[str], layout: str = "torchvision"
) -> tuple[list[str], list[str]]:
    """(bad missing keys, unused checkpoint keys) after loading converted weights into the detector.

    Only the RPN, the box predictor and the extra res5 norm are new layers; BN's num_batches_tracked
    counters are bookkeeping, not weights. Caffe2 weights have no BN running statistics (frozen BN, scale
    and bias only): their BN layers keep PyTorch's initial mean 0 / var 1, as in the official supervised run.
    """
    optional = (
        (".running_mean", ".running_var", "num_batches_tracked") if layout == "caffe2" else ("num_batches_tracked",)
    )
    bad = sorted(k for k in missing if not k.startswith(ALLOWED_MISSING_PREFIXES) and not k.endswith(optional))
    return bad, sorted(unexpected)


def check_loaded_keys(missing, unexpected, weights: str, layout: str = "torchvision") -> list[str]:
    """Raise UserError if backbone/res5 tensors were not loaded; return the unused checkpoint keys."""
    bad, unused = classify_loaded_keys(missing, unexpected, layout)
    if bad:
        raise UserError(
            f"{weights}: {len(bad)} detector tensors are not in the weights (only the RPN, box predictor, "
            f"mask head and roi_heads.res5.norm may be new), e.g. {', '.join(bad[:3])}"
        )
    if unused:
        logger.warning(
            f"{len(unused)} tensors of {weights} are not used by the detector "
            f"(e.g. a projection head): {', '.join(unused[:6])}{' ...' if len(unused) > 6 else ''}"
        )
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
    unused = check_loaded_keys(incompatible.missing_keys, incompatible.unexpected_keys, weights.path, weights.layout)
    new = [k for k in incompatible.missing_keys if k.startswith(ALLOWED_MISSING_PREFIXES)]
    bn_stats = [
        k
        for k in incompatible.missing_keys
        if not k.startswith(ALLOWED_MISSING_PREFIXES) and k.endswith((".running_mean", ".running_var"))
    ]
    groups = {
        "RPN": "proposal_generator.",
        "box predictor": "roi_heads.box_predictor.",
        "res5 norm": "roi_heads.res5.norm.",
        "mask head": MASK_HEAD,
    }
    counts = {name: sum(k.startswith(p) for k in new) for name, p in groups.items()}
    if not counts["mask head"]:
        del counts["mask head"]  # a box-only detector (VOC) has none
    report = (
        f"weights fit the detector: {n_model - len(incompatible.missing_keys)} of {n_model} tensors loaded; "
        f"new, trained from scratch: "
        + ", ".join(f"{name} ({n})" for name, n in counts.items())
        + (
            f"; BN running statistics start at mean 0 / var 1 (not in Caffe2 files): {len(bn_stats)}"
            if bn_stats
            else ""
        )
        + f"; unused in the file: {len(unused)}"
    )
    return unused, report


# --------------------------------------------------------------------------------------------------
# Detectron2 trainer


class TrialProgress(HookBase):
    """Logs "trial i/N" with the trial's ETA and the whole command's ETA every `period` iterations.

    Seconds per iteration are measured from the end of the first iteration (which carries start-up
    costs); the remaining trials are estimated from the finished ones of this invocation when there are
    any (evaluation included), else as MAX_ITER iterations at the current speed.
    """

    def __init__(self, trial: int, n_trials: int, later_trials: int, later_trial_s: float | None, period: int = 100):
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
        logger.info(
            f"trial {self.trial}/{self.n_trials}: iter {done}/{self.trainer.max_iter} "
            f"({s_per_iter:.2f} s/iter), trial ETA {format_seconds(trial_eta)}, overall ETA "
            f"{format_seconds(overall)} ({self.later_trials} more trial(s) after this one; "
            f"evaluation not included)"
        )


class ResumePoints(HookBase):
    """Resume checkpoints besides SOLVER.CHECKPOINT_PERIOD, so that an interrupted trial loses little.

    - Every `minutes` of training (0: never): Detectron2's default period (5,000 iterations) leaves a short
      schedule with no resume point at all and can cost hours of a long one; a killed process (out of
      memory, a lost node) now loses at most `minutes`.
    - With `stop_on_signal`, in a one-process trial: SIGINT (Ctrl-C) or SIGTERM (`kill`, a scheduler) asks
      the trial to stop; it finishes the current iteration, saves it and raises `stop_request.Interrupted`,
      so nothing is lost. A second signal, or one once the last iteration has run (evaluation), stops at once.
      Off under submitit, which handles signals itself, and with several processes, which would have to
      agree on the iteration to stop at.

    Only the newest of its own files is kept; it never touches a periodic checkpoint.
    """

    def __init__(self, minutes: float, period: int, stop_on_signal: bool = False):
        self.interval_s = minutes * 60.0
        self.period = period  # SOLVER.CHECKPOINT_PERIOD: its files share our names at the same iteration
        self.stop_on_signal = stop_on_signal
        self._last_save = None
        self._own_file: Path | None = None
        self._stop = StopRequest("stopping after this iteration with a resume point")
        self._stopped = False

    def before_train(self):
        self._last_save = time.monotonic()
        if self.stop_on_signal and comm.get_world_size() == 1:
            self._stop.install()

    def after_step(self):
        it = self.trainer.iter
        if it + 1 >= self.trainer.max_iter:
            self._stop.finishing()  # the last iteration writes model_final.pth anyway
            if self._stop.requested:
                logger.warning(
                    "that was the last iteration: the trial goes on to its evaluation "
                    "(send the signal again to stop at once)"
                )
            return
        if self._stop.requested:
            self._save_and_stop(it)
        if self.interval_s > 0 and time.monotonic() - self._last_save >= self.interval_s:
            self._last_save = time.monotonic()
            self._save(it)

    def after_train(self):
        # A stop was requested but training ended by an error first (typically the loader's worker processes,
        # which get the terminal's Ctrl-C too, have exited): save the last completed iteration and stop.
        try:
            if (
                self._stop.requested
                and not (self._stopped or self._stop.aborted)
                and self.trainer.iter + 1 < self.trainer.max_iter
                and self.trainer.iter > self.trainer.start_iter
            ):
                self.trainer.iter -= 1  # the last completed one, also in the trainer state that is saved
                self._save_and_stop(self.trainer.iter)
        finally:
            self._stop.restore()

    def _save_and_stop(self, it: int):
        self._stopped = True
        path = self._save(it)
        raise self._stop.interrupted(
            f"trial stopped after iteration {it + 1} of {self.trainer.max_iter}, resume "
            f"point {path}; run the same command again to continue"
        )

    def _save(self, it: int) -> Path:
        name = f"model_{it:07d}"
        path = Path(self.trainer.checkpointer.save_dir) / f"{name}.pth"
        if (it + 1) % self.period == 0:
            return path  # the periodic checkpointer (an earlier hook) saved this iteration
        self.trainer.checkpointer.save(name, iteration=it)  # main process only (save_to_disk)
        if comm.is_main_process():
            if self._own_file is not None and self._own_file != path:  # never a periodic file (see above)
                self._own_file.unlink(missing_ok=True)
            self._own_file = path
        return path


@contextlib.contextmanager
def _ddp_without_device_ids(active: bool):
    """DefaultTrainer.__init__ wraps the model with create_ddp_model(), which passes device_ids=[local rank]:
    DistributedDataParallel refuses that for a CPU model (several CPU processes), which needs device_ids=None."""
    if not active:
        yield
        return
    from detectron2.engine import defaults

    original = defaults.create_ddp_model
    defaults.create_ddp_model = functools.partial(original, device_ids=None)
    try:
        yield
    finally:
        defaults.create_ddp_model = original


class DetectionTrainer(DefaultTrainer):
    """Detectron2's DefaultTrainer evaluating with its benchmark's evaluator (a subclass per benchmark: Detectron2
    calls build_evaluator as a classmethod), with our checkpointer, progress hook and event-log name."""

    benchmark: Benchmark

    def __init__(
        self, cfg, progress: TrialProgress | None = None, checkpoint_minutes: float = 0.0, stop_on_signal: bool = False
    ):
        # read by build_hooks, which DefaultTrainer.__init__ calls
        self._progress, self._checkpoint_minutes, self._stop_on_signal = progress, checkpoint_minutes, stop_on_signal
        with _ddp_without_device_ids(cfg.MODEL.DEVICE == "cpu" and comm.get_world_size() > 1):
            super().__init__(cfg)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name):
        return cls.benchmark.evaluator(cfg, dataset_name)

    def build_hooks(self):
        # DefaultTrainer.__init__ created a plain DetectionCheckpointer just before calling this; swap in
        # ours (same model, directory and trainer state) so that the checkpoint hook uses it too.
        self.checkpointer = TrialCheckpointer(
            self.checkpointer.model, self.cfg.OUTPUT_DIR, **self.checkpointer.checkpointables
        )
        hooks = super().build_hooks()
        if self._progress is not None and comm.is_main_process():
            hooks.insert(-1, self._progress)  # before the writers
        if self._checkpoint_minutes > 0 or self._stop_on_signal:
            # last: when it stops the trial, every other hook (the writers too) has seen the iteration
            hooks.append(
                ResumePoints(self._checkpoint_minutes, self.cfg.SOLVER.CHECKPOINT_PERIOD, self._stop_on_signal)
            )
        return hooks

    def build_writers(self):
        out = self.cfg.OUTPUT_DIR
        return [
            CommonMetricPrinter(self.max_iter),
            JSONWriter(os.path.join(out, "events.json")),
            TensorboardXWriter(out),
        ]


class VOCTrainer(DetectionTrainer):
    """PascalVOCDetectionEvaluator: VOC07 11-point AP at IoU 0.50:0.05:0.95 -> AP, AP50, AP75."""

    benchmark = BENCHMARKS["voc"]


class COCOTrainer(DetectionTrainer):
    """COCOEvaluator: box and mask AP, AP50, AP75 (COCOeval)."""

    benchmark = BENCHMARKS["coco"]


TRAINERS = {t.benchmark.name: t for t in (VOCTrainer, COCOTrainer)}


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
    checkpoint_minutes: float = 30.0  # ResumePoints' interval (0: off)
    benchmark: str = "voc"  # a BENCHMARKS key (a name: the spec crosses spawn/submitit)
    stop_on_signal: bool = True  # ResumePoints: SIGINT/SIGTERM save and stop (off under submitit)

    @property
    def dir(self) -> Path:
        return Path(self.cfg.OUTPUT_DIR)


class ConsoleFilter(logging.Filter):
    """What of Detectron2's and fvcore's logging reaches the console: the training metric lines, evaluation and
    its results, and warnings and errors. The rest (the model dump, dataset tables, loader and checkpoint details)
    is in log.txt only; the checkpoint loaders' missing-keys warning too, since the weights check reports that."""

    SHOWN = ("detectron2.utils.events", "detectron2.evaluation")  # CommonMetricPrinter; evaluators, copypaste
    LOAD_REPORTS = ("fvcore.common.checkpoint", "detectron2.checkpoint")  # reported by preflight_weights

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(self.LOAD_REPORTS):
            return record.levelno >= logging.ERROR
        return record.levelno >= logging.WARNING or record.name.startswith(self.SHOWN)


# Loggers whose records go to log.txt only during a trial: Python warnings (torch's deprecation and numpy's
# divide warnings) and torch.fx's once-per-process note that Detectron2's pooler triggers.
LOG_ONLY = ("py.warnings", "torch.fx._symbolic_trace")


def setup_logging(rank: int = 0) -> None:
    """Detectron2-style console logging for our loggers and Detectron2's (idempotent); Detectron2's and fvcore's
    console output is filtered by ConsoleFilter."""
    for name in LOGGER_NAMES:
        lg = setup_logger(
            output=None,
            distributed_rank=rank,
            name=name,
            abbrev_name={"detectron2": "d2", "mocoeval": "mocoeval"}.get(name),
        )
        if name == "mocoeval":
            continue
        for handler in lg.handlers:  # setup_logger is cached: the same handlers on every call
            if not any(isinstance(f, ConsoleFilter) for f in handler.filters):
                handler.addFilter(ConsoleFilter())


@contextlib.contextmanager
def log_only(handler: logging.Handler):
    """Send LOG_ONLY's records to `handler` (the trial's log.txt) and not to the console while inside."""
    loggers = [logging.getLogger(n) for n in LOG_ONLY]
    saved = [lg.propagate for lg in loggers]
    logging.captureWarnings(True)
    for lg in loggers:
        lg.propagate = False
        lg.addHandler(handler)
    try:
        yield
    finally:
        for lg, propagate in zip(loggers, saved):
            lg.removeHandler(handler)
            lg.propagate = propagate
        logging.captureWarnings(False)


@contextlib.contextmanager
def log_file(path: Path, warnings_too: bool = False):
    """Also log (our loggers and Detectron2's) to `path` while inside the block; with `warnings_too`, LOG_ONLY's
    records go there instead of the console."""
    handler = logging.FileHandler(path)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(
        logging.Formatter("[%(asctime)s] %(name)s %(levelname)s: %(message)s", datefmt="%m/%d %H:%M:%S")
    )
    loggers = [logging.getLogger(n) for n in LOGGER_NAMES]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        with log_only(handler) if warnings_too else contextlib.nullcontext():
            yield
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
        handler.close()


def read_metrics(trial_path: Path, metrics: Sequence[str] = BENCHMARKS["voc"].metrics) -> dict | None:
    """A finished trial's metrics.json, or None if the trial has not finished."""
    path = Path(trial_path) / "metrics.json"
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        if not all(isinstance(data.get(m), (int, float)) for m in metrics):
            raise ValueError(f"lacks one of {tuple(metrics)}")
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is unreadable ({one_line(e)}); move it away to re-run that trial") from None
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
    bench = BENCHMARKS[spec.benchmark]
    bench.register(spec.dataset_root)  # a fresh worker process knows only DETECTRON2_DATASETS' registration
    spec.dir.mkdir(parents=True, exist_ok=True)
    log_name = "log.txt" if rank == 0 else f"log.txt.rank{rank}"
    with log_file(spec.dir / log_name, warnings_too=True):
        start = time.time()
        seed_all_rng(spec.seed + rank)
        progress = TrialProgress(
            spec.index,
            spec.n_trials,
            spec.later_trials,
            spec.later_trial_s,
            period=max(1, min(100, spec.cfg.SOLVER.MAX_ITER // 10)),
        )
        trainer = TRAINERS[spec.benchmark](
            spec.cfg, progress=progress, checkpoint_minutes=spec.checkpoint_minutes, stop_on_signal=spec.stop_on_signal
        )
        resumed = trainer.checkpointer.has_checkpoint()
        trainer.resume_or_load(resume=True)
        if resumed:
            logger.info(f"trial {spec.index}/{spec.n_trials}: resuming from iteration {trainer.start_iter}")
        else:
            inc = trainer.checkpointer.last_incompatible
            check_loaded_keys(
                inc.missing_keys,
                inc.unexpected_keys,
                spec.cfg.MODEL.WEIGHTS,
                spec.identity.get("weights_layout", "torchvision"),
            )
            logger.info(
                "residual branch scale (res2..res5) of the loaded weights: %s",
                _format_scales(d2_residual_branch_scales(trainer.model.state_dict())),
            )
        trainer.train()
        results = getattr(trainer, "_last_eval_results", None)  # set by DefaultTrainer's final EvalHook
        if comm.is_main_process():
            metrics = bench.extract_metrics(results)
            # whether fine-tuning kept the pretraining's residual branch scales (transfer/branch_scales.py)
            scales = d2_residual_branch_scales(trainer.model.state_dict())
            logger.info("residual branch scale (res2..res5) after fine-tuning: %s", _format_scales(scales))
            record = {
                "trial": spec.index,
                **metrics,
                **spec.identity,
                "residual_branch_scale": scales,
                "iterations": spec.cfg.SOLVER.MAX_ITER,
                "resumed_from_iter": trainer.start_iter if resumed else None,
                "wall_time_s": round(time.time() - start, 3),  # of the session that finished the trial
                "world_size": comm.get_world_size(),
                "device": spec.cfg.MODEL.DEVICE,
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


def _format_scales(scales: dict) -> str:
    return " / ".join(f"{v:.3f}" for v in scales.values())


def launch_trial(spec: TrialSpec) -> None:
    """run_trial over spec.num_gpus processes per machine with Detectron2's launch (one process: direct
    call, no process group). With MODEL.DEVICE cpu they are CPU processes with gloo."""
    cpu_group = spec.cfg.MODEL.DEVICE == "cpu" and spec.num_gpus * spec.num_machines > 1
    # launch()'s workers use NCCL and one GPU each whenever CUDA is visible; hidden, they use gloo on CPU
    with _environ(CUDA_VISIBLE_DEVICES="") if cpu_group else contextlib.nullcontext():
        launch(
            run_trial,
            spec.num_gpus,
            num_machines=spec.num_machines,
            machine_rank=spec.machine_rank,
            dist_url=spec.dist_url,
            args=(spec,),
        )


@contextlib.contextmanager
def _environ(**values: str):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class SlurmTrialJob:
    """The callable submitted with submitit for one trial. On a time limit or preemption submitit calls
    `checkpoint`, which requeues the same job: it then resumes from the trial's last checkpoint."""

    def __init__(self, spec: TrialSpec):
        self.spec = spec

    def __call__(self):
        launch_trial(dataclasses.replace(self.spec, stop_on_signal=False))  # submitit owns the signals
        return read_metrics(self.spec.dir, BENCHMARKS[self.spec.benchmark].metrics)

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(SlurmTrialJob(self.spec))
