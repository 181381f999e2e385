"""pretrain/bench.py at the tiniest size: one JSON line per (mode, implementation), no timing asserted."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "-a",
    "resnet18",
    "--image-size",
    "32",
    "-b",
    "4",
    "--moco-k",
    "8",
    "--steps",
    "1",
    "--rounds",
    "2",
    "--warmup",
    "1",
    "-j",
    "0",
    "--images",
    "20",
    "--json",
]


def _bench(*args):
    return subprocess.run(
        [sys.executable, "pretrain/bench.py", *TINY, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )


def test_bench_json_lines_for_step_and_loop():
    proc = _bench("--modes", "step", "loop")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["mode"], r["impl"]) for r in rows] == [("step", "ours"), ("loop", "ours")]
    for r in rows:
        assert r["pairs_per_s"] > 0 and r["steps_timed"] == 2 and r["peak_memory_mib"] > 0
        assert r["bn_splits"] == 2 and "ratio" not in r


def test_bench_compare_lightly_or_one_line_error():
    proc = _bench("--modes", "step", "--compare", "lightly")
    if importlib.util.find_spec("lightly") is None:
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "lightly" in proc.stderr
        return
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["impl"] for r in rows] == ["ours", "lightly"]
    speed = {r["impl"]: r["pairs_per_s"] for r in rows}
    assert all(abs(r["ratio"] - speed["ours"] / speed["lightly"]) < 1e-9 for r in rows)


def test_bench_bad_queue_is_one_line_error():
    proc = subprocess.run(
        [sys.executable, "pretrain/bench.py", "--moco-k", "10", "-b", "4"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "multiple" in proc.stderr


def test_bench_loader_mode_times_the_loader_alone():
    proc = _bench("--modes", "loader", "--workers", "0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert row["mode"] == "loader" and row["workers"] == 0 and row["pairs_per_s"] > 0
    assert row["colour_on_device"] is False  # auto on CPU: the colour ops run in the loader


def test_bench_bn_splits_equal_work_and_bad_value():
    proc = _bench("--modes", "step", "--bn-splits", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[0])["bn_splits"] == 1
    bad = _bench("--modes", "step", "--bn-splits", "3")  # batch 4
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "--bn-splits 3" in bad.stderr
