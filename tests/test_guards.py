"""Numerical guards: a NaN or infinite loss stops training at that step, says which step and model,
names the last good checkpoint, and writes nothing for the step; `--resume` then continues.

Policy and exit codes: docs/reliability.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from reliability_support import crash_trials, run_in_process

from ettin.train import checkpoint as ck
from ettin.train.metrics import read_metrics
from ettin.train.trainer import NonFiniteLoss, Trainer, TrainOptions, train

BAD_STEP = 5


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, small_tokenizer_dir) -> Path:
    ct = crash_trials()
    root = tmp_path_factory.mktemp("guards")
    assets = ct.make_assets(root / "assets", small_tokenizer_dir)
    return ct.write_recipe(root / "recipe.yaml", assets["tokenizer"], assets["data"])


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def poison(monkeypatch, arch: str, how: str) -> None:
    """At global step BAD_STEP, make `arch`'s loss non-finite: a NaN weight, or an infinite loss value."""
    real = Trainer._member_step

    def member_step(self, m, samples, phase, lr):
        if m.arch == arch and self.step + 1 == BAD_STEP:
            if how == "nan-weight":
                with torch.no_grad():
                    m.model.get_parameter("head.norm.weight")[0] = float("nan")
            else:
                real(self, m, samples, phase, lr)
                return float("inf")
        return real(self, m, samples, phase, lr)

    monkeypatch.setattr(Trainer, "_member_step", member_step)


def assert_nothing_written_for_the_bad_step(run: Path) -> None:
    for arch in ("encoder", "decoder"):
        assert all(t.step < BAD_STEP for t in ck.list_tags(run / arch)), ck.list_tags(run / arch)
        assert all(r["step"] < BAD_STEP for r in read_metrics(run / arch))


def test_nan_loss_stops_the_cli_with_exit_3_naming_step_model_and_checkpoint(recipe, tmp_path, monkeypatch):
    poison(monkeypatch, "decoder", "nan-weight")
    run = tmp_path / "run"
    code, _, err = run_in_process(["train", str(recipe), "--out", str(run), "--no-progress"])
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 3, err
    assert len(lines) == 1 and "Traceback" not in err, err
    last = ck.latest_full_state(run / "decoder")
    assert last is not None and ck.load_checkpoint(last).trainer["step"] < BAD_STEP
    assert lines[0].startswith(f"error: stopped at step {BAD_STEP} (pretrain): decoder loss is nan; "
                               f"last good checkpoint: {last}"), lines[0]
    assert "encoder loss" not in lines[0]  # the encoder's loss was finite
    assert_nothing_written_for_the_bad_step(run)

    monkeypatch.undo()  # the cause is gone (in real life: a lower learning rate): resume to the end
    code, _, err = run_in_process(["train", "--resume", "--out", str(run), "--no-progress"])
    assert code == 0, err
    assert [t.step for t in ck.list_tags(run / "decoder")][-1] > BAD_STEP


def test_infinite_loss_stops_the_library_call(recipe, tmp_path, monkeypatch):
    from ettin.recipe import load_recipe

    poison(monkeypatch, "encoder", "inf-loss")
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLoss, match=rf"stopped at step {BAD_STEP} \(pretrain\): encoder loss is inf") as info:
        train(load_recipe(recipe), TrainOptions(out=run, progress=False, tensorboard=False, log=lambda *_: None))
    assert info.value.exit_code == 3
    assert_nothing_written_for_the_bad_step(run)
