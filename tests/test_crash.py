"""Crash safety: SIGKILL a training run and a data preparation at chosen moments and one random one,
resume each time, and require (a) that nothing ever looks complete that is not and (b) bitwise the
same end result as an uninterrupted run. Also a full disk during a checkpoint and during preparation.

The machinery (the child that arms a fault point and kills itself, the scans, the comparisons) lives in
ettin.reliability.crash_trials, which also runs any number of random trials; see docs/reliability.md.
"""

from __future__ import annotations

import errno
import json
import random
import shutil
import sys
from pathlib import Path

import pytest
import torch

from ettin import faults
from ettin.errors import EttinError
from ettin.reliability import crash_trials as ct


@pytest.fixture(scope="module")
def world(tmp_path_factory, small_tokenizer_dir):
    """Assets, the tiny pair recipe and its uninterrupted run (a child process, like every trial)."""
    root = tmp_path_factory.mktemp("crash")
    assets = ct.make_assets(root / "assets", small_tokenizer_dir)
    recipe = ct.write_recipe(root / "recipe.yaml", assets["tokenizer"], assets["data"])
    proc = ct.run_child(ct.train_args(recipe, root / "reference"), timing=root / "seconds")
    assert proc.returncode == 0, proc.stderr
    seconds = float((root / "seconds").read_text())  # training itself, start-up excluded
    return {"root": root, "assets": assets, "recipe": recipe, "reference": root / "reference", "seconds": seconds}


def test_training_killed_five_times_ends_bitwise_identical(world, tmp_path):
    """Kills: inside the decoder's first checkpoint write (the pair then has no common step and starts
    over), mid-deletion of the orphaned tag, between a full state and its export, inside a data-order
    write, inside the decoder's export of the last tag (the export is then made on resume, in that tag's
    phase); every launch after the first resumes."""
    from ettin import runs

    last = runs.list_tags(world["reference"] / "decoder")[-1].tag  # the reference run's last tag
    assert last.startswith("decay"), last
    chosen = [
        "checkpoint.write:2",
        "checkpoint.remove:1",
        "checkpoint.written:2",
        "io.file_rename[path=*/data_order/part-*]:2",
        f"checkpoint.export[tag={last}]:2",
    ]
    trial = ct.run_train_trial(tmp_path, world["recipe"], world["reference"], chosen)
    assert trial.errors == [], trial
    assert trial.kills == len(chosen), trial  # each moment was reached
    assert trial.problems == [], trial
    assert trial.diffs == [], trial
    # interrupted checkpoint writes (as large as a checkpoint) are cleaned on the next start
    assert [p for p in ct.leftovers(tmp_path / "run") if "/checkpoints/" in p or "/hf/" in p] == []


def test_training_killed_at_a_random_time_ends_bitwise_identical(world, tmp_path):
    seed = random.randrange(10**6)
    at = random.Random(seed).uniform(0.0, 0.9 * world["seconds"])
    trial = ct.run_train_trial(tmp_path, world["recipe"], world["reference"], [f"time:{at:.2f}"], slow=0.2)
    report = f"kill at {at:.2f}s of {world['seconds']:.2f}s (seed {seed}): {trial}"
    assert trial.errors == [] and trial.problems == [] and trial.diffs == [], report


def test_prepare_killed_between_shards_and_inside_the_manifest_write_ends_identical(world, tmp_path):
    reference = world["root"] / "reference-data"
    if not reference.exists():
        proc = ct.run_child(ct.prepare_args(world["assets"], reference))
        assert proc.returncode == 0, proc.stderr
    trial = ct.run_prepare_trial(
        tmp_path, world["assets"], reference, ["prepare.write_shard:3", "io.file_rename[path=*/manifest.json]:1"]
    )
    assert trial.errors == [] and trial.kills == 2, trial
    assert trial.problems == [] and trial.diffs == [], trial


def test_the_checks_can_fail(world, tmp_path):
    """Damage a copy of the reference run the way a bad crash would; the scan and the comparison notice."""
    from safetensors.torch import load_file, save_file

    from ettin.train import checkpoint as ck

    run = tmp_path / "run"
    shutil.copytree(world["reference"], run)
    tags = [t for t in ck.list_tags(run / "decoder") if t.full_state]
    (run / "decoder" / ck.STATE_DIR / tags[0].tag / ck.MODEL_FILE).unlink()
    assert any("listed as a full state but does not load" in p for p in ct.scan_run(run))

    export = run / "encoder" / ck.HF_DIR / tags[-1].tag / "model.safetensors"
    sd = load_file(str(export))
    key = next(iter(sd))
    sd[key] = sd[key].clone()
    sd[key].view(-1)[0] = torch.nextafter(sd[key].view(-1)[0], torch.tensor(1.0))  # one ulp
    save_file(sd, str(export))
    assert f"encoder/hf/{tags[-1].tag}/model.safetensors: bytes differ" in ct.compare_runs(run, world["reference"])


# --------------------------------------------------------------------------- a write that fails


def _disk_full(path) -> OSError:
    return OSError(errno.ENOSPC, "No space left on device", str(path))


