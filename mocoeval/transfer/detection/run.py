"""A detection transfer run (VOC or COCO): plan the trials (resume, refuse mismatches), run them here or on Slurm,
summarise. What differs between the benchmarks is in `benchmark`; everything here is shared."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as _dt
import io
import json
import logging
import math
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from detectron2.utils import comm

from mocoeval.convert.detectron2_weights import check_input_settings, input_settings, recorded_input_norm
from mocoeval.results.identity import config_hash, config_identity
from mocoeval.runtime.errors import UserError, one_line
from mocoeval.runtime.fileio import atomic_write_json, atomic_write_text, check_output_dir, sha256_json
from mocoeval.runtime.stop_request import Interrupted
from mocoeval.transfer.detection import modeling as d2_modeling
from mocoeval.transfer.detection.benchmark import BENCHMARKS, Benchmark
from mocoeval.transfer.detection.config import build_config, config_differences
from mocoeval.transfer.detection.trial import (
    SlurmTrialJob,
    TrialSpec,
    WeightsInfo,
    check_weights,
    format_seconds,
    launch_trial,
    log_file,
    preflight_weights,
    read_metrics,
    setup_logging,
    trial_dir,
)

logger = logging.getLogger("mocoeval.voc")

STD_DDOF = 0  # population std, like the official MoCo README's "± std" over 5 trials
DEFAULT_TRIALS = 5
TRIAL_DIR_RE = re.compile(r"^trial_(\d+)$")
SLURM_POLL_S = 30  # between checks of the submitted jobs: each one asks Slurm's accounting


def default_seeds(n: int) -> list[int]:
    """The documented default: trial i (1-based) uses seed i - 1, so `--trials 5` after `--trials 3`
    keeps the first three trials' seeds."""
    return list(range(n))


@dataclasses.dataclass
class RunOptions:
    weights: str
    trials: int | None = None
    seeds: list[int] | None = None
    config_file: str | None = None  # None: the benchmark's config for the schedule and the weights' layout
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
    amp: bool = False  # SOLVER.AMP.ENABLED: Detectron2's AMPTrainer
    checkpoint_minutes: float = 30.0
    # submitit cluster behind --launcher slurm; "local" runs the same jobs as local processes (tests)
    slurm_cluster: str = "slurm"
    benchmark: str = "voc"  # a BENCHMARKS key
    schedule: str | None = None  # the benchmark's schedules (COCO: 1x, 2x); None: its default


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
        return (
            f"{tdir} was run with seed {recorded.get('seed')}, not {identity['seed']} (pass the same --seeds as before)"
        )
    if recorded.get("weights_sha256") != identity["weights_sha256"]:
        return (
            f"{tdir} was trained from other weights ({recorded.get('weights')}, sha256 "
            f"{str(recorded.get('weights_sha256'))[:12]}) than {identity['weights']}"
        )
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


def plan_trials(
    output_dir: Path,
    seeds: Sequence[int],
    identity_base: dict,
    cfg_identity: dict,
    metrics: Sequence[str] = BENCHMARKS["voc"].metrics,
) -> list[TrialPlan]:
    """Which of trials 1..N are finished, to be resumed, or new; refuse to mix different setups."""
    plans = []
    for i, seed in enumerate(seeds, start=1):
        tdir = trial_dir(output_dir, i)
        identity = {**identity_base, "seed": seed}
        finished = read_metrics(tdir, metrics)
        hint = "; use another --output-dir"
        if finished is not None:
            why = _identity_mismatch(tdir, finished, identity, cfg_identity, "finished")
            if why:
                raise UserError(why + "; refusing to mix results" + hint)
            plans.append(TrialPlan(i, seed, "finished", finished))
            continue
        trial_json = tdir / "trial.json"
        has_ckpt = (tdir / "last_checkpoint").exists()
        if trial_json.exists():
            try:
                recorded = json.loads(trial_json.read_text())
            except (OSError, ValueError) as e:
                raise UserError(f"{trial_json} is unreadable ({one_line(e)}){hint}") from None
            why = _identity_mismatch(tdir, recorded, identity, cfg_identity, "unfinished")
            if why:
                raise UserError(f"{why}; delete {tdir} to restart that trial, or use another --output-dir")
            plans.append(TrialPlan(i, seed, "resume" if has_ckpt else "new"))
        elif has_ckpt:
            raise UserError(f"{tdir} holds checkpoints of an unknown run (no trial.json){hint}")
        else:
            plans.append(TrialPlan(i, seed, "new"))
    return plans


