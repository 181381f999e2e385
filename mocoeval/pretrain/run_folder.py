"""What a finished or pruned pretraining run leaves in its folder besides the checkpoints themselves: the
epoch checkpoints it keeps, `final.pth.tar`, `metrics.json` and its record in the results store."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path

from mocoeval.pretrain.checkpoint import CHECKPOINT_RE, FINAL_NAME, remove_resume_points
from mocoeval.pretrain.config import PretrainConfig, kept_checkpoint
from mocoeval.results.store import write_run_record
from mocoeval.runtime.fileio import atomic_write_json, sha256_file

log = logging.getLogger("mocoeval.pretrain")


def prune_checkpoints(out: Path, cfg: PretrainConfig):
    """Delete the checkpoint_XXXX files that `kept_checkpoint` does not keep (the newest always stays, so
    `--resume auto` finds it)."""
    found = sorted((int(m.group(1)) + 1, p) for p in out.iterdir() if (m := CHECKPOINT_RE.match(p.name)))
    epochs = [e for e, _ in found]
    for epochs_done, path in found:
        if not kept_checkpoint(cfg, epochs_done, epochs):
            path.unlink(missing_ok=True)


def already_finished(out: Path) -> bool:
    try:
        metrics = json.loads((out / "metrics.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(metrics.get("run_record")) and (out / FINAL_NAME).is_file()


def write_metrics(out: Path, config, variant, history, checkpoint, run_record):
    final = history[-1] if history else {}
    atomic_write_json(
        out / "metrics.json",
        {
            "variant": variant,
            "config": config,
            "epochs_done": len(history) and history[-1]["epoch"],
            "final": final,
            "history": history,
            "checkpoint": str(checkpoint) if checkpoint else None,
            "run_record": str(run_record) if run_record else None,
        },
    )


def link_final(src: Path, out: Path) -> Path:
    """final.pth.tar: a hard link to the last checkpoint (a copy where links are impossible), made atomically."""
    final, tmp = out / FINAL_NAME, out / f".{FINAL_NAME}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, final)
    return final


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def finish_run(out: Path, last_ckpt: Path, config, variant, history, seed) -> dict:
    final = link_final(Path(last_ckpt), out)
    remove_resume_points(out)
    sha = sha256_file(final)
    last = history[-1] if history else {}
    metrics = {
        "final_loss": last.get("loss"),
        "final_acc1": last.get("acc1"),
        "epochs": config["epochs"],
        "ln_k_plus_1": math.log(config["moco_k"] + 1),
        "images_per_s": last.get("images_per_s"),
    }
    if "knn_top1" in last:
        metrics["final_knn_top1"] = last["knn_top1"]
    wall = sum(h.get("time_s", 0.0) for h in history)
    record = write_run_record(
        "pretrain",
        variant=variant,
        metrics=metrics,
        source_sha256=sha,
        weights=str(final),
        weights_sha256=sha,
        config=config,
        seeds=[seed],
        wall_time_s=wall,
        extra={"output_dir": str(out), "checkpoint": str(last_ckpt)},
    )
    write_metrics(out, config, variant, history, final, record)
    log.info(
        "done: %s (sha256 %s), loss %s, acc1 %s%%; run record %s",
        final,
        sha[:12],
        _fmt(metrics["final_loss"], ".4f"),
        _fmt(metrics["final_acc1"], ".2f"),
        record,
    )
    return {"checkpoint": str(final), "sha256": sha, "metrics": metrics, "run_record": str(record), "history": history}
