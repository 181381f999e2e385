"""transfer/gpu_check.py (make gpu-check): the smoke preset end to end on CPU (every part's real code path, a report
in JSON and Markdown), a failing row and a hung part recorded without losing the rest, the presets' sizes, one-line
errors. No figure is asserted: on a CPU at tiny sizes they mean nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mocoeval.transfer import gpu_check

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "transfer" / "gpu_check.py"


def _run(args, tmp_path, timeout=900):
    env = {**os.environ, "PYTHONPATH": str(REPO), "MOCOEVAL_RESULTS_DIR": str(tmp_path / "user_store")}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_smoke_preset_runs_every_part_on_cpu_and_writes_the_report(tmp_path):
    out = tmp_path / "gpu-check"
    proc = _run(["--smoke", "--device", "cpu", "--out", out], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    preset = gpu_check.load_preset("smoke")
    assert report["preset"] == "smoke" and report["device"] == "cpu" and report["data"]["error"] is None
    assert [p["name"] for p in report["parts"]] == [p["name"] for p in preset["parts"]]
    status = {p["name"]: (p["status"], p["error"]) for p in report["parts"]}
    assert status.pop("voc-amp") == ("skipped", "Detectron2's AMP trainer needs CUDA")  # no process started for it
    assert set(status.values()) == {("ok", None)}
    rows = [r for p in report["parts"] if p["status"] == "ok" for r in p["rows"]]
    units = {(r["kind"], r["mode"]): r["unit"] for r in rows}
    assert units == {
        ("pretrain", "step"): "pairs/s",
        ("pretrain", "loop"): "pairs/s",
        ("pretrain", "workers"): "pairs/s",
        ("voc", None): "s/iter",
        ("linear", "step"): "images/s",
        ("linear", "loop"): "images/s",
    }
    for r in rows:
        assert r["value"] > 0 and r["peak_memory_mib"] > 0 and "error" not in r, r
    pretrain = [r for r in rows if r["kind"] == "pretrain"]
    if report["env"]["lightly"]:  # beside lightly, timed in alternation
        assert {r["impl"] for r in pretrain} == {"ours", "lightly"} and all("ours_over_lightly" in r for r in pretrain)
    assert {r["setting"] for r in pretrain} == {"fp32", "bf16 + channels_last"}
    assert report["env"]["device_name"] and report["env"]["torch"] and report["env"]["detectron2"]

    md = (out / "report.md").read_text()
    assert md.startswith("# gpu-check (smoke preset)") and "| part | what | implementation |" in md
    assert "skipped: Detectron2's AMP trainer needs CUDA" in md and "VOC fine-tuning" in md
    for part in report["parts"]:
        if part["status"] == "ok":
            assert (out / "logs" / f"{part['name']}.log").is_file()
    # the VOC and linear runs recorded their results in the check's folder, never the user's store
    assert not (tmp_path / "user_store").exists()
    assert list((out / "work" / "voc-fp32" / "store" / "runs").glob("*_voc_*.json"))
    assert not list((out / "work").rglob("*.pth")) and not list((out / "work").rglob("*.pkl"))  # ~300 MB a part


@pytest.mark.slow
def test_a_failing_row_and_a_hung_part_are_recorded_and_the_rest_kept(tmp_path):
    preset = gpu_check.load_preset("smoke")
    data = tmp_path / "no-data"  # the loop row's run_linear.py refuses it; the step row needs no data
    failing = {
        "name": "linear",
        "kind": "linear",
        "timeout_s": 300,
        "rows": [{"mode": "loop", "precision": "fp32"}, {"mode": "step", "precision": "fp32"}],
    }
    entry = gpu_check.run_part_process(failing, preset, "cpu", tmp_path, data, timeout_s=300)
    assert entry["status"] == "failed" and "\n" not in entry["error"]
    loop, step = entry["rows"]
    assert "error" in loop and "value" not in loop
    assert step["value"] > 0 and "error" not in step
    assert "FAILED: " in gpu_check.render_markdown({**_report(), "parts": [entry]})

    hung = {**failing, "name": "hung", "rows": [{"mode": "step", "precision": "fp32"}]}
    entry = gpu_check.run_part_process(hung, preset, "cpu", tmp_path, data, timeout_s=1)  # killed while importing
    assert (entry["status"], entry["error"], entry["rows"]) == ("timeout", "killed after 1 s", [])
    assert "hung: timeout" in gpu_check.render_markdown({**_report(), "parts": [entry]})


def _report() -> dict:
    return {"preset": "smoke", "device": "cpu", "started": "now", "budget_s": 1, "presets_file": "x", "env": {}}


def test_the_full_preset_measures_at_the_protocols_sizes():
    full, smoke = gpu_check.load_preset("full"), gpu_check.load_preset("smoke")
    assert (
        full["pretrain"].items() >= {"arch": "resnet50", "image_size": 224, "batch_size": 256, "moco_k": 65536}.items()
    )
    assert (full["linear"]["image_size"], full["linear"]["batch_size"]) == (224, 256)
    rows = {(p["kind"], tuple(sorted(r.items()))) for p in full["parts"] for r in p["rows"]}
    for mode in ("step", "loop"):
        for extra in ((), (("channels_last", True),)):
            precision = "bf16" if extra else "fp32"
            key = tuple(sorted({"mode": mode, "precision": precision, **dict(extra)}.items()))
            assert ("pretrain", key) in rows and ("linear", key) in rows
    assert ("pretrain", (("channels_last", True), ("compile", True), ("mode", "step"), ("precision", "bf16"))) in rows
    assert ("pretrain", (("mode", "workers"), ("precision", "fp32"))) in rows
    assert {("voc", (("amp", False),)), ("voc", (("amp", True),))} <= rows
    assert {p["kind"] for p in smoke["parts"]} == {p["kind"] for p in full["parts"]}
    assert all(p["timeout_s"] <= full["budget_s"] for p in full["parts"])


def test_the_full_presets_voc_trial_is_the_protocol_config_but_its_length_and_precise_bn():
    """s/iter of the full preset is the protocol's: its --opts change only how long it trains and PreciseBN."""
    from mocoeval.results.identity import config_hash, detection_identity
    from mocoeval.transfer.detection.config import build_config
    from mocoeval.transfer.detection.modeling import DEFAULT_VOC_CONFIG

    voc = gpu_check.load_preset("full")["voc"]
    cfg, _ = build_config(DEFAULT_VOC_CONFIG, ["SOLVER.MAX_ITER", str(voc["iterations"]), *map(str, voc["opts"])])
    record = {
        "stage": "voc",
        "variant": {"name": "x"},
        "config": yaml.safe_load(cfg.dump()),
        "config_hash": config_hash(cfg),
    }
    assert {k for k, _ in detection_identity(record).departures} == {"SOLVER.MAX_ITER", "TEST.PRECISE_BN.NUM_ITER"}


def test_full_preset_without_a_gpu_and_unknown_parts_are_one_line_errors(tmp_path):
    for args, fragment in [
        (["--device", "cpu"], "no GPU here"),
        (["--smoke", "--parts", "nope"], "--parts nope: the smoke preset has pretrain-step"),
    ]:
        proc = _run([*args, "--out", tmp_path / "o"], tmp_path, timeout=300)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
        assert fragment in lines[0]
    assert not (tmp_path / "o").exists()
