"""Checkpoint files: atomic writes, tags, revision lookup, retention, TrainState, damage vs. other errors."""

from __future__ import annotations

import json

import pytest
import torch

from ettin import faults
from ettin.config import config_for_size
from ettin.errors import EttinError
from ettin.model import EttinModel
from ettin.recipe import OptimizerSection
from ettin.train import checkpoint as ck
from ettin.train.optim import build_optimizer
from ettin.train.state import RankRng, TrainState

# every key trainer_state.json has held since version 1 (runs written before must keep resuming)
STATE_KEYS = [
    "version",
    "arch",
    "objective",
    "tag",
    "step",
    "tokens",
    "phase",
    "phase_name",
    "phase_step",
    "phase_tokens",
    "loss",
    "data",
    "order_chain",
    "skips",
    "world_size",
    "strategy",
    "tokenizer_fingerprint",
    "recipe_sha256",
    "rng",
    "time",
]


def _state(step: int, tag: str = "step1") -> TrainState:
    return TrainState(
        arch="encoder",
        objective="mlm",
        tag=tag,
        step=step,
        tokens=step * 100,
        phase=0,
        phase_name="pretrain",
        phase_step=step,
        phase_tokens=step * 100,
        loss=2.5,
        data={"stream": {"version": 1}, "tokens_seen": step * 100},
        order_chain="ab" * 16,
        world_size=1,
        strategy="none",
        tokenizer_fingerprint="f" * 16,
        recipe_sha256="0" * 64,
        time=1.0,
        skips=0,
        rng={0: RankRng.capture()},
    )


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return EttinModel(config_for_size("tiny", "encoder", vocab_size=256))


def _write(arch_dir, model, tag, step, *, hf=True):
    opt = build_optimizer(model, OptimizerSection())
    state = _state(step, tag)
    ck.write_checkpoint(arch_dir, tag, model_state=model.state_dict(), optimizer_state=opt.state_dict(), state=state)
    if hf:
        ck.write_hf_export(arch_dir, tag, model, state.tag_info())
    return state.rng[0].tensors["torch_cpu"]


def test_full_state_round_trip_restores_tied_weights(tmp_path, model):
    rng = _write(tmp_path, model, "step3", 3, hf=False)
    state = ck.load_checkpoint(tmp_path / "checkpoints" / "step3")
    assert state.trainer.step == 3
    fresh = EttinModel(config_for_size("tiny", "encoder", vocab_size=256))
    fresh.load_state_dict(state.model)
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    assert fresh.decoder.weight.data_ptr() == fresh.model.embeddings.tok_embeddings.weight.data_ptr()
    assert torch.equal(state.trainer.rng[0].tensors["torch_cpu"], rng)


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


def test_failed_write_leaves_previous_checkpoint_intact(tmp_path, model):
    _write(tmp_path, model, "step1", 1, hf=False)
    with faults.arm("checkpoint.write", "enospc") as fault, pytest.raises(OSError, match="No space left"):
        _write(tmp_path, model, "step2", 2, hf=False)  # every file written, then the disk "fills up"
    assert fault.hits == 1
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step1"]
    assert ck.latest_full_state(tmp_path).name == "step1"
    assert ck.load_checkpoint(tmp_path / "checkpoints" / "step1").trainer.step == 1


def test_incomplete_checkpoint_is_reported(tmp_path, model):
    _write(tmp_path, model, "step1", 1, hf=False)
    (tmp_path / "checkpoints" / "step1" / "optimizer.pt").unlink()
    with pytest.raises(EttinError, match="incomplete checkpoint") as info:
        ck.load_checkpoint(tmp_path / "checkpoints" / "step1")
    assert info.value.fix == ck.DAMAGED_FIX


def test_optimizer_state_is_loadable_with_weights_only(tmp_path, model):
    _write(tmp_path, model, "step1", 1, hf=False)
    obj = torch.load(tmp_path / "checkpoints" / "step1" / "optimizer.pt", weights_only=True)
    assert "param_groups" in obj
    json.loads((tmp_path / "checkpoints" / "step1" / "trainer_state.json").read_text())


# ------------------------------------------------------------------ TrainState