def test_disk_full_during_a_checkpoint_keeps_the_previous_one_and_says_so(world, tmp_path):
    from ettin.recipe import load_recipe
    from ettin.train import checkpoint as ck
    from ettin.train.trainer import TrainOptions, train

    def half_a_file_then_full(path, **_):  # the encoder's second checkpoint: half a file, then the disk is full
        (Path(path) / ck.MODEL_FILE).write_bytes(b"\0" * 100)
        raise _disk_full(Path(path) / ck.MODEL_FILE)

    run = tmp_path / "run"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with faults.arm("checkpoint.write", half_a_file_then_full, at=3) as fault, pytest.raises(EttinError) as info:
            train(
                load_recipe(world["recipe"]),
                TrainOptions(out=run, progress=False, tensorboard=False, log=lambda *_: None),
            )
    finally:
        torch.set_num_threads(before)
    assert fault.hits == 3
    message = str(info.value)
    first = [t.tag for t in ck.list_tags(run / "encoder") if t.full_state]
    assert len(first) == 1, first
    assert "could not write checkpoint" in message and "of the encoder (No space left on device)" in message
    assert f"the previous checkpoint {run / 'encoder' / ck.STATE_DIR / first[0]} is intact" in message
    assert ct.scan_run(run) == []
    assert ct.leftovers(run) == []

    proc = ct.run_child(ct.train_args(world["recipe"], run))  # space freed: resume and finish
    assert proc.returncode == 0, proc.stderr
    assert ct.compare_runs(run, world["reference"]) == []


def test_disk_full_during_prepare_is_one_error_line_and_a_rerun_continues(world, tmp_path):
    """Through the console script: the failure is reported, not a traceback; the rerun resumes."""
    reference = world["root"] / "reference-data"
    if not reference.exists():
        assert ct.run_child(ct.prepare_args(world["assets"], reference)).returncode == 0
    out = tmp_path / "data"
    import subprocess

    proc = subprocess.run(  # the fault armed from outside (ETTIN_FAULTS), as any child process can be
        [sys.executable, "-m", "ettin", *ct.prepare_args(world["assets"], out)[0:]],
        capture_output=True,
        text=True,
        env=ct.child_env() | {faults.ENV: "prepare.write_shard:4=enospc"},
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert (
        len(lines) == 1 and lines[0].startswith("error: ") and "tokens-00003.npy: No space left on device" in lines[0]
    )
    assert not (out / "wiki").exists()  # nothing looks prepared
    assert ct.run_child(ct.prepare_args(world["assets"], out)).returncode == 0
    assert ct.compare_data(out, reference) == []
    assert json.loads((out / "wiki" / "manifest.json").read_text())["shards"]


# --------------------------------------------------------------------------- the fault points themselves


def test_fault_points_count_filter_and_disarm():
    seen = []
    with faults.arm("checkpoint.export", lambda tag, path: seen.append((tag, path)), at=2, tag="decay*") as f:
        for tag in ("step1", "decay1", "step2", "decay2", "decay3"):
            faults.point("checkpoint.export", tag=tag, path=f"/x/{tag}")
    assert seen == [("decay2", "/x/decay2")] and f.hits == 3
    faults.point("checkpoint.export", tag="decay9", path="/x")  # disarmed: nothing happens
    assert len(seen) == 1
    with faults.arm("train.member_loss", lambda **kw: float("inf")):
        assert faults.point("train.member_loss", 0.5, member=None, step=1, loss=0.5) == float("inf")
    assert faults.point("train.member_loss", 0.5, member=None, step=1, loss=0.5) == 0.5


def test_fault_specs_are_checked():
    assert faults.parse_entry("io.file_rename[path=*/manifest.json]:2=kill") == (
        "io.file_rename",
        2,
        {"path": "*/manifest.json"},
        "kill",
    )
    with pytest.raises(EttinError, match="unknown fault point 'checkpoint.wirte'"):
        faults.arm_from_spec("checkpoint.wirte:1=kill")
    with pytest.raises(EttinError, match="unknown fault action 'explode'"):
        faults.arm_from_spec("checkpoint.write:1=explode")
    with pytest.raises(EttinError, match="names no action"):
        faults.arm_from_spec("checkpoint.write:1")
    with pytest.raises(EttinError, match="is not NAME"):
        faults.parse_entry("checkpoint.write:0=kill")
    assert not faults._armed
    with faults.arm("io.file_rename", "enospc"), pytest.raises(OSError, match="No space left on device") as info:
        faults.point("io.file_rename", path="/a/b")
    assert info.value.filename == "/a/b"


def test_a_bad_ettin_faults_value_is_one_error_line(tmp_path, small_tokenizer_dir):
    import subprocess

    (tmp_path / "a.txt").write_text("to be or not to be " * 40)
    args = ["data", "prepare", "--source", f"text:{tmp_path / 'a.txt'}", "--tokenizer", str(small_tokenizer_dir)]
    proc = subprocess.run(
        [sys.executable, "-m", "ettin", *args, "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=ct.child_env() | {faults.ENV: "prepare.write_shard:1=explode"},
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: field 'ETTIN_FAULTS': unknown fault action 'explode' (use kill, enospc, interrupt or sleep:SECONDS)"
    ]
