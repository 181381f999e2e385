"""Logging shared by the training loops: console lines that do not break a live tqdm bar, the same lines in
OUTPUT_DIR/log.txt, only the main process on the console, and durations as H:MM:SS."""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import sys
from pathlib import Path
from typing import TextIO

from tqdm import tqdm


def format_seconds(seconds: float | None) -> str:
    """H:MM:SS (days when longer); "?" when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    return str(datetime.timedelta(seconds=int(round(max(0.0, seconds)))))


class ConsoleFormatter(logging.Formatter):
    """A console format without %(levelname)s that still marks warnings and errors ("WARNING: ..."), so that
    messages carry no level prefix of their own (which log.txt's format, with %(levelname)s, would double)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        if record.levelno >= logging.WARNING:
            record = logging.makeLogRecord({**record.__dict__, "message": f"{record.levelname}: {record.message}"})
        return super().formatMessage(record)


class TqdmHandler(logging.StreamHandler):
    """Prints above a live progress bar. Records marked `step_line` (per-step progress) are left out while a
    bar shows the same thing; in a non-terminal (Slurm logs, pipes) they are the progress."""

    def __init__(self, stream: TextIO | None = None, bar_active: bool = False):
        super().__init__(stream or sys.stderr)
        self.bar_active = bar_active

    def emit(self, record):
        if self.bar_active and getattr(record, "step_line", False):
            return
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging must never kill training
            self.handleError(record)


@contextlib.contextmanager
def log_to(
    name: str,
    output_dir: Path | None,
    is_main: bool,
    *,
    console_format: logging.Formatter,
    file_format: logging.Formatter | None = None,
    stream: TextIO | None = None,
    bar_active: bool = False,
):
    """Route logger `name` to the console (main process only) and to output_dir/log.txt while the block runs, and
    only there: handlers already on the logger (e.g. the ones Detectron2's cached `setup_logger` leaves after a VOC
    run in the same process) are set aside. Other processes log warnings and errors only. Handlers and levels are
    restored afterwards."""
    handlers: list[logging.Handler] = []
    if is_main:
        console = TqdmHandler(stream, bar_active)
        console.setFormatter(console_format)
        handlers.append(console)
        if output_dir is not None:
            log_file = logging.FileHandler(Path(output_dir) / "log.txt")
            log_file.setFormatter(file_format or console_format)
            handlers.append(log_file)
    log = logging.getLogger(name)
    old_level, old_propagate, old_handlers = log.level, log.propagate, list(log.handlers)
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    log.propagate = False
    for h in old_handlers:
        log.removeHandler(h)
    for h in handlers:
        log.addHandler(h)
    try:
        yield log
    finally:
        for h in handlers:
            log.removeHandler(h)
            h.close()
        for h in old_handlers:
            log.addHandler(h)
        log.setLevel(old_level)
        log.propagate = old_propagate


@contextlib.contextmanager
def quiet_loggers(*names: str, level: int = logging.ERROR):
    """Raise the named loggers to `level` for the block (Detectron2/fvcore's load-time key reports, which
    our callers report themselves)."""
    loggers = [logging.getLogger(n) for n in names]
    old = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, old):
            lg.setLevel(lv)
