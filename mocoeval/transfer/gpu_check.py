#!/usr/bin/env python
"""Every speed figure of the pipeline on this machine's GPU, in one command: a JSON and a Markdown report.

    python transfer/gpu_check.py                 # one GPU, the protocol's sizes, about 8 minutes (make gpu-check)
    python transfer/gpu_check.py --smoke         # tiny sizes, any device (a CPU: a few minutes; the tests run it)

Parts (configs/gpu_check.yaml says the sizes and the time each part may take):
  pretrain-step, pretrain-loop, pretrain-compile   MoCo v2 pairs/s at 224 px, batch 256, K 65536, ours beside lightly's
                   (pretrain/bench.py's benchmark): the step on a batch in memory, and the loop with the loader; fp32,
                   bf16 + channels_last, and our torch.compile
  voc-fp32, voc-amp   VOC fine-tuning s/iter with the full protocol config (batch 16, 480-800 px), one short trial of
                   transfer/run_voc.py, fp32 and --amp (Detectron2's AMP trainer)
  linear           linear classification images/s at 224 px, batch 256 (transfer/run_linear.py's training step, and
                   the whole command on ImageNet-mini)
  pretrain-workers the pairs/s one loader worker delivers (bench.py --modes workers; last, if time is left)
Each row has the peak GPU memory of that row (torch.cuda.max_memory_allocated; on a CPU the part's peak RSS; a
pretraining row's from its implementation's own process).

Every part runs in a process of its own, so that one part's crash, hang or memory leaves the others' figures (and
the report says what failed, in one line). Writes OUT/report.json, OUT/report.md, OUT/logs/PART.log (one per part)
and OUT/data (the mini datasets, made once). Exit status 1 if a part failed or did not finish.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from mocoeval import CONFIG_DIR, REPO_ROOT
from mocoeval.runtime.errors import UserError, cli_main, last_line, one_line
from mocoeval.runtime.fileio import atomic_write_json, atomic_write_text

PRESETS_FILE = CONFIG_DIR / "gpu_check.yaml"
DEFAULT_OUT = Path("output") / "gpu-check"
MIN_PART_S = 20  # a part left less than this of the budget is not started
NEEDS_CUDA = "Detectron2's AMP trainer needs CUDA"
UNITS = {"pretrain": "pairs/s", "voc": "s/iter", "linear": "images/s"}
WHAT = {
    ("pretrain", "step"): "MoCo v2 pretraining step (batch in memory)",
    ("pretrain", "loop"): "MoCo v2 pretraining loop (loader + step)",
    ("pretrain", "workers"): "MoCo v2 pretraining, one loader worker's share (pairs/s per worker process)",
    ("voc", None): "VOC fine-tuning, R50-C4 protocol config",
    ("linear", "step"): "linear classification step (batch in memory)",
    ("linear", "loop"): "linear classification, run_linear.py on ImageNet-mini",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpu_check.py",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--smoke", action="store_true", help="tiny sizes (the smoke preset): checks the code paths anywhere")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto", help="default: cuda if available")
    p.add_argument("--out", default=str(DEFAULT_OUT), metavar="DIR", help=f"report folder (default {DEFAULT_OUT})")
    p.add_argument("--parts", nargs="+", metavar="NAME", help="only these parts (default: all of the preset)")
    return p


def load_preset(name: str) -> dict:
    import yaml

    presets = yaml.safe_load(PRESETS_FILE.read_text())
    return presets[name]


@cli_main
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    preset_name = "smoke" if args.smoke else "full"
    preset = load_preset(preset_name)
    names = [part["name"] for part in preset["parts"]]
    unknown = sorted(set(args.parts or ()) - set(names))
    if unknown:
        raise UserError(f"--parts {' '.join(unknown)}: the {preset_name} preset has {', '.join(names)}")

    import torch  # after parsing: --help stays fast

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is available here")
    if device == "cpu" and not args.smoke:
        raise UserError("no GPU here: the full preset measures at the protocol's sizes; --smoke checks the code paths")

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    (out / "logs").mkdir(parents=True, exist_ok=True)
    report = {
        "preset": preset_name,
        "presets_file": str(PRESETS_FILE.relative_to(REPO_ROOT)),
        "device": device,
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": _git_commit(),
        "budget_s": preset["budget_s"],
        "env": {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version()},
        "parts": [],
    }
    start = time.monotonic()
    deadline = start + preset["budget_s"]

    def save():
        report["wall_s"] = round(time.monotonic() - start, 1)
        atomic_write_json(out / "report.json", report)
        atomic_write_text(out / "report.md", render_markdown(report))

    save()
    signal.signal(signal.SIGTERM, _interrupt)  # as Ctrl-C: the running part's process group is killed, not left
    data_root = out / "data"
    _log(f"{preset_name} preset on {device}: mini data in {data_root}")
    t0 = time.monotonic()
    try:
        from mocoeval.data.make_mini_data import generate

        generate(data_root, seed=0, workers=min(os.cpu_count() or 1, 16), **preset["data"])
        report["data"] = {"root": str(data_root), "s": round(time.monotonic() - t0, 1), "error": None}
    except Exception as e:  # the step rows need no data: they still run
        report["data"] = {"root": str(data_root), "s": round(time.monotonic() - t0, 1), "error": one_line(e)}
        _log(f"mini data FAILED: {one_line(e)}")

    for part in preset["parts"]:
        if args.parts and part["name"] not in args.parts:
            continue
        left = deadline - time.monotonic()
        if left < MIN_PART_S:
            entry = {**_part_header(part), "status": "skipped", "error": f"out of budget ({preset['budget_s']} s)"}
        elif device != "cuda" and all(row.get("amp") for row in part["rows"]):
            entry = {**_part_header(part), "status": "skipped", "error": NEEDS_CUDA}
            entry["rows"] = [{**_row_labels(part["kind"], row), "skipped": NEEDS_CUDA} for row in part["rows"]]
        else:
            entry = run_part_process(part, preset, device, out, data_root, min(part["timeout_s"], left))
        report["parts"].append(entry)
        if entry.get("env"):
            report["env"] = {**report["env"], **entry["env"]}
        save()
        _log(_part_summary(entry))
    save()
    _log(f"report: {out / 'report.md'}, {out / 'report.json'} ({report['wall_s']:.0f} s)")
    # skipped because the device cannot run it (AMP on a CPU) is what the preset expects; out of budget is not
    failed = [p["name"] for p in report["parts"] if p["status"] != "ok" and p.get("error") != NEEDS_CUDA]
    if failed:
        _log(f"{len(failed)} part(s) without all their figures: {', '.join(failed)}")
    return 1 if failed else 0


def _log(msg: str) -> None:
    print(f"[gpu-check] {msg}", flush=True)


def _git_commit() -> str | None:
    from mocoeval.results.store import git_commit

    return git_commit()


def _part_header(part: dict) -> dict:
    return {"name": part["name"], "kind": part["kind"], "rows": []}


# ------------------------------------------------------------------------------------------ the part's process
def run_part_process(part: dict, preset: dict, device: str, out: Path, data_root: Path, timeout_s: float) -> dict:
    """Run one part in a new process (and process group, so that its loader workers die with it); its result file
    is rewritten after every row, so a part killed at its timeout keeps the rows it finished."""
    work = out / "work" / part["name"]
    shutil.rmtree(work, ignore_errors=True)  # a finished VOC trial or linear run would be skipped, not re-timed
    work.mkdir(parents=True)
    task = {
        "part": part,
        "preset": preset,
        "device": device,
        "data_root": str(data_root.resolve()),
        "work": str(work.resolve()),
        "result": str((work / "result.json").resolve()),
    }
    (work / "task.json").write_text(json.dumps(task, indent=2))
    log_path = out / "logs" / f"{part['name']}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    # the VOC and linear runs' results records stay in the check's folder, not the user's results store
    env["MOCOEVAL_RESULTS_DIR"] = str((work / "store" / "runs").resolve())
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    code = "import sys; from mocoeval.transfer.gpu_check import run_part; run_part(sys.argv[1])"
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(work / "task.json")],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            rc, timed_out = proc.wait(timeout=timeout_s), False
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            rc, timed_out = proc.wait(), True
        except BaseException:  # Ctrl-C, SIGTERM: the part's processes, in a session of their own, go too
            _kill_group(proc.pid)
            raise
        _kill_group(proc.pid)  # loader or compiler workers left behind would hold the GPU
    entry = {**_part_header(part), "wall_s": round(time.monotonic() - t0, 1), "log": str(log_path)}
    for big in [*work.rglob("*.pth"), *work.rglob("*.pkl")]:  # the trained detector and the weights: ~300 MB a part
        big.unlink()
    result_path = work / "result.json"
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    entry["env"] = result.get("env")
    entry["rows"] = result.get("rows", [])
    if timed_out:
        entry["status"], entry["error"] = "timeout", f"killed after {timeout_s:.0f} s"
    elif result.get("error") or rc:
        entry["status"] = "failed"
        entry["error"] = result.get("error") or f"exit status {rc}: {_last_log_line(log_path)}"
    elif any(r.get("error") for r in entry["rows"]):
        entry["status"], entry["error"] = "failed", next(r["error"] for r in entry["rows"] if r.get("error"))
    elif entry["rows"] and all(r.get("skipped") for r in entry["rows"]):
        entry["status"], entry["error"] = "skipped", entry["rows"][0]["skipped"]
    else:
        entry["status"], entry["error"] = "ok", None
    return entry


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _last_log_line(path: Path) -> str:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return one_line(lines[-1]) if lines else "no output"


def run_part(task_file: str) -> None:
    """The part's process: run its rows one after another, recording each (or its one-line error) as it goes."""
    task = json.loads(Path(task_file).read_text())
    result: dict = {"env": None, "rows": [], "error": None}
    result_path = Path(task["result"])

    def save():
        atomic_write_json(result_path, result)

    try:
        import torch

        device = torch.device(task["device"])
        result["env"] = environment(device)
        save()
        runner = PART_KINDS[task["part"]["kind"]]
        for spec in task["part"]["rows"]:
            row = {"kind": task["part"]["kind"], **_row_labels(task["part"]["kind"], spec)}
            if spec.get("amp") and device.type != "cuda":
                result["rows"].append({**row, "skipped": NEEDS_CUDA})
                save()
                continue
            try:
                for measured in runner(task, spec, device):
                    result["rows"].append({**row, **measured})
                    save()
                    print(f"[gpu-check] row: {json.dumps(result['rows'][-1])}", flush=True)
            except BaseException as e:  # SystemExit from a command's one-line error too; the next row still runs
                result["rows"].append({**row, "error": _error_text(e)})
                save()
                if isinstance(e, KeyboardInterrupt):
                    raise
            _free(device)
    except BaseException as e:
        result["error"] = _error_text(e)
        save()
        raise SystemExit(1) from None
    save()