def summarize(
    output_dir: Path, trial_metrics: list[dict], requested: int, failed: list[int], bench: Benchmark = BENCHMARKS["voc"]
) -> tuple[dict, str]:
    """Write summary.json and summary.csv; return the summary and a printable table."""
    import pandas as pd

    names = bench.metrics

    columns = ["trial", "seed", *names, "wall_time_s"]
    rows = pd.DataFrame([{c: m.get(c) for c in columns} for m in trial_metrics], columns=columns)
    stats = {}
    for m in names:
        values = rows[m].astype(float)
        stats[m] = {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=STD_DDOF)) if len(values) else math.nan,
            "min": float(values.min()),
            "max": float(values.max()),
            "n": int(values.count()),
            "values": [float(v) for v in values],
        }
    summary = {
        "metrics": stats,
        "std_ddof": STD_DDOF,
        "n_trials": len(trial_metrics),
        "requested_trials": requested,
        "failed_trials": failed,
        "trials": rows.to_dict(orient="records"),
        "dataset": bench.dataset,
    }
    atomic_write_json(output_dir / "summary.json", summary)

    def cell(v, digits):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        return str(int(v)) if digits == 0 else f"{float(v):.{digits}f}"

    def table_rows(digits):
        out = [
            {
                "row": f"trial_{t['trial']}",
                "trial": cell(t["trial"], 0),
                "seed": cell(t["seed"], 0),
                **{m: cell(t[m], digits) for m in names},
                "wall_time_s": cell(t["wall_time_s"], 1),
            }
            for t in summary["trials"]
        ]
        for label, key in [
            ("mean", "mean"),
            (f"std (ddof={STD_DDOF})", "std"),
            ("min", "min"),
            ("max", "max"),
            ("n", "n"),
        ]:
            out.append(
                {
                    "row": label,
                    "trial": "",
                    "seed": "",
                    "wall_time_s": "",
                    **{m: cell(stats[m][key], 0 if key == "n" else digits) for m in names},
                }
            )
        return pd.DataFrame(out, columns=["row", "trial", "seed", *names, "wall_time_s"])

    buf = io.StringIO()
    table_rows(4).to_csv(buf, index=False, quoting=csv.QUOTE_MINIMAL)
    atomic_write_text(output_dir / "summary.csv", buf.getvalue())
    text = table_rows(2)[["row", "seed", *names]].to_string(index=False)
    return summary, text


def record_run(
    output_dir: Path,
    summary: dict,
    weights: WeightsInfo,
    cfg_hash: str,
    cfg_identity: dict,
    seeds: list[int],
    wall_time_s: float,
    invocation_s: float | None = None,
    batch_rule: dict | None = None,
    bench: Benchmark = BENCHMARKS["voc"],
) -> Path | None:
    """One results-store record per distinct result of this run directory (re-runs that change nothing
    write none); a record for more trials names the one it supersedes in extra.supersedes."""
    from mocoeval.results import store as results_store

    marker = output_dir / "run_record.json"
    content_hash = sha256_json(
        {"metrics": summary["metrics"], "trials": summary["trials"], "weights": weights.sha256, "config_hash": cfg_hash}
    )
    previous = None
    if marker.exists():
        try:
            previous = json.loads(marker.read_text())
        except (OSError, ValueError):
            previous = None
    if previous and previous.get("content_hash") == content_hash and Path(previous.get("record", "")).exists():
        logger.info(f"results already recorded in {previous['record']}")
        return None
    metrics = {m: summary["metrics"][m]["mean"] for m in bench.metrics}
    metrics.update({f"{m}_std": summary["metrics"][m]["std"] for m in bench.metrics})
    metrics.update(
        {
            "n_trials": summary["n_trials"],
            "std_ddof": STD_DDOF,
            "per_trial": {m: summary["metrics"][m]["values"] for m in bench.metrics},
        }
    )
    path = results_store.write_run_record(
        bench.name,
        variant=weights.variant,
        metrics=metrics,
        source_sha256=weights.source_sha256,
        weights=weights.path,
        weights_sha256=weights.sha256,
        seeds=seeds,
        config=cfg_identity,
        config_hash=cfg_hash,
        trials=summary["trials"],
        wall_time_s=round(wall_time_s, 3),
        extra={
            "run_dir": str(output_dir.resolve()),
            "wall_time": "summed over the trials",
            "invocation_s": round(invocation_s, 3) if invocation_s is not None else None,
            "supersedes": previous.get("record") if previous else None,
            "weights_source": weights.source or None,
            # what the batch rule changed (the resolved values are in config): a departure from batch 16
            **(batch_rule or {}),
        },
    )
    atomic_write_json(marker, {"record": str(path), "content_hash": content_hash})
    logger.info(f"results recorded in {path}")
    return path


