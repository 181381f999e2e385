"""Atomic writes (temp file in the same folder + rename) and hashing: a crash never leaves a half file."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mocoeval.runtime.errors import UserError


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask is set-and-return)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def plain_write_mode(path: Path) -> int:
    """The permissions open(path, "w") would give: an existing file keeps its own, a new one 0666 & ~umask."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Call `write(fileobj)` on a temp file next to `path`, fsync, then rename over `path`.

    The result has the permissions a plain write would give it (mkstemp's temp files are 0600, which would
    leave checkpoints and tables unreadable to the rest of a group on a shared cluster).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, plain_write_mode(path))
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_json(path, obj, indent: int = 2) -> Path:
    return atomic_write(
        path, lambda f: f.write(json.dumps(obj, indent=indent, sort_keys=True, default=str) + "\n"), "w"
    )


def atomic_write_text(path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text), "w")


def atomic_torch_save(obj, path) -> Path:
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj) -> str:
    """Stable hash of a JSON-able object (configs): sorted keys, no whitespace."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def check_output_dir(path, flag: str = "--output-dir") -> Path:
    """Refuse an output folder that cannot become one (an existing file, or a path through a file) before a
    stage creates anything: mkdir would otherwise fail later, with a traceback."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.is_dir():
            return path
        if p.exists() or p.is_symlink():  # a file, or a dangling link, where a folder must go
            raise UserError(
                f"{flag} {path} exists and is not a directory"
                if p == path
                else f"{flag} {path}: {p} exists and is not a directory"
            )
    return path
