"""Crash safety: SIGKILL a training run and a data preparation at chosen moments and one random one,
resume each time, and require (a) that nothing ever looks complete that is not and (b) bitwise the
same end result as an uninterrupted run. Also a full disk during a checkpoint and during preparation.

The machinery (the child that arms a fault and kills itself, the scans, the comparisons) lives in
scripts/crash_trials.py, which also runs any number of random trials; see docs/reliability.md.
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

from ettin.errors import EttinError
from support import crash_trials

ct = crash_trials()


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
    chosen = ["state-files:2", "rmtree:1", "after-state:2", "order-part:2", "hf-files@decay3:2"]
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
    trial = ct.run_prepare_trial(tmp_path, world["assets"], reference, ["prepare-shard:3", "prepare-manifest:1"])
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


def test_disk_full_during_a_checkpoint_keeps_the_previous_one_and_says_so(world, tmp_path, monkeypatch):
    from ettin.recipe import load_recipe
    from ettin.train import checkpoint as ck
    from ettin.train.trainer import TrainOptions, train

    real = ck.save_weights
    calls = {"n": 0}

    def failing_save(state_dict, path):
        calls["n"] += 1
        if calls["n"] == 3:  # the encoder's second checkpoint: half a file, then the disk is full
            Path(path).write_bytes(b"\0" * 100)
            raise _disk_full(path)
        real(state_dict, path)

    monkeypatch.setattr(ck, "save_weights", failing_save)
    run = tmp_path / "run"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(EttinError) as info:
            train(
                load_recipe(world["recipe"]),
                TrainOptions(out=run, progress=False, tensorboard=False, log=lambda *_: None),
            )
    finally:
        torch.set_num_threads(before)
    message = str(info.value)
    first = [t.tag for t in ck.list_tags(run / "encoder") if t.full_state]
    assert len(first) == 1, first
    assert "could not write checkpoint" in message and "of the encoder (No space left on device)" in message
    assert f"the previous checkpoint {run / 'encoder' / ck.STATE_DIR / first[0]} is intact" in message
    assert ct.scan_run(run) == []
    assert ct.leftovers(run) == []

    monkeypatch.setattr(ck, "save_weights", real)  # space freed: resume and finish
    proc = ct.run_child(ct.train_args(world["recipe"], run))
    assert proc.returncode == 0, proc.stderr
    assert ct.compare_runs(run, world["reference"]) == []


def test_disk_full_during_prepare_is_one_error_line_and_a_rerun_continues(world, tmp_path):
    """Through the console script: the failure is reported, not a traceback; the rerun resumes."""
    reference = world["root"] / "reference-data"
    if not reference.exists():
        assert ct.run_child(ct.prepare_args(world["assets"], reference)).returncode == 0
    out = tmp_path / "data"
    script = tmp_path / "full_disk.py"
    script.write_text(
        "import errno, sys\n"
        "import ettin.data.prepare as prep\n"
        "real, calls = prep._write_shard, [0]\n"
        "def write_shard(staging, index, *a, **kw):\n"
        "    calls[0] += 1\n"
        "    if calls[0] == 4:\n"
        "        raise OSError(errno.ENOSPC, 'No space left on device', str(staging / f'tokens-{index:05d}.npy'))\n"
        "    return real(staging, index, *a, **kw)\n"
        "prep._write_shard = write_shard\n"
        "from ettin.cli import main\n"
        "sys.argv = ['ettin', *sys.argv[1:]]\n"
        "main()\n"
    )
    import subprocess

    proc = subprocess.run(
        [sys.executable, str(script), *ct.prepare_args(world["assets"], out)],
        capture_output=True,
        text=True,
        env=ct.child_env(),
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