def _resolve_device(device: str, launcher: str) -> str:
    if device == "auto":
        device = "cuda" if (torch.cuda.is_available() or launcher == "slurm") else "cpu"
    if device == "cuda" and launcher == "local" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is available here")
    return device  # cpu with --num-gpus N: N CPU processes (gloo), to exercise the distributed path


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
    if not (opts.checkpoint_minutes >= 0 and math.isfinite(opts.checkpoint_minutes)):
        raise UserError(f"--checkpoint-minutes must be >= 0 (0: off), got {opts.checkpoint_minutes}")
    gpus_per_trial = (opts.gpus_per_job or opts.num_gpus) if opts.launcher == "slurm" else opts.num_gpus
    device = _resolve_device(opts.device, opts.launcher)

    bench = BENCHMARKS[opts.benchmark]
    if opts.config_file and opts.schedule:
        raise UserError("--schedule picks the default config; with --config-file set the schedule in that file")
    weights = check_weights(opts.weights, opts.variant)
    config_file = opts.config_file or str(bench.config_for(weights.layout, opts.schedule))
    input_norm = recorded_input_norm(weights.path) if weights.layout == "torchvision" else None
    cfg, notes = build_config(
        config_file,
        opts.opts,
        norm=opts.norm,
        device=device,
        weights=weights.path,
        input_settings=input_settings(input_norm) if input_norm and not opts.config_file else None,
        amp=opts.amp,
    )
    check_input_settings(cfg, weights.layout, config_file, input_norm)
    world = gpus_per_trial * opts.num_machines
    if cfg.SOLVER.IMS_PER_BATCH % world:
        raise UserError(f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} is not divisible by {world} processes")
    if cfg.MODEL.RESNETS.NORM == "BN" and world > 1:
        notes.messages.append(
            f"NORM BN with {world} processes normalises per GPU "
            f"({cfg.SOLVER.IMS_PER_BATCH // world} images); the protocol synchronises BN"
        )
    dataset_root = opts.dataset_root or os.environ.get("DETECTRON2_DATASETS", "datasets")
    bench.check_dataset(cfg, dataset_root)
    output_dir = check_output_dir(opts.output_dir or Path("output") / f"{bench.name}_{Path(opts.weights).stem}")
    cfg_hash, cfg_identity = config_hash(cfg), config_identity(cfg)
    identity_base = {"config_hash": cfg_hash, "weights": weights.path, "weights_sha256": weights.sha256}
    plans = plan_trials(output_dir, seeds, identity_base, cfg_identity, bench.metrics)
    pending = [p for p in plans if p.status != "finished"]
    unused, load_report = preflight_weights(cfg, weights) if pending else ([], None)

    is_main = opts.machine_rank == 0
    writes = is_main and not opts.dry_run  # a dry run creates nothing, not even the output folder or its log
    if writes:
        output_dir.mkdir(parents=True, exist_ok=True)
    with log_file(output_dir / "log.txt") if writes else contextlib.nullcontext():
        for msg in notes.messages:
            logger.info(msg)
        logger.info(
            f"{n} trial(s) in {output_dir}: weights {weights.path} (sha256 {weights.sha256[:12]}), "
            f"variant {weights.variant.get('name')}, config {config_file} (hash {cfg_hash[:12]}), "
            f"seeds {seeds}, device {device}, data {dataset_root}"
        )
        if load_report:
            logger.info(load_report)
        for p in plans:
            if p.status == "finished":
                logger.info(
                    f"trial {p.index}/{n} (seed {p.seed}): finished earlier, skipped — "
                    + ", ".join(f"{m} {p.metrics[m]:.2f}" for m in bench.metrics)
                )
        extra_dirs = (
            sorted(int(m[1]) for d in output_dir.glob("trial_*") if (m := TRIAL_DIR_RE.match(d.name)) and int(m[1]) > n)
            if output_dir.is_dir()
            else []
        )
        if extra_dirs:
            logger.info(f"trials {extra_dirs} exist in {output_dir} but are outside --trials {n}: not summarised")
        if opts.dry_run:
            for p in pending:
                action = "resume" if p.status == "resume" else "start"
                logger.info(f"trial {p.index}/{n} (seed {p.seed}): would {action}")
            logger.info("dry run: nothing trained")
            return 0

        specs = []
        for k, p in enumerate(pending):
            tcfg = cfg.clone()
            tcfg.OUTPUT_DIR = str(trial_dir(output_dir, p.index).resolve())
            tcfg.SEED = p.seed
            tcfg.freeze()
            specs.append(
                TrialSpec(
                    index=p.index,
                    n_trials=n,
                    seed=p.seed,
                    cfg=tcfg,
                    identity={
                        **identity_base,
                        "seed": p.seed,
                        "dataset_root": str(Path(dataset_root).resolve()),
                        "unused_weight_keys": unused,
                        "weights_layout": weights.layout,
                    },
                    dataset_root=str(Path(dataset_root).resolve()),
                    num_gpus=gpus_per_trial,
                    num_machines=opts.num_machines,
                    machine_rank=opts.machine_rank,
                    dist_url=opts.dist_url,
                    later_trials=(len(pending) - k - 1) if opts.launcher == "local" else 0,
                    checkpoint_minutes=opts.checkpoint_minutes,
                    benchmark=bench.name,
                )
            )
            if is_main:
                _prepare_trial_dir(specs[-1])

        failed: dict[int, str] = {}
        if opts.launcher == "slurm":
            failed = _run_on_slurm(specs, opts, output_dir, bench)
        else:
            failed = _run_locally(specs, bench)

        if not is_main:
            return 1 if failed else 0
        finished = []
        for p in plans:
            m = read_metrics(trial_dir(output_dir, p.index), bench.metrics)
            if m is not None:
                finished.append(m)
            elif p.index not in failed:
                failed[p.index] = "no metrics.json after the run"
        summary = None
        if finished:
            summary, table = summarize(output_dir, finished, n, sorted(failed), bench)
            logger.info(f"{bench.title} over {len(finished)}/{n} trial(s) (std: population, ddof={STD_DDOF}):\n{table}")
            logger.info(f"summary: {output_dir / 'summary.json'}, {output_dir / 'summary.csv'}")
        if failed or summary is None:
            for i, why in sorted(failed.items()):
                logger.error(f"trial {i}/{n} FAILED: {why} (log: {trial_dir(output_dir, i) / 'log.txt'})")
            logger.error(
                f"{len(failed)} of {n} trial(s) failed; re-run the same command to retry them "
                f"(finished trials are kept); no results record written"
            )
            return 1
        # the record's wall time: the trials' own (training + evaluation, summed), not this invocation's
        trials_s = sum(float(m.get("wall_time_s") or 0.0) for m in finished)
        batch_rule = {
            "lr_scaled": list(notes.lr_scaled) if notes.lr_scaled else None,
            "schedule_scaled": notes.schedule_scaled,
        }
        record_run(
            output_dir,
            summary,
            weights,
            cfg_hash,
            cfg_identity,
            seeds,
            trials_s,
            invocation_s=time.time() - t_start,
            batch_rule=batch_rule,
            bench=bench,
        )
        return 0


