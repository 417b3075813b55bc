"""Checkpoint files: atomic writes, tags, revision lookup, retention."""

from __future__ import annotations

import json

import pytest
import torch

from ettin.config import config_for_size
from ettin.errors import EttinError
from ettin.model import EttinModel
from ettin.recipe import OptimizerSection
from ettin.train import checkpoint as ck
from ettin.train.optim import build_optimizer


def _state(step: int, phase_step: int, tokens: int) -> dict:
    return {"step": step, "tokens": tokens, "phase": 0, "phase_name": "pretrain", "phase_step": phase_step}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return EttinModel(config_for_size("tiny", "encoder", vocab_size=256))


def _write(arch_dir, model, tag, step, *, hf=True):
    opt = build_optimizer(model, OptimizerSection())
    info = _state(step, step, step * 100)
    rng = torch.get_rng_state()
    ck.write_checkpoint(
        arch_dir,
        tag,
        model_state=model.state_dict(),
        optimizer_state=opt.state_dict(),
        trainer_state=info,
        rng_tensors={"torch_cpu": rng},
    )
    if hf:
        ck.write_hf_export(arch_dir, tag, model, info)
    return rng


def test_full_state_round_trip_restores_tied_weights(tmp_path, model):
    rng = _write(tmp_path, model, "step3", 3, hf=False)
    state = ck.load_checkpoint(tmp_path / "checkpoints" / "step3")
    assert state.trainer["step"] == 3
    fresh = EttinModel(config_for_size("tiny", "encoder", vocab_size=256))
    fresh.load_state_dict(state.model)
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    assert fresh.decoder.weight.data_ptr() == fresh.model.embeddings.tok_embeddings.weight.data_ptr()
    assert torch.equal(state.rng["torch_cpu"], rng)


def test_tags_listing_and_revision_resolution(tmp_path, model):
    for step in (2, 4, 6):
        _write(tmp_path, model, f"step{step}", step)
    tags = ck.list_tags(tmp_path)
    assert [t.tag for t in tags] == ["step2", "step4", "step6"]
    assert [t.tokens for t in tags] == [200, 400, 600] and all(t.hf and t.full_state for t in tags)
    assert ck.resolve_revision(tmp_path, "step4") == tmp_path / "hf" / "step4"
    assert ck.resolve_revision(tmp_path) == tmp_path / "hf" / "step6"
    with pytest.raises(EttinError, match=r"no revision 'ext9'.*available: step2, step4, step6"):
        ck.resolve_revision(tmp_path, "ext9")
    loaded = __import__("ettin").load(tmp_path, revision="step4")
    assert torch.equal(loaded.model.final_norm.weight, model.model.final_norm.weight)


def test_resolve_revision_refuses_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "encoder" / "hf").mkdir(parents=True)
    with pytest.raises(EttinError, match="give the model's folder"):
        ck.resolve_revision(tmp_path, "step1")


def test_retention_keeps_last_full_states_and_every_export(tmp_path, model):
    for step in (1, 2, 3, 4):
        _write(tmp_path, model, f"step{step}", step)
    assert ck.apply_retention(tmp_path, 2) == ["step1", "step2"]
    tags = {t.tag: t for t in ck.list_tags(tmp_path)}
    assert [t for t in tags if tags[t].full_state] == ["step3", "step4"]
    assert all(t.hf for t in tags.values()) and len(tags) == 4
    assert ck.latest_full_state(tmp_path) == tmp_path / "checkpoints" / "step4"


def test_failed_write_leaves_previous_checkpoint_intact(tmp_path, model, monkeypatch):
    _write(tmp_path, model, "step1", 1, hf=False)
    calls = {"n": 0}
    real_save = torch.save

    def failing_save(obj, path, *a, **kw):  # the model file is written, then the disk "fills up"
        calls["n"] += 1
        real_save(obj, path, *a, **kw)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        _write(tmp_path, model, "step2", 2, hf=False)
    monkeypatch.undo()
    assert calls["n"] == 1
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step1"]
    assert ck.latest_full_state(tmp_path).name == "step1"
    assert ck.load_checkpoint(tmp_path / "checkpoints" / "step1").trainer["step"] == 1


def test_incomplete_checkpoint_is_reported(tmp_path, model):
    _write(tmp_path, model, "step1", 1, hf=False)
    (tmp_path / "checkpoints" / "step1" / "optimizer.pt").unlink()
    with pytest.raises(EttinError, match="incomplete checkpoint"):
        ck.load_checkpoint(tmp_path / "checkpoints" / "step1")


def test_optimizer_state_is_loadable_with_weights_only(tmp_path, model):
    _write(tmp_path, model, "step1", 1, hf=False)
    obj = torch.load(tmp_path / "checkpoints" / "step1" / "optimizer.pt", weights_only=True)
    assert "param_groups" in obj
    json.loads((tmp_path / "checkpoints" / "step1" / "trainer_state.json").read_text())
