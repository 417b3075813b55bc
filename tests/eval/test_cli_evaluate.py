"""`ettin eval` and `ettin compare` through the real entry point (ettin.cli.main)."""

import json
import subprocess
import sys

import pytest

from ettin.eval import tasks as T
from support import assert_one_line_error, run_in_process

pytestmark = pytest.mark.usefixtures("one_thread")


def test_unknown_task_lists_the_available_ones(tiny_run, tmp_path):
    code, _, err = run_in_process(
        ["eval", str(tiny_run / "encoder"), "--tasks", "arc_easy,nope", "--out", str(tmp_path)]
    )
    assert_one_line_error(code, err, "unknown task 'nope'", "arc_challenge", "lambada", "quick")


def test_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    code, _, err = run_in_process(["eval", str(tmp_path), "--out", str(tmp_path / "o")])
    assert_one_line_error(code, err, "config.json is missing")
    code, _, err = run_in_process(["eval", str(tmp_path / "notes.txt"), "--out", str(tmp_path / "o")])
    assert_one_line_error(code, err, "is a file")


def test_missing_revision_lists_the_tags(tiny_run, tmp_path):
    code, _, err = run_in_process(["eval", str(tiny_run / "decoder"), "--revision", "decay9", "--out", str(tmp_path)])
    assert_one_line_error(code, err, "no revision 'decay9'", "step1, step2")


def test_the_pair_folder_is_pointed_to_its_members(tiny_run, tmp_path):
    code, _, err = run_in_process(["eval", str(tiny_run), "--out", str(tmp_path)])
    assert_one_line_error(code, err, "run of a pair", "encoder", "ettin compare")


def test_decoder_cannot_pool_cls(tiny_run, tmp_path):
    code, _, err = run_in_process(["eval", str(tiny_run / "decoder"), "--pooling", "cls", "--out", str(tmp_path)])
    assert_one_line_error(code, err, "decoder cannot use CLS pooling", "'last'")


def test_compare_needs_a_pair(tiny_run, tmp_path):
    code, _, err = run_in_process(["compare", str(tiny_run / "encoder"), "--out", str(tmp_path)])
    assert_one_line_error(code, err, "single model")


def test_eval_runs_and_a_failed_task_exits_nonzero(tiny_run, tmp_path, monkeypatch):
    code, out, _ = run_in_process(
        [
            "eval",
            str(tiny_run / "decoder"),
            "--tasks",
            "lambada",
            "--limit",
            "3",
            "--out",
            str(tmp_path / "ok"),
            "--no-progress",
        ]
    )
    assert code == 0 and "wrote" in out and (tmp_path / "ok" / "lambada.json").is_file()

    def broken():
        raise RuntimeError("boom")

    monkeypatch.setitem(T.TASKS, "arc_easy", T.dataclasses.replace(T.TASKS["arc_easy"], loader=broken))
    T._cached_load.cache_clear()
    try:
        code, out, _ = run_in_process(
            [
                "eval",
                str(tiny_run / "decoder"),
                "--tasks",
                "arc_easy,lambada",
                "--limit",
                "3",
                "--out",
                str(tmp_path / "bad"),
                "--no-progress",
            ]
        )
    finally:
        T._cached_load.cache_clear()
    assert code == 1 and "1 task(s) failed" in out and "arc_easy" in out
    saved = json.loads((tmp_path / "bad" / "results.json").read_text())
    assert saved["failed"] == ["arc_easy"] and saved["tasks"]["lambada"]["status"] == "ok"


def test_real_process_exit_code_and_message(tmp_path):
    """One check through a real `ettin` process, as a user runs it."""
    proc = subprocess.run(
        [sys.executable, "-m", "ettin", "eval", str(tmp_path / "missing"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no such model folder" in proc.stderr


def test_bad_device(tiny_run, tmp_path):
    import torch

    code, _, err = run_in_process(["eval", str(tiny_run / "encoder"), "--device", "warp9", "--out", str(tmp_path)])
    assert_one_line_error(code, err, "unknown device 'warp9'")
    if not torch.cuda.is_available():
        code, _, err = run_in_process(["eval", str(tiny_run / "encoder"), "--device", "cuda", "--out", str(tmp_path)])
        assert_one_line_error(code, err, "no CUDA GPU", "--device cpu")


def test_compare_report_ends_with_the_line_that_reproduces_it(tiny_run, tmp_path):
    out = tmp_path / "cmp"
    args = ["--tasks", "lambada", "--limit", "3", "--no-dynamics", "--no-find-cross"]
    code, _, err = run_in_process(["compare", str(tiny_run), "--out", str(out), *args, "--no-progress"])
    assert code == 0, err
    line = f"ettin compare {tiny_run} --out {out} --suite quick --seed 0 " + " ".join(args)
    assert (out / "report.md").read_text().rstrip().endswith(f"`{line}`")
    assert json.loads((out / "results.json").read_text())["command"] == line
