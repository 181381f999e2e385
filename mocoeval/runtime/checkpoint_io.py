"""Reading a checkpoint a user names: one loader, one set of one-line errors, for every command.

`torch.load` with `weights_only=True` (no pickled code runs) after cheap checks on the file's first bytes, so that
a missing, empty, truncated or foreign file is one line naming it instead of PyTorch's multi-line text.
"""

from __future__ import annotations

import pickle
import re
import tarfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

from mocoeval.runtime.errors import UserError

# Legacy (pre-1.6, non-zip) torch.save files start with the pickled magic number 0x1950a86a20f9469cfc6c.
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


def _sniff(path: Path) -> str:
    """What kind of file this is, from its first bytes: 'zip', 'legacy' (old torch.save), or a UserError."""
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        raise UserError(f"{path}: empty file (0 bytes), not a checkpoint")
    if head.startswith(b"PK\x03\x04"):
        if not zipfile.is_zipfile(path):
            raise UserError(
                f"{path}: truncated or corrupted PyTorch checkpoint (zip archive without its "
                f"central directory; was the download or copy interrupted?)"
            )
        return "zip"
    if head[:1] == b"\x80" and _LEGACY_TORCH_MAGIC[2:] in head:  # any pickle protocol
        return "legacy"
    if tarfile.is_tarfile(path):  # torch.save's format before PyTorch 0.4 (still readable by torch.load)
        return "legacy"
    if head[:1] == b"\x80":
        raise UserError(
            f"{path}: a plain Python pickle, not a PyTorch checkpoint (an already converted "
            f"Detectron2 .pkl? those are inputs for transfer/run_voc.py, not for this converter)"
        )
    raise UserError(f"{path}: not a PyTorch checkpoint (neither a torch.save zip archive nor a legacy torch pickle)")


def describe_exception(e: BaseException) -> str:
    """The exception's type and the start of its text, on one line."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


def _unpickler_reason(message: str) -> str:
    """The safe unpickler's own reason inside torch.load's "Weights only load failed" text (which wraps it in
    advice about weights_only=False and a documentation link), on one line; "" when there is none."""
    paragraphs = [" ".join(p.split()) for p in message.split("\n\n")]
    reasons = [p for p in paragraphs if p and not p.startswith(("Weights only load failed", "Check the documentation"))]
    return reasons[-1][:200] if reasons else ""


def torch_load_safely(path: str | Path, trust_pickle: bool = False) -> Any:
    """torch.load on CPU with `weights_only=True`; a file that needs more is refused unless `trust_pickle`."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise UserError(f"{path} is a directory, expected a checkpoint file")
    try:
        kind = _sniff(path)
    except OSError as e:  # no read permission, an I/O error: still one line
        raise UserError(f"{path}: cannot read ({describe_exception(e)})") from None
    import torch  # after the cheap checks: a typo in the path fails in milliseconds

    try:
        # mmap: only the tensors we keep are read from disk (official MoCo files also hold encoder_k, queue,
        # optimizer state).
        with warnings.catch_warnings():  # torch's note about legacy files' pickle protocol: noise for users
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=(kind == "zip"))
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Weights only load failed" not in msg:
            raise UserError(f"{path}: corrupted PyTorch checkpoint ({describe_exception(e)})") from None
        # "Unsupported global: GLOBAL x.y" (not allowlisted) or "unsupported GLOBAL x.y whose module ... is blocked"
        found = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", msg, re.IGNORECASE)
        reason = _unpickler_reason(msg)
        what = (
            f"a pickled {found.group(1)} object"
            if found
            else "pickle instructions the safe loader does not support" + (f" ({reason})" if reason else "")
        )
        if not trust_pickle:
            raise UserError(
                f"{path}: refusing to load: the file contains {what}, which only a full unpickle can "
                f"rebuild, and unpickling can run arbitrary code; if you trust where the file comes from, "
                f"rerun with --trust-pickle"
            ) from None
    except Exception as e:  # noqa: BLE001 - weights_only runs no pickled code, so any failure is the file's
        # (a truncated legacy file: struct.error, IndexError 'pop from empty list', ...)
        raise UserError(
            f"{path}: unreadable PyTorch checkpoint, truncated or corrupted ({describe_exception(e)})"
        ) from None
    # The user vouched for the file: full unpickling.
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # any failure of arbitrary pickled code is the file's fault: one line
        raise UserError(f"{path}: could not load even with --trust-pickle ({describe_exception(e)})") from None
