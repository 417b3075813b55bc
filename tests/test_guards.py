"""Numerical guards: a NaN or infinite loss stops training at that step, says which step and model,
names the last good checkpoint, and writes nothing for the step; `--resume` then continues.

Policy and exit codes: docs/reliability.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ettin import faults
from ettin.reliability import crash_trials as ct
from ettin.train import checkpoint as ck
from ettin.train.metrics import read_metrics
from ettin.train.trainer import NonFiniteLoss, Trainer, TrainOptions, train
from support import run_in_process

BAD_STEP = 5


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, small_tokenizer_dir) -> Path:
    root = tmp_path_factory.mktemp("guards")
    assets = ct.make_assets(root / "assets", small_tokenizer_dir)
    return ct.write_recipe(root / "recipe.yaml", assets["tokenizer"], assets["data"])


pytestmark = pytest.mark.usefixtures("one_thread")


def poison(arch: str, how: str):
    """At global step BAD_STEP, make `arch`'s loss non-finite: a NaN weight before the step, or an infinite
    loss value after it. A context manager (the armed fault point)."""
    if how == "nan-weight":

        def nan_weight(member, step):
            if member.arch == arch and step == BAD_STEP:
                with torch.no_grad():
                    member.model.get_parameter("head.norm.weight")[0] = float("nan")

        return faults.arm("train.member_step", nan_weight)
    return faults.arm(
        "train.member_loss",
        lambda member, step, loss: float("inf") if member.arch == arch and step == BAD_STEP else None,
    )


def assert_nothing_written_for_the_bad_step(run: Path) -> None:
    for arch in ("encoder", "decoder"):
        assert all(t.step < BAD_STEP for t in ck.list_tags(run / arch)), ck.list_tags(run / arch)
        assert all(r["step"] < BAD_STEP for r in read_metrics(run / arch))


def test_nan_loss_stops_the_cli_with_exit_3_naming_step_model_and_checkpoint(recipe, tmp_path):
    run = tmp_path / "run"
    with poison("decoder", "nan-weight"):
        code, _, err = run_in_process(["train", str(recipe), "--out", str(run), "--no-progress"])
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 3, err
    assert len(lines) == 1 and "Traceback" not in err, err
    last = ck.latest_full_state(run / "decoder")
    assert last is not None and ck.load_checkpoint(last).trainer.step == BAD_STEP - 1
    assert lines[0].startswith(
        f"error: stopped at step {BAD_STEP} (pretrain): decoder loss is nan; last good checkpoint: {last}"
    ), lines[0]
    assert "encoder loss" not in lines[0]  # the encoder's loss was finite
    assert_nothing_written_for_the_bad_step(run)

    # the cause is gone (in real life: a lower learning rate): resume to the end
    code, _, err = run_in_process(["train", "--resume", "--out", str(run), "--no-progress"])
    assert code == 0, err
    assert [t.step for t in ck.list_tags(run / "decoder")][-1] > BAD_STEP


def test_infinite_loss_stops_the_library_call(recipe, tmp_path):
    from ettin.recipe import load_recipe

    run = tmp_path / "run"
    with (
        poison("encoder", "inf-loss"),
        pytest.raises(NonFiniteLoss, match=rf"stopped at step {BAD_STEP} \(pretrain\): encoder loss is inf") as info,
    ):
        train(load_recipe(recipe), TrainOptions(out=run, progress=False, tensorboard=False, log=lambda *_: None))
    assert info.value.exit_code == 3
    assert_nothing_written_for_the_bad_step(run)


# ------------------------------------------------------------------ exploding gradients (guards)


def test_exploding_gradient_stops_after_max_skips_and_writes_nothing_for_the_step(recipe, tmp_path):
    """Every gradient exceeds a tiny limit: the first step's update is skipped, the second stops the run."""
    run = tmp_path / "run"
    code, _, err = run_in_process(
        [
            "train",
            str(recipe),
            "--out",
            str(run),
            "--no-progress",
            "--set",
            "guards.max_grad_norm=1e-9",
            "--set",
            "guards.max_skips=1",
        ]
    )
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 3, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: stopped at step 2 (pretrain): the encoder's update was skipped 2 time(s)"), (
        lines[0]
    )
    assert "exceeds guards.max_grad_norm 1e-09" in lines[0] and "last good checkpoint: none yet" in lines[0]
    assert ck.list_tags(run / "encoder") == []


def test_skipped_updates_leave_weights_alone_and_are_logged(recipe, tmp_path):
    from ettin.recipe import load_recipe

    r = load_recipe(recipe, ["guards.max_grad_norm=1e-9", "guards.max_skips=1000", "arch=decoder"])
    result = train(r, TrainOptions(out=tmp_path / "run", progress=False, log=lambda s: None))
    assert result.finished
    rows = [x for x in read_metrics(tmp_path / "run" / "decoder") if x.get("kind") == "train"]
    assert rows and all(x["skipped"] and x["grad_norm"] > 1e-9 for x in rows)
    init = Trainer(load_recipe(recipe, ["arch=decoder"]), TrainOptions(out=tmp_path / "fresh", progress=False))
    init.setup()
    saved = ck.load_checkpoint(ck.latest_full_state(tmp_path / "run" / "decoder"))
    for name, p in saved.model.items():
        assert torch.equal(p, init.members[0].model.state_dict()[name]), name  # no update was applied


def test_default_guards_let_a_normal_run_through_and_log_the_norm(recipe, tmp_path):
    from ettin.recipe import load_recipe

    r = load_recipe(recipe, ["arch=encoder"])
    assert r.guards.max_grad_norm is None and r.guards.max_skips == 0
    train(r, TrainOptions(out=tmp_path / "run", progress=False, log=lambda s: None))
    rows = [x for x in read_metrics(tmp_path / "run" / "encoder") if x.get("kind") == "train"]
    assert rows and all(x["skipped"] is None and 0 < x["grad_norm"] < float("inf") for x in rows)


def test_non_finite_weights_are_never_checkpointed(recipe, tmp_path):
    """A finite loss whose update leaves NaN weights: the checkpoint after it is refused, not written."""
    from ettin.recipe import load_recipe

    def nan_after_update(member, step, loss):
        if member.arch == "encoder" and step == BAD_STEP:
            with torch.no_grad():
                member.model.get_parameter("head.norm.weight")[0] = float("nan")

    r = load_recipe(recipe, ["arch=encoder", "checkpoint.every_tokens=1"])  # a checkpoint after every step
    with (
        faults.arm("train.member_loss", nan_after_update),
        pytest.raises(NonFiniteLoss, match=f"step {BAD_STEP} .*weights hold NaN or inf, so checkpoint was not written"),
    ):
        train(r, TrainOptions(out=tmp_path / "run", progress=False, log=lambda s: None))
    last = ck.latest_full_state(tmp_path / "run" / "encoder")
    assert last is not None and ck.load_checkpoint(last).trainer.step == BAD_STEP - 1
    assert all(torch.isfinite(v).all() for v in ck.load_checkpoint(last).model.values())
