"""scripts/wheelhouse.sh and scripts/install.sh --wheelhouse: the offline install for a GPU machine without a package
registry. Nothing here downloads: the size check runs on a folder of its own, the install on a tiny wheelhouse of
wheels made here, into a fresh virtual environment (no system site-packages) that sees this environment's torch and
Detectron2 through a path file, as the GPU machine's Python has its own torch."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIST = REPO / "scripts" / "wheelhouse.txt"


def _entries() -> list[tuple[str, str]]:
    lines = [ln.split("#")[0].split() for ln in LIST.read_text().splitlines()]
    return [(words[0], words[1]) for words in lines if words]


def test_the_list_pins_one_version_per_wheel_names_its_module_and_has_no_torch():
    entries = _entries()
    names = [spec.split("==")[0].lower() for spec, _ in entries]
    assert all("==" in spec for spec, _ in entries) and len(set(names)) == len(names)
    assert not {"torch", "torchvision"} & set(names)
    modules = dict(zip(names, (m for _, m in entries)))
    # Detectron2 and what it and this project import that the GPU machines lack
    assert (
        modules.items()
        >= {
            "sal-detectron2": "detectron2",
            "fvcore": "fvcore",
            "iopath": "iopath",
            "omegaconf": "omegaconf",
            "hydra-core": "hydra",
            "pycocotools": "pycocotools",
            "lightly": "lightly",
        }.items()
    )


def _bash(*args, cwd=REPO, env=None):
    return subprocess.run(["bash", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def _one_error_line(proc, code: int) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == code and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_size_check_counts_the_working_tree_and_refuses_over_the_limit_or_unignored(tmp_path):
    """In a checkout of its own: the folder must be git-ignored and, with what travels anyway, fit in the limit."""
    repo = tmp_path / "checkout"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "wheelhouse.sh", repo / "scripts")
    (repo / ".gitignore").write_text("/.whl/\n")
    (repo / "tracked.bin").write_bytes(b"x" * 3 * 2**20)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "add", "."], cwd=repo, check=True)
    house = repo / ".whl"
    house.mkdir()
    (house / "a-1.0-py3-none-any.whl").write_bytes(b"w" * 2**20)
    proc = _bash("scripts/wheelhouse.sh", "--check", ".whl", cwd=repo)
    assert proc.returncode == 0, proc.stderr
    assert "1.0 MiB in 1 wheel(s); with the working tree (3.0 MiB) 4.0 MiB of 64 MiB" in proc.stdout
    with open(house / "big-1.0-py3-none-any.whl", "wb") as f:  # sparse: 61 MiB apparent, nothing on disk
        f.truncate(61 * 2**20)
    line = _one_error_line(_bash("scripts/wheelhouse.sh", "--check", ".whl", cwd=repo), 1)
    assert "(62.0 MiB) and the working tree (3.0 MiB) are 65.0 MiB, over the 64 MiB" in line
    (repo / "loose").mkdir()
    assert "is not git-ignored" in _one_error_line(_bash("scripts/wheelhouse.sh", "--check", "loose", cwd=repo), 1)


def _wheel(folder: Path, name: str, version: str, module: str) -> str:
    """A minimal pure-Python wheel holding `module` (VALUE = name), with its RECORD."""
    dist = f"{name}-{version}"
    files = {
        f"{module}/__init__.py": f"VALUE = {name!r}\n".encode(),
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }

    def digest(data: bytes) -> str:
        return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

    record = "".join(f"{path},sha256={digest(data)},{len(data)}\n" for path, data in files.items())
    files[f"{dist}.dist-info/RECORD"] = (record + f"{dist}.dist-info/RECORD,,\n").encode()
    filename = f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(folder / filename, "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
    return filename


def _fresh_venv(path: Path, see_this_environment: bool) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    python = path / "bin" / "python"
    if see_this_environment:  # torch, torchvision, Detectron2, pip, setuptools: the machine's own packages
        purelib = subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        Path(purelib, "this-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


@pytest.mark.slow
def test_install_from_a_wheelhouse_installs_what_is_missing_offline_then_the_project(tmp_path):
    house = tmp_path / "house"
    house.mkdir()
    probe = _wheel(house, "mocoeval_probe", "1.0", "mocoeval_probe")
    fake_yacs = _wheel(house, "yacs", "99.0", "yacs")  # importable already: the environment's yacs must stay
    (house / "wheelhouse.txt").write_text(f"# WHEEL MODULE\n{probe} mocoeval_probe\n{fake_yacs} yacs\n")
    python = _fresh_venv(tmp_path / "venv", see_this_environment=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the project must come from the install
    proc = _bash("scripts/install.sh", "--wheelhouse", house, env={**env, "PYTHON": str(python)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[install] 1 wheel(s) from" in proc.stdout and "[install] ok: torch" in proc.stdout
    assert f"yacs: already importable, {fake_yacs} left out" in proc.stderr
    check = subprocess.run(
        [
            python,
            "-c",
            "import mocoeval, mocoeval_probe, yacs; print(mocoeval.REPO_ROOT, mocoeval_probe.VALUE, yacs.__file__)",
        ],
        cwd="/",
        env=env,
        capture_output=True,
        text=True,
    )
    root, value, yacs_file = check.stdout.split()
    assert Path(root) == REPO and value == "mocoeval_probe" and str(tmp_path) not in yacs_file, check.stderr

    again = _bash("scripts/install.sh", "--wheelhouse", house, env={**env, "PYTHON": str(python)})
    assert again.returncode == 0 and "wheel(s) from" not in again.stdout and "editable" not in again.stdout

    (house / probe).unlink()
    (house / "wheelhouse.txt").write_text(f"{probe} mocoeval_probe_gone\n")
    missing = _bash("scripts/install.sh", "--wheelhouse", house, env={**env, "PYTHON": str(python)})
    assert "is missing: rebuild with bash scripts/wheelhouse.sh" in _one_error_line(missing, 1)


def test_install_from_a_wheelhouse_needs_a_python_with_torch(tmp_path):
    house = tmp_path / "house"
    house.mkdir()
    (house / "wheelhouse.txt").write_text("")
    python = _fresh_venv(tmp_path / "venv", see_this_environment=False)
    proc = _bash("scripts/install.sh", "--wheelhouse", house, env={**os.environ, "PYTHON": str(python)})
    assert "cannot import torch and torchvision" in _one_error_line(proc, 2)
    no_house = _bash("scripts/install.sh", "--wheelhouse", tmp_path / "nowhere")
    assert "wheelhouse.txt not found" in _one_error_line(no_house, 2)
