"""Atomic writes: all or nothing, and finished files readable like any other."""

import os
import stat

import pytest

from ettin.io import atomic_dir, atomic_path, atomic_write_json, atomic_write_text


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "state.json"
    atomic_write_json(target, {"step": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"step": 2, "trunc')
            raise RuntimeError("disk full")
    assert target.read_text().strip().startswith('{\n  "step": 1')
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_failed_directory_build_leaves_nothing_that_looks_finished(tmp_path):
    target = tmp_path / "ckpt"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "model.safetensors").write_bytes(b"half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_directory_overwrite_only_after_the_new_one_is_complete(tmp_path):
    target = tmp_path / "export"
    with atomic_dir(target) as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(FileExistsError):
        with atomic_dir(target):
            pass
    with pytest.raises(RuntimeError):
        with atomic_dir(target, overwrite=True) as tmp:
            (tmp / "v").write_text("2")
            raise RuntimeError("failed")
    assert (target / "v").read_text() == "1"
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / "v").write_text("2")
    assert (target / "v").read_text() == "2"


def test_finished_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "f", "x")
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "inner").write_text("y")
            os.chmod(tmp / "inner", 0o600)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "f") == 0o644
    assert _mode(tmp_path / "d") == 0o755
    assert _mode(tmp_path / "d" / "inner") == 0o644
