"""pretrain/bench.py at the tiniest size: one JSON line per (mode, implementation), no timing asserted."""

from __future__ import annotations

import dataclasses
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


def test_bench_loader_priority_idle_on_cpu_unless_normal():
    rows = {}
    for priority in ("auto", "normal"):
        proc = _bench("--modes", "loader", "--workers", "1", "--loader-priority", priority)
        assert proc.returncode == 0, proc.stderr[-2000:]
        (rows[priority],) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert rows["auto"]["idle_workers"] is True and rows["normal"]["idle_workers"] is False
    assert all(r["workers"] == 1 and r["pairs_per_s"] > 0 for r in rows.values())


def test_bench_bn_splits_equal_work_and_bad_value():
    proc = _bench("--modes", "step", "--bn-splits", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[0])["bn_splits"] == 1
    bad = _bench("--modes", "step", "--bn-splits", "3")  # batch 4
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "--bn-splits 3" in bad.stderr


def test_bench_workers_mode_times_one_worker_single_threaded():
    proc = _bench("--modes", "workers", "--augment-on", "device", "--source-size", "40")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert row["mode"] == "workers" and row["workers"] == 0 and row["threads"] == 1 and row["pairs_per_s"] > 0
    assert row["colour_on_device"] is True
    bad = _bench("--modes", "workers", "--source-size", "8")
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "--source-size" in bad.stderr


def test_workers_mode_fetches_what_the_workers_hand_over(mini_data_root):
    import torch

    from mocoeval.pretrain.throughput import BenchConfig, OursRunner

    data = str(mini_data_root / "imagenet-mini")
    tiny = dict(arch="resnet18", image_size=32, batch_size=4, moco_k=8, workers=0, data=data, augment_on="device")
    views = OursRunner(BenchConfig(mode="workers", **tiny), torch.device("cpu")).fetch()
    assert views.dtype == torch.uint8 and views.shape == (4, 2, 3, 32, 32)  # cropped, not yet coloured/normalised
    finished = OursRunner(BenchConfig(mode="loader", **tiny), torch.device("cpu")).fetch()
    assert finished.dtype == torch.float32 and finished.shape == (4, 3, 32, 32)


def test_a_runners_failure_comes_back_in_one_line_with_its_name(tmp_path):
    import pytest

    from mocoeval.pretrain.throughput import BenchConfig, benchmark
    from mocoeval.runtime.errors import UserError

    (tmp_path / "train").mkdir()  # an ImageFolder root without classes: the runner's loader refuses it
    cfg = BenchConfig(
        arch="resnet18", image_size=32, batch_size=4, moco_k=8, mode="loop", workers=0, data=str(tmp_path)
    )
    with pytest.raises(UserError, match=r"^ours: .*train: no class folders") as err:
        benchmark(cfg, ("ours",), steps=1, warmup=1, rounds=1)
    assert "\n" not in str(err.value)
    with pytest.raises(RuntimeError, match=r"^ours: \w+Error: .*resnet_nope"):  # any other failure: its type named
        benchmark(dataclasses.replace(cfg, mode="step", arch="resnet_nope"), ("ours",), steps=1, warmup=1, rounds=1)


def test_a_runner_process_that_dies_is_reported_not_waited_for():
    import multiprocessing
    import os
    import signal
    import threading
    import time

    import pytest

    from mocoeval.pretrain.throughput import BenchConfig, benchmark

    def kill_the_runner():
        while not multiprocessing.active_children():
            time.sleep(0.05)
        time.sleep(1.0)  # let it import and start building
        for child in multiprocessing.active_children():
            os.kill(child.pid, signal.SIGKILL)

    threading.Thread(target=kill_the_runner, daemon=True).start()
    cfg = BenchConfig(arch="resnet18", image_size=32, batch_size=4, moco_k=8, mode="step")
    with pytest.raises(RuntimeError, match=r"^ours: its benchmark process died \(exit code -9\)"):
        benchmark(cfg, ("ours",), steps=1000, warmup=1000, rounds=1000)
    assert not multiprocessing.active_children()
