"""The commands' shared command-line habits: --help without torch, Detectron2-style overrides, main_moco's
launcher flags, defaults relative to the working directory, the checkpoints pretraining keeps."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Every user command: the stage folders' scripts (pretrain/train_moco.py, transfer/run_voc.py, ...).
SCRIPTS = sorted(
    p.relative_to(REPO).as_posix()
    for d in ("pretrain", "convert", "transfer", "results")
    for p in (REPO / d).glob("*.py")
)
HEAVY = ("torch", "detectron2")

# Runs the script as `python SCRIPT --help` would, then names the heavy modules that got imported.
PROBE = """
import runpy, sys
sys.argv = [sys.argv[1], "--help"]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as e:
    code = e.code
print("HEAVY", *[m for m in {heavy!r} if m in sys.modules], file=sys.stderr)
sys.exit(code)
"""


def run_python(args, cwd=REPO, env=None, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, **kwargs)


def test_every_command_is_probed():
    assert len(SCRIPTS) >= 10 and "pretrain/train_moco.py" in SCRIPTS and "transfer/run_coco.py" in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_answers_without_importing_torch_or_detectron2(script):
    """--help must not wait seconds for torch / Detectron2: they are imported after parsing."""
    out = run_python(["-c", PROBE.format(heavy=HEAVY), str(REPO / script)], timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout
    heavy = out.stderr.strip().splitlines()[-1].split()[1:]
    assert heavy == [], f"{script} --help imported {heavy}"


# ------------------------------------------------------------------ Detectron2's override convention
OVERRIDES = ["SOLVER.MAX_ITER", "200", "SOLVER.STEPS", "(150,)", "MODEL.RPN.POST_NMS_TOPK_TEST", "-1"]


@pytest.mark.parametrize("benchmark", ["voc", "coco"])
def test_trailing_key_value_pairs_and_opts_give_the_same_config(benchmark):
    from mocoeval.transfer.detection import run_voc
    from mocoeval.transfer.detection.benchmark import BENCHMARKS
    from mocoeval.transfer.detection.config import build_config

    forms = [
        ["--weights", "w.pkl", "--trials", "2", *OVERRIDES],  # Detectron2's tools: the pairs after the flags
        ["--weights", "w.pkl", "--trials", "2", "--opts", *OVERRIDES],
        ["--opts", *OVERRIDES[:2], "--weights", "w.pkl", "--trials", "2", "--opts", *OVERRIDES[2:4], *OVERRIDES[4:]],
    ]
    parsed = [run_voc.parse_args(argv, benchmark) for argv in forms]
    assert all(args.opts == OVERRIDES and args.trials == 2 and args.weights == "w.pkl" for args in parsed)
    config_file = BENCHMARKS[benchmark].config_for("torchvision")
    configs = [build_config(config_file, args.opts)[0] for args in parsed[:2]]
    assert configs[0].SOLVER.MAX_ITER == 200 and configs[0].dump() == configs[1].dump()


@pytest.mark.parametrize("form", [["SOLVER.MAX_ITER", "200", "SOLVER.STEPS"], ["--opts", "SOLVER.MAX_ITER"]])
def test_an_odd_number_of_overrides_is_one_clear_line(form, tmp_path):
    out = run_python(["transfer/run_voc.py", "--weights", str(tmp_path / "w.pkl"), "--dry-run", *form], timeout=300)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: config overrides") and "KEY VALUE pairs" in lines[0]


# ------------------------------------------------------------------ main_moco's launcher flags
@pytest.mark.parametrize(
    "flags",
    [
        ["--dist-url", "tcp://localhost:10001", "--multiprocessing-distributed", "--world-size", "1", "--rank", "0"],
        ["--world-size=2"],
    ],
)
def test_main_moco_launcher_flags_point_to_torchrun(flags, tmp_path, capsys):
    from mocoeval.pretrain import train_moco

    with pytest.raises(SystemExit) as exit_info:
        train_moco.main([str(tmp_path), *flags, "--epochs", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "torchrun --nproc_per_node" in err[0]
    assert all(f.split("=")[0] in err[0] for f in flags if f.startswith("--"))


# ------------------------------------------------------------------ defaults relative to the working directory
def test_the_store_and_tables_default_to_the_working_directory(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MOCOEVAL_RESULTS_DIR"}
    env["PYTHONPATH"] = str(REPO)
    cmd = [sys.executable, str(REPO / "results" / "make_tables.py"), "--no-plots"]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "results" / "ablation.md").is_file()  # ./results, not the package's checkout
    assert "./results/runs" in run_python([str(REPO / "results" / "make_tables.py"), "--help"]).stdout.replace(
        "\n", " "
    )


@pytest.mark.parametrize("store, tables", [("elsewhere/runs", "elsewhere"), ("records", "records")])
def test_tables_go_next_to_the_store_named_by_the_environment(tmp_path, store, tables):
    env = {"MOCOEVAL_RESULTS_DIR": str(tmp_path / store)}
    out = run_python([str(REPO / "results" / "make_tables.py"), "--no-plots"], cwd=tmp_path, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / tables / "ablation.md").is_file() and not (tmp_path / "results").exists()