def _prepare_trial_dir(spec: TrialSpec) -> None:
    """trial.json (identity, written once) and config.yaml, before the trial trains."""
    spec.dir.mkdir(parents=True, exist_ok=True)
    trial_json = spec.dir / "trial.json"
    if not trial_json.exists():
        atomic_write_json(
            trial_json,
            {
                "trial": spec.index,
                **spec.identity,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "torch": torch.__version__,
                "detectron2": __import__("detectron2").__version__,
            },
        )
    atomic_write_text(spec.dir / "config.yaml", spec.cfg.dump())


def _run_locally(specs: list[TrialSpec], bench: Benchmark) -> dict[int, str]:
    failed: dict[int, str] = {}
    durations: list[float] = []
    for k, spec in enumerate(specs):
        if durations:
            spec.later_trial_s = sum(durations) / len(durations)
        resuming = (spec.dir / "last_checkpoint").exists()
        logger.info(
            f"trial {spec.index}/{spec.n_trials} (seed {spec.seed}): "
            f"{'resuming' if resuming else 'starting'} in {spec.dir}"
        )
        t0 = time.time()
        try:
            launch_trial(spec)
        except UserError:
            raise  # bad input concerns every trial: stop with its one-line message
        except Interrupted as e:
            logger.warning(f"trial {spec.index}/{spec.n_trials}: {e}")
            raise
        except Exception as e:
            logger.exception(f"trial {spec.index}/{spec.n_trials} failed")
            failed[spec.index] = f"{type(e).__name__}: {one_line(e)}"
            continue
        took = time.time() - t0
        durations.append(took)
        m = read_metrics(spec.dir, bench.metrics)
        left = len(specs) - k - 1
        if m is not None and comm.get_rank() == 0 and spec.machine_rank == 0:
            logger.info(
                f"trial {spec.index}/{spec.n_trials} done in {format_seconds(took)}: "
                + ", ".join(f"{x} {m[x]:.2f}" for x in bench.metrics)
                + (
                    f"; overall ETA {format_seconds(left * sum(durations) / len(durations))} for {left} more trial(s)"
                    if left
                    else ""
                )
            )
    return failed