def test_train_state_keeps_the_file_format_and_round_trips():
    state = _state(4)
    raw = json.loads(json.dumps(state.to_dict()))
    assert list(raw) == STATE_KEYS
    back = TrainState.from_dict(raw, state.rng_tensors())
    assert back.to_dict() == raw
    assert torch.equal(back.rng[0].tensors["numpy_keys"], state.rng[0].tensors["numpy_keys"])
    del raw["skips"]  # written by runs from before the guards
    assert TrainState.from_dict(raw).skips == 0


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (("step", None), "step", "missing"),
        (("step", "3"), "step", "must be a non-negative integer, not '3'"),
        (("phase", True), "phase", "must be a non-negative integer"),
        (("data", []), "data", "must be a JSON object"),
        (("rng", {"rank0": {"numpy": [1]}}), "rng.rank0", "must map rankN"),
    ],
)
def test_train_state_refuses_a_missing_or_mistyped_field_naming_file_and_field(tmp_path, change, field, message):
    raw = _state(4).to_dict()
    key, value = change
    if value is None:
        del raw[key]
    else:
        raw[key] = value
    with pytest.raises(EttinError) as info:
        TrainState.from_dict(raw, path=tmp_path / "trainer_state.json")
    assert info.value.field == field and message in str(info.value)
    assert "trainer_state.json" in str(info.value) and info.value.fix != ck.DAMAGED_FIX


def test_a_newer_state_version_is_a_version_mismatch_not_damage(tmp_path, model):
    _write(tmp_path, model, "step1", 1, hf=False)
    path = tmp_path / "checkpoints" / "step1" / "trainer_state.json"
    raw = json.loads(path.read_text())
    raw["version"] = 2
    path.write_text(json.dumps(raw))
    with pytest.raises(EttinError, match="written by a newer ettin") as info:
        ck.load_checkpoint(path.parent)
    assert info.value.fix != ck.DAMAGED_FIX


# ------------------------------------------------------------------ damage, and what is not damage


@pytest.mark.parametrize(
    ("name", "damage", "expected"),
    [
        ("model.safetensors", lambda b: b[: len(b) - 7], "truncated"),
        ("model.safetensors", lambda b: b[:4], "shorter than its header"),
        ("rng.safetensors", lambda b: b[:8] + b"!" + b[9:], "bad header"),
        ("optimizer.pt", lambda b: b[: len(b) // 2], "not a complete zip archive"),
        ("optimizer.pt", lambda b: b[:300] + bytes([b[300] ^ 0xFF]) + b[301:], "checksum mismatch"),
        ("trainer_state.json", lambda b: b[:-20], "not JSON"),
    ],
)
def test_damaged_files_are_reported_as_damaged(tmp_path, model, name, damage, expected):
    _write(tmp_path, model, "step1", 1, hf=False)
    path = tmp_path / "checkpoints" / "step1" / name
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(EttinError, match=expected) as info:
        ck.load_checkpoint(path.parent)
    assert info.value.fix == ck.DAMAGED_FIX and name in str(info.value)


def test_an_intact_file_that_does_not_read_is_not_called_damaged(tmp_path, model, monkeypatch):
    """A whole safetensors file with a dtype this version does not know; a loader bug on an intact optimizer.pt."""
    _write(tmp_path, model, "step1", 1, hf=False)
    folder = tmp_path / "checkpoints" / "step1"
    header = json.dumps({"torch_cpu": {"dtype": "Q7", "shape": [4], "data_offsets": [0, 4]}}).encode()
    (folder / "rng.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    with pytest.raises(EttinError, match="is intact but cannot be read here") as info:
        ck.load_checkpoint(folder)
    assert info.value.fix != ck.DAMAGED_FIX

    _write(tmp_path, model, "step2", 2, hf=False)

    def broken_load(*a, **kw):
        raise RuntimeError("an unsupported storage (simulated version mismatch)")

    monkeypatch.setattr(torch, "load", broken_load)
    with pytest.raises(EttinError, match="intact but cannot be read here.*simulated version mismatch") as info:
        ck.load_checkpoint(tmp_path / "checkpoints" / "step2")
    assert info.value.fix != ck.DAMAGED_FIX
