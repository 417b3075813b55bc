"""The folder lock (ettin.lock): one ettin process per run folder or data folder, with real processes."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ettin.errors import EttinError
from ettin.lock import LOCK_FILE, FolderLock
from support import assert_one_line_error

ETTIN_BIN = Path(sys.executable).with_name("ettin")


def test_a_second_lock_is_refused_naming_the_holder(tmp_path):
    with FolderLock(tmp_path, what="run folder") as held:
        assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())
        with pytest.raises(EttinError, match=rf"this run folder is in use by process {os.getpid()}"):
            FolderLock(tmp_path, what="run folder").acquire()
        assert held.held
    assert not (tmp_path / LOCK_FILE).exists()  # released: removed
    with FolderLock(tmp_path) as again:
        assert again.took_over is None


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path):
    code = (
        "import sys, time; from ettin.lock import FolderLock; "
        f"FolderLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(EttinError, match=rf"in use by process {proc.pid}"):
            FolderLock(tmp_path).acquire()
    finally:
        proc.kill()
        proc.wait()
    with FolderLock(tmp_path) as lock:
        assert lock.took_over == proc.pid


class _Holder:
    """Another process holding a folder's lock until the `with` block ends (then SIGKILLed)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __enter__(self) -> subprocess.Popen:
        code = (
            "import time; from ettin.lock import FolderLock; "
            f"FolderLock({str(self.folder)!r}).acquire(); print('held', flush=True); time.sleep(120)"
        )
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "held"
        return self.proc

    def __exit__(self, *exc) -> None:
        self.proc.kill()
        self.proc.wait()


def test_train_and_prepare_refuse_a_folder_another_process_holds(tmp_path, small_tokenizer_dir):
    """In-process commands against a lock held by a real second process: refused, nothing written."""
    from support import run_in_process

    run = tmp_path / "run"
    run.mkdir()
    text = yaml.safe_dump(
        {
            "model": {"size": "tiny"},
            "tokenizer": str(small_tokenizer_dir),
            "data_dir": "data",
            "phases": [{"tokens": 100, "data": {"mixture": {"wiki": 1}}}],
        }
    )
    (run / "recipe.yaml").write_text(text, encoding="utf-8")
    with _Holder(run) as holder:
        code, _, err = run_in_process(["train", "--out", run, "--resume", "--force", "--set", "seed=7"])
        assert_one_line_error(code, err, f"{run}: this run folder is in use by process {holder.pid}")
    assert (run / "recipe.yaml").read_text() == text
    (tmp_path / "c.txt").write_text("a line\n" * 10, encoding="utf-8")
    data = tmp_path / "d"
    data.mkdir()
    with _Holder(data) as holder:
        code, _, err = run_in_process(
            [
                "data",
                "prepare",
                "--source",
                f"c=text:{tmp_path / 'c.txt'}",
                "--tokenizer",
                small_tokenizer_dir,
                "--out",
                data,
            ]
        )
        assert_one_line_error(code, err, f"{data}: this data folder is in use by process {holder.pid}")
    assert sorted(p.name for p in data.iterdir()) == [LOCK_FILE]  # the killed holder's, with its PID


def _ettin(args: list[str], cwd: Path, faults: str | None = None, **kw):
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1", OMP_NUM_THREADS="1")
    env.pop("ETTIN_FAULTS", None)
    if faults:
        env["ETTIN_FAULTS"] = faults
    return subprocess.Popen(
        [str(ETTIN_BIN), *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw
    )


def _wait_for_holder(folder: Path, pid: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    lock = folder / LOCK_FILE
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if lock.read_text().strip() == str(pid):
                return
        except FileNotFoundError:
            pass
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before taking the lock: {proc.stderr.read()}")
        time.sleep(0.1)
    raise AssertionError(f"{pid} never took the lock of {folder}")


@pytest.fixture
def tiny_recipe(tmp_path, small_tokenizer_dir) -> Path:
    from ettin.data.prepare import prepare
    from ettin.data.sources import builtin_texts

    with open(tmp_path / "wiki.jsonl", "w", encoding="utf-8") as f:
        for text in itertools.islice(builtin_texts("wiki"), 40):
            f.write(json.dumps({"text": text}) + "\n")
    prepare([f"wiki=jsonl:{tmp_path / 'wiki.jsonl'}"], small_tokenizer_dir, tmp_path / "data", shard_tokens=3000)
    recipe = {
        "model": {"size": "tiny", "max_position_embeddings": 64},
        "arch": "encoder",
        "tokenizer": str(small_tokenizer_dir),
        "data_dir": str(tmp_path / "data"),
        "precision": "fp32",
        "micro_batch_size": 4,
        "checkpoint": {"every_tokens": 128},
        "phases": [{"tokens": 400, "seq_len": 32, "batch_size": 4, "data": {"mixture": {"wiki": 1}}}],
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return tmp_path / "r.yaml"


@pytest.mark.slow
def test_two_trainings_on_one_run_folder(tmp_path, tiny_recipe):
    """The second `ettin train` on a run in progress is refused, naming the first; after the first is
    killed, a resume takes its lock over and finishes."""
    first = _ettin(
        ["train", str(tiny_recipe), "--out", "run", "--no-progress", "--threads", "1"],
        tmp_path,
        "train.step:3=sleep:120",
    )
    try:
        _wait_for_holder(tmp_path / "run", first.pid, first)
        while not (tmp_path / "run" / "recipe.yaml").is_file():  # written just after the lock is taken
            time.sleep(0.05)
        recipe_before = (tmp_path / "run" / "recipe.yaml").read_bytes()
        second = _ettin(["train", "--out", "run", "--resume", "--force", "--set", "seed=7"], tmp_path)
        _, err = second.communicate(timeout=300)
        assert_one_line_error(second.returncode, err, "run", f"in use by process {first.pid}")
        assert (tmp_path / "run" / "recipe.yaml").read_bytes() == recipe_before
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    third = _ettin(["train", "--out", "run", "--resume", "--no-progress", "--threads", "1"], tmp_path)
    out, err = third.communicate(timeout=300)
    assert third.returncode == 0, err
    assert f"took over the lock of process {first.pid}" in out
    assert "finished at step" in out
    assert not (tmp_path / "run" / LOCK_FILE).exists()


@pytest.mark.slow
def test_two_prepares_into_one_folder(tmp_path, small_tokenizer_dir):
    (tmp_path / "c.txt").write_text("One line of text for the shards.\n" * 400, encoding="utf-8")
    args = ["data", "prepare", "--source", "c=text:c.txt", "--tokenizer", str(small_tokenizer_dir), "--out", "d"]
    first = _ettin([*args, "--shard-tokens", "500"], tmp_path, "prepare.write_shard:1=sleep:120")
    try:
        _wait_for_holder(tmp_path / "d", first.pid, first)
        second = _ettin(args, tmp_path)
        _, err = second.communicate(timeout=120)
        assert_one_line_error(second.returncode, err, "d: ", f"data folder is in use by process {first.pid}")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    third = _ettin([*args, "--shard-tokens", "500"], tmp_path)
    _, err = third.communicate(timeout=120)
    assert third.returncode == 0, err
    assert (tmp_path / "d" / "c" / "manifest.json").is_file()