def _run_on_slurm(specs: list[TrialSpec], opts: RunOptions, output_dir: Path, bench: Benchmark) -> dict[int, str]:
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
                logger.info(f"trial {spec.index}: earlier job not found ({one_line(e)}); submitting again")
        spec.dist_url = "auto"
        executor = submitit.AutoExecutor(folder=folder / "%j", cluster=opts.slurm_cluster)
        gpus = spec.num_gpus if spec.cfg.MODEL.DEVICE == "cuda" else 0
        executor.update_parameters(
            name=f"{bench.name}_trial{spec.index}",
            nodes=1,
            tasks_per_node=1,
            gpus_per_node=gpus,
            cpus_per_task=opts.cpus_per_task,
            timeout_min=opts.time_min,
            **({"slurm_partition": opts.partition} if opts.partition else {}),
        )
        try:
            job = executor.submit(SlurmTrialJob(spec))
        except Exception as e:
            raise UserError(f"Slurm submission failed: {one_line(e)}") from None
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
                m = read_metrics(trial_dir(output_dir, index), bench.metrics)
                logger.info(
                    f"trial {index}: Slurm job {job.job_id} finished"
                    + (": " + ", ".join(f"{x} {m[x]:.2f}" for x in bench.metrics) if m else "")
                )
            except Exception as e:
                failed[index] = f"Slurm job {job.job_id}: {type(e).__name__}: {one_line(e)}"
        if waiting and time.time() - last_report > 600:
            last_report = time.time()
            logger.info(
                f"waiting for {len(waiting)} of {len(jobs)} Slurm job(s): "
                + ", ".join(f"trial {i} ({j.job_id}: {j.state})" for i, j in waiting.items())
            )
        if waiting:
            time.sleep(SLURM_POLL_S)
    return failed
