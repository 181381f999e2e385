"""The README's commands, checked (issue 33): a renamed script, flag, make target or linked file breaks a test.

1. Every command the README shows (fenced blocks and inline code spans) is parsed; each script it names must exist
   and each `--flag` it passes must be in that script's `--help` (scripts/install.sh's and wheelhouse.sh's too); each
   `make` target and `DEMO_*` variable must be in the Makefile; each relative Markdown link must resolve.
2. The README commands that run offline are run as written, with `output/...` paths and `--out DIR` moved into a
   temporary folder: the converter on `random-init:0`, the VOC `--dry-run` of the evaluation flow (on the converted
   random network and the mini data, since the official checkpoint is not here), `compare.py` on the claim in
   miniature (its printed output must be the README's, line for line), `compare.py --list` through
   `MOCOEVAL_RESULTS_DIR`, `make_tables.py` on the claim in miniature, and `to_d2.py --list-formats`.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
MAKEFILE = (ROOT / "Makefile").read_text()
COMMAND_DIRS = ("pretrain", "convert", "transfer", "results")
# bare script names ("`run_voc.py --trials 5`") -> their path
SCRIPTS = {p.name: p.relative_to(ROOT).as_posix() for d in COMMAND_DIRS for p in sorted((ROOT / d).glob("*.py"))}
MODULES = {"mocoeval.data.make_mini_data"}  # `python -m ...` commands the README shows
SHELL_SCRIPTS = ("scripts/install.sh", "scripts/wheelhouse.sh")  # `bash SCRIPT ...` commands with flags
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
FLAG = re.compile(r"--[a-z][a-z0-9-]*")


def _split(text: str) -> list[list[str]]:
    """Shell words of one command line, split at &&, ;, | into separate commands; comments dropped."""
    try:
        words = shlex.split(text, comments=True)
    except ValueError:  # unbalanced quotes in prose-like lines
        words = text.split()
    commands, current = [], []
    for w in words:
        if w in ("&&", ";", "|", "||"):
            commands.append(current)
            current = []
        else:
            current.append(w)
    return [c for c in [*commands, current] if c]


def readme_commands() -> list[list[str]]:
    """Every command the README shows, as shell words: fenced code blocks (continuation lines joined, `$ ` prompts
    dropped) and inline code spans."""
    commands = []
    for block in FENCE.findall(README):
        for line in block.replace("\\\n", " ").splitlines():
            commands += _split(line.strip().removeprefix("$ "))
    prose = FENCE.sub("", README)
    for span in re.findall(r"`([^`]+)`", prose):
        commands += _split(" ".join(span.split()))
    return commands


def _script_and_args(words: list[str]) -> tuple[str, list[str]] | None:
    """(script path or `-m` module, its arguments) of a command that runs one of ours, else None."""
    for i, w in enumerate(words):
        if w == "-m" and i + 1 < len(words) and words[i + 1] in MODULES:
            return words[i + 1], words[i + 2 :]
        if w.endswith(".py") and (w in SCRIPTS.values() or w in SCRIPTS):
            return SCRIPTS.get(w, w), words[i + 1 :]
        if w in SHELL_SCRIPTS:
            return w, words[i + 1 :]
    return None


def _flags_by_script() -> dict[str, set[str]]:
    flags: dict[str, set[str]] = {}
    for words in readme_commands():
        found = _script_and_args(words)
        if found:
            script, args = found
            if "--opts" in args:  # KEY VALUE pairs follow
                args = args[: args.index("--opts") + 1]
            flags.setdefault(script, set()).update(
                m.group(0) for a in args for m in [FLAG.fullmatch(a.split("=")[0])] if m
            )
    return flags


FLAGS = _flags_by_script()


def _env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update({k: str(v) for k, v in extra.items()})
    return env


@functools.cache
def _help(script: str) -> str:
    argv = ["-m", script] if script in MODULES else [str(ROOT / script)]
    command = ["bash", *argv] if script in SHELL_SCRIPTS else [sys.executable, *argv]
    proc = subprocess.run([*command, "--help"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# ------------------------------------------------------------------------------------ what the README names


def test_readme_shows_the_commands_it_is_about():
    for script in (
        "convert/to_d2.py",
        "transfer/run_voc.py",
        "transfer/run_linear.py",
        "transfer/run_coco.py",
        "results/make_tables.py",
        "results/compare.py",
        "pretrain/train_moco.py",
    ):
        assert script in FLAGS, f"the README no longer shows a {script} command"


@pytest.mark.parametrize("script", sorted(FLAGS))
def test_every_flag_the_readme_shows_is_in_the_help(script):
    text = _help(script)
    missing = sorted(f for f in FLAGS[script] if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", text))
    assert not missing, f"the README passes {missing} to {script}, which its --help does not list"


# flags of other tools the README shows (torchrun, pip)
OTHER_TOOLS_FLAGS = {"--nproc_per_node", "--index-url", "--no-build-isolation", "--no-deps"}


def test_every_flag_named_anywhere_in_the_readme_exists():
    """Flags named on their own (`--input-norm none`, `--resume auto`) must be in some command's --help."""
    helps = "\n".join(_help(s) for s in sorted({*SCRIPTS.values(), *MODULES, *SHELL_SCRIPTS}))
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*[a-z0-9]", README)) - OTHER_TOOLS_FLAGS
    missing = sorted(f for f in named if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", helps))
    assert not missing, f"the README names flags no command has: {missing}"


def test_every_script_and_file_the_readme_names_exists():
    prose = README
    written = ("output/", "datasets/", "results/ablation")  # what the commands write
    missing = []
    for path in set(re.findall(r"(?<![\w/.-])((?:[\w-]+/)+[\w.-]+\.(?:py|yaml|sh|md|csv))\b", prose)):
        if not path.startswith(written) and not (ROOT / path).exists():
            missing.append(path)
    for name in set(re.findall(r"(?<![\w/.-])(\w+\.py)\b", prose)):
        if name not in SCRIPTS and not any(ROOT.glob(f"**/{name}")):
            missing.append(name)
    for link in re.findall(r"\]\(([^)#\s]+)[^)]*\)", prose):
        if not re.match(r"https?://", link) and not (ROOT / link).exists():
            missing.append(link)
    assert not missing, f"the README names files that do not exist: {sorted(missing)}"


def test_every_make_target_and_variable_the_readme_shows_is_in_the_makefile():
    targets = set(re.findall(r"^([\w-]+):", MAKEFILE, re.M))
    variables = set(re.findall(r"^(\w+)\s*\?=", MAKEFILE, re.M))
    shown = [w[1:] for w in readme_commands() if w[0] == "make"]
    assert shown, "the README shows no make command"
    for args in shown:
        for a in args:
            if "=" in a:
                assert a.split("=")[0] in variables, f"make {' '.join(args)}: no variable {a.split('=')[0]}"
            else:
                assert a in targets, f"make {' '.join(args)}: no target {a}"


# ------------------------------------------------------------------------------------ running the README


def readme_command(prefix: str) -> list[str]:
    """The first README command that starts with `python PREFIX` (shell words, `python` dropped)."""
    for words in readme_commands():
        if words[0] == "python" and " ".join(words[1:]).startswith(prefix):
            return words[1:]
    raise AssertionError(f"the README no longer shows `python {prefix} ...`")


def run_readme(words: list[str], tmp_path: Path, **env) -> subprocess.CompletedProcess:
    """Run a README command from the repository root (as the README does), writing only under tmp_path:
    `output/...` paths move there (their folders created, as the README's `mkdir -p`), `--out DIR` too."""
    argv = []
    for i, w in enumerate(words):
        if w.startswith("output/"):
            w = str(tmp_path / w)
            Path(w).parent.mkdir(parents=True, exist_ok=True)
        elif i and words[i - 1] == "--out":
            w = str(tmp_path / "tables")
        argv.append(str(ROOT / w) if w in SCRIPTS.values() else w)
    env.setdefault("MOCOEVAL_RESULTS_DIR", tmp_path / "store")
    return subprocess.run(
        [sys.executable, *argv], cwd=ROOT, env=_env(**env), capture_output=True, text=True, timeout=300
    )


def test_readme_convert_random_init(tmp_path):
    words = readme_command("convert/to_d2.py random-init:0 output/")
    proc = run_readme(words, tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / next(w for w in words if w.startswith("output/"))
    assert out.is_file() and "265 tensors" in proc.stdout + proc.stderr


def test_readme_voc_dry_run_of_the_flow(tmp_path, random_r50_pkl, mini_data_root):
    """The flow's `run_voc.py ... --dry-run`, on the converted random network in place of the official release."""
    words = readme_command("transfer/run_voc.py --weights output/d2/moco_v2_800ep.pkl --trials 5 --dry-run")
    weights = tmp_path / words[words.index("--weights") + 1]
    weights.parent.mkdir(parents=True)
    shutil.copy(random_r50_pkl, weights)
    proc = run_readme(words, tmp_path, DETECTRON2_DATASETS=mini_data_root)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout + proc.stderr
    assert "trial 5/5 (seed 4): would start" in text and "dry run: nothing trained" in text


def test_readme_compare_output_is_what_the_command_prints(tmp_path):
    block = next(b for b in FENCE.findall(README) if b.startswith("$ python results/compare.py"))
    command, *expected = block.strip().splitlines()
    proc = run_readme(shlex.split(command.removeprefix("$ "))[1:], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines() == expected


def test_readme_compare_list_through_the_results_dir_variable(tmp_path):
    proc = run_readme(
        readme_command("results/compare.py --list"),
        tmp_path,
        MOCOEVAL_RESULTS_DIR=ROOT / "results/claim-in-miniature/runs",
    )
    assert proc.returncode == 0, proc.stderr
    labels = proc.stdout.splitlines()
    assert any(label.startswith("(d) [residual_bn_init 0.1") for label in labels), labels


def test_readme_make_tables_on_the_claim_in_miniature(tmp_path):
    words = readme_command("results/make_tables.py --runs results/claim-in-miniature/runs")
    if "--out" not in words:
        words = [*words, "--out", "DIR"]
    proc = run_readme(words, tmp_path)
    assert proc.returncode == 0, proc.stderr
    claim = ROOT / "results/claim-in-miniature"
    assert (tmp_path / "tables/ablation.md").read_text() == (claim / "ablation.md").read_text()


def test_readme_list_formats(tmp_path):
    proc = run_readme(readme_command("convert/to_d2.py --list-formats"), tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in ("moco", "vissl", "mmselfsup", "solo_learn", "lightly", "swav", "dino", "barlow_twins", "torchvision"):
        assert name in proc.stdout
