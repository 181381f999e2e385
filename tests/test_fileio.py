"""Atomic writes: whole files only, and the permissions a plain write would give."""

from __future__ import annotations

import os
import stat

import pytest

from mocoeval.runtime.fileio import atomic_write, atomic_write_json, atomic_write_text


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def test_new_file_gets_the_umask_mode_not_mkstemps_0600(tmp_path, umask_027):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    path = atomic_write_text(tmp_path / "table.md", "x")
    assert _mode(path) == _mode(plain) == 0o640
    assert atomic_write_json(tmp_path / "r.json", {"a": 1}).read_text() == '{\n  "a": 1\n}\n'
    assert _mode(tmp_path / "r.json") == 0o640


def test_existing_file_keeps_its_mode(tmp_path, umask_027):
    path = tmp_path / "ckpt.pth"
    path.write_bytes(b"old")
    os.chmod(path, 0o604)
    atomic_write(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new" and _mode(path) == 0o604


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old")

    def boom(f):
        f.write("half")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(path, boom, "w")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