def _error_text(e: BaseException) -> str:
    if isinstance(e, SystemExit):  # argparse printed why to the part's log
        return f"exit {e.code} (the reason is in the part's log)"
    return f"{type(e).__name__}: {one_line(last_line(e))}"


def _free(device) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _row_labels(kind: str, spec: dict) -> dict:
    mode = spec.get("mode") if kind != "voc" else None
    setting = spec.get("precision", "fp32")
    if spec.get("channels_last"):
        setting += " + channels_last"
    if spec.get("compile"):
        setting += " + compile"
    if kind == "voc":
        setting = "AMP (fp16 autocast)" if spec.get("amp") else "fp32"
    return {"what": WHAT[(kind, mode)], "mode": mode, "setting": setting, "unit": UNITS[kind]}


def environment(device) -> dict:
    """Device and versions, as the report's header shows them (no package is imported to read its version)."""
    from importlib import metadata

    import torch
    import torchvision

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    env = {
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        # "fp32" rows run with PyTorch's defaults: TF32 convolutions on Ampere and later, fp32 matrix products
        "tf32_conv": torch.backends.cudnn.allow_tf32,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "detectron2": version("sal-detectron2") or version("detectron2"),
        "lightly": version("lightly"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        env["gpu_memory_mib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**20)
    return env


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


# ------------------------------------------------------------------------------------------ peak memory
def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device) -> dict:
    from mocoeval.pretrain.throughput import peak_memory_mib

    if device.type == "cuda":
        return {"peak_memory_mib": round(peak_memory_mib(device), 1), "peak_memory": "max_memory_allocated, this row"}
    # ru_maxrss cannot be reset: on a CPU the figure covers every row of the part so far
    return {"peak_memory_mib": round(peak_memory_mib(device), 1), "peak_memory": "peak RSS of the part's process"}


# ------------------------------------------------------------------------------------------ the parts
def pretrain_rows(task: dict, spec: dict, device):
    """Ours and lightly's MoCo v2 (when lightly is installed), with pretrain/bench.py's benchmark."""
    import importlib.util

    from mocoeval.pretrain.throughput import BenchConfig, benchmark

    sizes = task["preset"]["pretrain"]
    impls = ("ours", "lightly") if importlib.util.find_spec("lightly") else ("ours",)
    cfg = BenchConfig(
        arch=sizes["arch"],
        image_size=sizes["image_size"],
        batch_size=sizes["batch_size"],
        moco_k=sizes["moco_k"],
        device=str(device),
        precision=spec.get("precision", "fp32"),
        channels_last=bool(spec.get("channels_last")),
        compile=bool(spec.get("compile")),
        mode=spec["mode"],
        workers=task["preset"]["workers"],
        data=str(Path(task["data_root"]) / "imagenet-mini"),
    )
    results = benchmark(cfg, impls, steps=sizes["steps"], warmup=sizes["warmup"], rounds=sizes["rounds"])
    for r in results:
        row = {
            "impl": r["impl"],
            "value": round(r["pairs_per_s"], 2),
            "size": f"{r['arch']} {r['image_size']} px, batch {r['batch_size']}, K {r['moco_k']}",
            "detail": {
                k: r[k]
                for k in (
                    "steps_timed",
                    "workers",
                    "threads",
                    "bn_splits",
                    "compile",
                    "colour_on_device",
                    "idle_workers",
                )
                if k in r
            },
        }
        if "ratio" in r:
            row["ours_over_lightly"] = round(r["ratio"], 3)
        # each implementation runs in a process of its own: the peak is its own (incl. warm-up and compiling)
        what = "max_memory_allocated" if device.type == "cuda" else "peak RSS"
        row.update(peak_memory_mib=r["peak_memory_mib"], peak_memory=f"{what} of its own process")
        notes = []
        if cfg.mode == "workers":  # what the worker does decides its figure
            notes.append("colour ops on the device" if r["colour_on_device"] else "colour ops in the worker")
        if len(impls) == 1:
            notes.append("lightly is not installed: ours alone")
        if notes:
            row["note"] = "; ".join(notes)
        yield row


def voc_rows(task: dict, spec: dict, device):
    """One short trial of run_voc.py on converted random-init weights (s/iter does not depend on the weights)."""
    import yaml

    from mocoeval.convert import to_d2
    from mocoeval.transfer.detection import run_voc
    from mocoeval.transfer.detection.run import RunOptions, run

    work, sizes = Path(task["work"]), task["preset"]["voc"]
    weights = work / "random_init_seed0.pkl"
    if not weights.exists():  # the converter's random-init baseline; unwrapped, its UserError is the row's error
        to_d2.main.__wrapped__(["random-init:0", str(weights)])
    out = work / ("voc_amp" if spec.get("amp") else "voc_fp32")
    iterations = sizes["iterations"]
    argv = [
        "--weights",
        str(weights),
        "--trials",
        "1",
        "--output-dir",
        str(out),
        "--dataset-root",
        task["data_root"],
        "--device",
        device.type,
        "--checkpoint-minutes",
        "0",
        *(["--amp"] if spec.get("amp") else []),
        "--opts",
        "SOLVER.MAX_ITER",
        str(iterations),
        *map(str, sizes["opts"]),
    ]
    args = run_voc.parse_args(argv)
    _reset_peak(device)
    code = run(RunOptions(**vars(args), benchmark="voc"))
    peak = _peak(device)
    if code:  # run() logs why a trial failed and goes on with the others: the reason is in its log
        why = [ln.split("FAILED: ", 1)[1] for ln in (out / "log.txt").read_text().splitlines() if "FAILED: " in ln]
        raise RuntimeError(f"the VOC trial failed: {why[-1] if why else 'see ' + str(out / 'log.txt')}")
    events = [json.loads(line) for line in (out / "trial_1" / "events.json").read_text().splitlines() if line.strip()]
    timed = [e for e in events if "time" in e]
    if not timed:
        raise RuntimeError(f"no iteration times in {out / 'trial_1' / 'events.json'}")
    metrics = json.loads((out / "trial_1" / "metrics.json").read_text())
    cfg = yaml.safe_load((out / "trial_1" / "config.yaml").read_text())
    train_sizes = cfg["INPUT"]["MIN_SIZE_TRAIN"]
    yield {
        "impl": "ours (Detectron2)",
        "value": round(timed[-1]["time"], 4),
        "size": f"batch {cfg['SOLVER']['IMS_PER_BATCH']}, {min(train_sizes)}-{max(train_sizes)} px (max "
        f"{cfg['INPUT']['MAX_SIZE_TRAIN']}), {iterations} iterations",
        "detail": {
            "opts": [*argv[argv.index("--opts") + 1 :]],
            "s_per_iter": "Detectron2's median of the last 20 iterations (events.json 'time')",
            "data_time": round(timed[-1].get("data_time", float("nan")), 4),
            "trial_wall_s": metrics.get("wall_time_s"),
            "iterations": metrics.get("iterations"),
            "config_hash": metrics.get("config_hash"),
        },
        **peak,
    }


def linear_rows(task: dict, spec: dict, device):
    """step: run_linear.py's training step (Runner + train_one_epoch) on one batch held on the device;
    loop: the whole command (random-init backbone) on ImageNet-mini, the last epoch's images/s."""
    sizes = task["preset"]["linear"]
    precision, channels_last = spec.get("precision", "fp32"), bool(spec.get("channels_last"))
    size = f"ResNet-50 {sizes['image_size']} px, batch {sizes['batch_size']}"
    if spec["mode"] == "step":
        import torch

        from mocoeval.transfer.linear_model import FrozenBackboneResNet50
        from mocoeval.transfer.linear_train import Runner, build_optimizer, train_one_epoch

        torch.manual_seed(0)
        model = FrozenBackboneResNet50(num_classes=1000)
        runner = Runner(model, device, precision, channels_last)
        optimizer = build_optimizer(model, lr=30.0, momentum=0.9, weight_decay=0.0)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        images = torch.randn(sizes["batch_size"], 3, sizes["image_size"], sizes["image_size"], device=device)
        batch = (images.contiguous(memory_format=fmt), torch.randint(0, 1000, (sizes["batch_size"],), device=device))
        quiet = dict(progress=False, print_freq=10**9)
        train_one_epoch(runner, [batch] * sizes["warmup"], optimizer, 0, **quiet)
        _reset_peak(device)
        stats = train_one_epoch(runner, [batch] * sizes["steps"], optimizer, 0, **quiet)  # loss.item(): synchronised
        yield {
            "impl": "ours",
            "value": round(stats["train_images_per_s"], 1),
            "size": size,
            "detail": {"steps_timed": sizes["steps"]},
            **_peak(device),
        }
        return
    from mocoeval.transfer import run_linear
    from mocoeval.transfer.linear import run

    out = Path(task["work"]) / f"linear_{precision}{'_cl' if channels_last else ''}"
    config = run_linear.parse_config(
        [
            str(Path(task["data_root"]) / "imagenet-mini"),
            "--random-init",
            "--epochs",
            str(sizes["epochs"]),
            "--batch-size",
            str(sizes["batch_size"]),
            "--image-size",
            str(sizes["image_size"]),
            "--workers",
            str(task["preset"]["workers"]),
            "--precision",
            precision,
            *(["--channels-last"] if channels_last else []),
            "--device",
            str(device),
            "--output-dir",
            str(out),
        ]
    )
    _reset_peak(device)
    metrics = run(config)
    last = metrics["history"][-1]
    yield {
        "impl": "ours",
        "value": round(last["train_images_per_s"], 1),
        "size": f"{size}, {task['preset']['workers']} loader workers",
        "detail": {
            "epochs": len(metrics["history"]),
            "per_epoch_images_per_s": [round(h["train_images_per_s"], 1) for h in metrics["history"]],
        },
        **_peak(device),
    }


PART_KINDS = {"pretrain": pretrain_rows, "voc": voc_rows, "linear": linear_rows}


# ------------------------------------------------------------------------------------------ the report
def _part_summary(part: dict) -> str:
    figures = ", ".join(
        f"{r.get('impl', '')} {r['setting']} {r['value']:g} {r['unit']}".strip() for r in part["rows"] if "value" in r
    )
    tail = f": {part['error']}" if part.get("error") else ""
    return (
        f"{part['name']}: {part['status']}"
        + (f" ({part['wall_s']:.0f} s)" if "wall_s" in part else "")
        + (f" — {figures}" if figures else "")
        + tail
    )


def render_markdown(report: dict) -> str:
    env = report.get("env") or {}
    header = [
        f"# gpu-check ({report['preset']} preset)",
        "",
        f"- device: {env.get('device_name', report['device'])} ({report['device']}"
        + (f", {env['gpu_memory_mib']:,} MiB" if env.get("gpu_memory_mib") else "")
        + f"), {env.get('cpus', '?')} CPUs",
        f"- torch {env.get('torch')} (CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}), torchvision "
        f"{env.get('torchvision')}, detectron2 {env.get('detectron2')}, lightly {env.get('lightly')}, Python "
        f"{env.get('python')}",
        f"- started {report['started']}, commit {report.get('commit')}, {report.get('wall_s', 0):.0f} s of a "
        f"{report['budget_s']} s budget; sizes: {report['presets_file']} ({report['preset']})",
        "- fp32 = PyTorch's defaults"
        + (
            f" (TF32 convolutions: {env.get('tf32_conv')}, TF32 matrix products: {env.get('tf32_matmul')})"
            if env
            else ""
        ),
    ]
    data = report.get("data")
    if data:
        header.append(
            f"- mini data: {data['root']} ({data['s']:.0f} s)"
            + (f" — FAILED: {data['error']}" if data["error"] else "")
        )
    lines = [
        *header,
        "",
        "| part | what | implementation | setting | size | figure | peak memory | notes |",
        "|---|---|---|---|---|--:|--:|---|",
    ]
    for part in report["parts"]:
        for r in part["rows"]:
            figure = f"{r['value']:,.4g} {r['unit']}" if "value" in r else ""
            memory = f"{r['peak_memory_mib']:,.0f} MiB" if r.get("peak_memory_mib") is not None else "n/a"
            notes = []
            if "ours_over_lightly" in r:
                notes.append(f"ours/lightly {r['ours_over_lightly']:.2f}")
            for key in ("note", "skipped", "error"):
                if r.get(key):
                    notes.append(("skipped: " if key == "skipped" else "FAILED: " if key == "error" else "") + r[key])
            if r.get("peak_memory") and "value" in r:
                notes.append(f"memory: {r['peak_memory']}")
            lines.append(
                f"| {part['name']} | {r['what']} | {r.get('impl', '')} | {r['setting']} | {r.get('size', '')} | "
                f"{figure} | {memory if 'value' in r else ''} | {'; '.join(notes)} |"
            )
        if not part["rows"]:
            lines.append(f"| {part['name']} | | | | | | | {part['status']}: {part.get('error') or ''} |")
    lines += ["", "## Parts", ""]
    for part in report["parts"]:
        where = f" (log: {part['log']})" if part.get("log") else ""
        lines.append(f"- {_part_summary(part)}{where}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
