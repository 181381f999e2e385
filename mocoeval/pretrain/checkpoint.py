"""Pretraining checkpoints in the official MoCo layout, plus our extras.

    {"epoch": epochs done, "arch", "state_dict": {module.encoder_q.*, module.encoder_k.*, module.queue,
     module.queue_ptr}, "optimizer",                                     <- official main_moco.py layout
     "config": resolved flags (argparse dest names), "variant", "seed", "history": per-epoch metrics}

A resume point (resume_epochEEEE_stepSSSSSS.pth.tar: S steps of epoch E, 1-based, done) is the same plus
"step_in_epoch" and "epoch_progress" (what the epoch's loop had accumulated, its random state): `--resume`
continues it exactly where it stopped. Official tools read it as a checkpoint after epoch E-1.

The `module.` prefix is written even without DistributedDataParallel: official tools (and converters
written for them) expect it, and a checkpoint without it was silently converted to nothing by the
official converter. Files are written atomically: a crash leaves the previous checkpoint intact.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from mocoeval.runtime.checkpoint_io import torch_load_safely
from mocoeval.runtime.errors import UserError
from mocoeval.runtime.fileio import atomic_torch_save

PREFIX = "module."
CHECKPOINT_RE = re.compile(r"checkpoint_(\d{4,})\.pth\.tar$")
RESUME_POINT_RE = re.compile(r"resume_epoch(\d{4,})_step(\d{6,})\.pth\.tar$")
FINAL_NAME = "final.pth.tar"


def checkpoint_name(epochs_done: int) -> str:
    """Official naming: after epoch index e (0-based) the file is checkpoint_{e:04d} and holds epoch e+1."""
    return f"checkpoint_{epochs_done - 1:04d}.pth.tar"


def resume_point_name(epochs_done: int, steps_in_epoch: int) -> str:
    """The point `steps_in_epoch` steps into epoch `epochs_done + 1` (numbered as the log prints them)."""
    return f"resume_epoch{epochs_done + 1:04d}_step{steps_in_epoch:06d}.pth.tar"


def prefixed_state_dict(model: torch.nn.Module) -> dict:
    return {PREFIX + k: v for k, v in model.state_dict().items()}


def strip_prefix(state_dict: dict) -> dict:
    return {(k[len(PREFIX) :] if k.startswith(PREFIX) else k): v for k, v in state_dict.items()}


def save_checkpoint(
    path: str | Path,
    *,
    model,
    optimizer,
    epochs_done: int,
    arch: str,
    config: dict,
    variant: dict,
    seed: int,
    history: list,
    mid_epoch: dict | None = None,
) -> Path:
    """An epoch checkpoint; with `mid_epoch` ({"step_in_epoch", "epoch_progress"}) a resume point."""
    state = {
        "epoch": epochs_done,
        "arch": arch,
        "state_dict": prefixed_state_dict(model),
        "optimizer": optimizer.state_dict(),
        "config": config,
        "variant": variant,
        "seed": seed,
        "history": history,
        **(mid_epoch or {}),
    }
    return atomic_torch_save(state, path)


def load_moco_checkpoint(path: str | Path) -> dict:
    """Load and validate a MoCo pretraining checkpoint (ours or official) for resuming; UserError if not one."""
    path = Path(path)
    ckpt = torch_load_safely(path)  # the converter's loader: one line for every unreadable file
    sd = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    keys = set(strip_prefix(sd)) if isinstance(sd, dict) else set()
    if not (
        {"queue", "queue_ptr"} <= keys
        and any(k.startswith("encoder_q.") for k in keys)
        and any(k.startswith("encoder_k.") for k in keys)
    ):
        raise UserError(
            f"{path} is not a MoCo pretraining checkpoint "
            "(expected state_dict with module.encoder_q.*, module.encoder_k.*, module.queue, module.queue_ptr)"
        )
    missing = [k for k in ("epoch", "optimizer") if k not in ckpt]
    if missing:
        raise UserError(f"{path} cannot be resumed: it has no {' or '.join(missing)}")
    return ckpt


def structure_of(ckpt: dict) -> dict:
    """What the weights themselves say about the run: arch, mlp, moco_dim, moco_k (official checkpoints
    carry no config, so these are read off the tensors)."""
    sd = strip_prefix(ckpt["state_dict"])
    dim, k = sd["queue"].shape
    return {
        "arch": ckpt.get("arch") or "resnet50",
        "mlp": "encoder_q.fc.0.weight" in sd,
        "moco_dim": int(dim),
        "moco_k": int(k),
    }


def find_latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The checkpoint_XXXX.pth.tar with the highest number in `output_dir`, if any."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_RE.match(p.name))]
    return max(found)[1] if found else None


def _progress_of(path: Path) -> tuple[int, int] | None:
    """(epochs done, steps into the next epoch) that a checkpoint or resume point file holds, from its name."""
    if m := CHECKPOINT_RE.match(path.name):
        return int(m.group(1)) + 1, 0
    if m := RESUME_POINT_RE.match(path.name):
        return int(m.group(1)) - 1, int(m.group(2))
    return None


def find_resume_checkpoint(output_dir: str | Path) -> Path | None:
    """What `--resume auto` continues: the furthest of the epoch checkpoints and resume points in `output_dir`."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    found = [(progress, p) for p in folder.iterdir() if (progress := _progress_of(p)) is not None]
    return max(found)[1] if found else None


def remove_resume_points(output_dir: str | Path, keep: Path | None = None) -> None:
    for path in Path(output_dir).iterdir():
        if RESUME_POINT_RE.match(path.name) and path != keep:
            path.unlink(missing_ok=True)
