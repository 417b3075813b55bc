"""The trainer on the tiny recipe: phases, tags, pair data order, exact resume, faults."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from ettin import faults
from ettin.data.order import compare_orders, read_order
from ettin.errors import EttinError
from ettin.recipe import load_recipe
from ettin.train import checkpoint as ck
from ettin.train.metrics import read_metrics
from ettin.train.trainer import DataOrderMismatch, NonFiniteLoss, TrainOptions, train


def _options(out, **kw):
    return TrainOptions(out=out, progress=False, tensorboard=False, **kw)


def _weights(run, arch, tag):
    return load_file(str(run / arch / "checkpoints" / tag / "model.safetensors"))


def test_pair_runs_three_phases_with_tags_per_phase(pair_run):
    recipe_path, result = pair_run
    run = result.out
    assert result.finished and result.tokens >= load_recipe(recipe_path).total_tokens
    for arch in ("encoder", "decoder"):
        tags = ck.list_tags(run / arch)
        prefixes = [t.tag.rstrip("0123456789") for t in tags]
        assert prefixes[0] == "step" and "ext" in prefixes and prefixes[-1] == "decay"
        assert all(t.hf for t in tags)
        assert [t.tokens for t in tags] == sorted(t.tokens for t in tags) and tags[-1].tokens == result.tokens
        assert sum(t.full_state for t in tags) == 2  # keep_last: 2
        rows = read_metrics(run / arch)
        assert [r["step"] for r in rows if r["kind"] == "train"] == list(range(1, result.step + 1))
        assert any(r["kind"] == "eval" for r in rows)
        assert (run / arch / "tb").is_dir()
    assert (run / "recipe.yaml").is_file()
    assert compare_orders(run / "encoder", run / "decoder").identical
    # phase changes applied: the exported decay model carries the extension's RoPE and the phase's length
    import json

    cfg = json.loads((run / "decoder" / "hf" / tags[-1].tag / "config.json").read_text())
    assert cfg["rope_parameters"]["full_attention"]["rope_theta"] == 160000
    lengths = read_order(run / "encoder", columns=["length", "phase"]).to_pydict()
    assert max(n for n, p in zip(lengths["length"], lengths["phase"]) if p == "pretrain") <= 32
    assert max(lengths["length"]) > 32


def test_recorded_data_order_regenerates_from_its_plan(pair_run):
    from ettin.data.order import read_plan, regenerate_order

    _, result = pair_run
    recorded = read_order(result.out / "encoder", columns=["input_ids", "phase"]).to_pydict()
    again = regenerate_order(read_plan(result.out / "encoder")).to_pydict()
    assert again["step"] == recorded["step"] and again["input_ids"] == recorded["input_ids"]
    assert again["phase"] == recorded["phase"]


def test_pair_models_start_equal_and_learn(pair_run):
    import ettin
    from ettin.config import special_ids_for
    from ettin.train.cross import fresh_model

    recipe_path, result = pair_run
    recipe = load_recipe(recipe_path)
    enc0 = fresh_model(recipe, "encoder", 1024, special_ids_for(1024)).state_dict()
    dec0 = fresh_model(recipe, "decoder", 1024, special_ids_for(1024)).state_dict()
    assert all(torch.equal(enc0[k], dec0[k]) for k in enc0)
    first = ck.list_tags(result.out / "encoder")[0].tag
    enc = ettin.load(result.out / "encoder", revision=first)
    dec = ettin.load(result.out / "decoder", revision=first)
    assert enc.config.arch == "encoder" and dec.config.arch == "decoder"
    assert not torch.equal(enc.model.final_norm.weight, dec.model.final_norm.weight)  # trained apart
    rows = [r["loss"] for r in read_metrics(result.out / "decoder") if r["kind"] == "train"]
    assert rows[-1] < rows[0]


def test_exact_resume_is_bitwise_equal(pair_run, write_recipe, tmp_path):
    recipe_path, full = pair_run
    stop = ck.list_tags(full.out / "encoder")[0]  # a pretraining tag: the resumed run crosses two phase changes
    run = tmp_path / "run"
    recipe = load_recipe(recipe_path)
    first = train(recipe, _options(run, max_steps=stop.step))
    assert not first.finished and first.step == stop.step
    second = train(recipe, _options(run, resume=True))
    assert second.finished and second.step == full.step
    last = ck.list_tags(full.out / "encoder")[-1].tag
    for arch in ("encoder", "decoder"):
        a, b = _weights(full.out, arch, last), _weights(run, arch, last)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{arch} {k}"
        assert compare_orders(full.out / arch, run / arch).identical
        losses_a = [r["loss"] for r in read_metrics(full.out / arch) if r["kind"] == "train"]
        losses_b = [r["loss"] for r in read_metrics(run / arch) if r["kind"] == "train"]
        assert losses_a == losses_b


def test_encoder_of_a_pair_equals_the_encoder_trained_alone(pair_run, tmp_path):
    recipe_path, pair = pair_run
    alone = train(load_recipe(recipe_path, ["arch=encoder"]), _options(tmp_path / "run"))
    assert not (tmp_path / "run" / "decoder").exists()
    last = ck.list_tags(pair.out / "encoder")[-1].tag
    a, b = _weights(pair.out, "encoder", last), _weights(alone.out, "encoder", last)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pair_fails_loudly_when_data_orders_differ(write_recipe, tmp_path, monkeypatch):
    from ettin.data.order import OrderWriter

    real = OrderWriter.record

    def record(self, step, phase, samples):
        h = real(self, step, phase, samples)
        return h[::-1] if "decoder" in str(self.folder) and step == 2 else h

    monkeypatch.setattr(OrderWriter, "record", record)
    with pytest.raises(DataOrderMismatch, match="step 2: the data orders of the pair differ"):
        train(load_recipe(write_recipe(tmp_path)), _options(tmp_path / "run"))


def test_pair_resume_refuses_checkpoints_that_disagree(pair_run, write_recipe, tmp_path):
    import json
    import shutil

    _, full = pair_run
    run = tmp_path / "run"
    shutil.copytree(full.out, run)
    state = ck.latest_full_state(run / "decoder") / "trainer_state.json"
    data = json.loads(state.read_text())
    data["order_chain"] = "0" * 32
    state.write_text(json.dumps(data))
    with pytest.raises(DataOrderMismatch, match="order_chain differ"):
        train(load_recipe(run / "recipe.yaml"), _options(run, resume=True))


def test_nan_loss_stops_with_step_and_last_checkpoint(write_recipe, tmp_path, monkeypatch):
    from ettin.model import EttinModel

    real = EttinModel.forward
    calls = {"n": 0}

    def forward(self, *a, **kw):
        out = real(self, *a, **kw)
        if self.config.arch == "decoder" and kw.get("labels") is not None:
            calls["n"] += 1
            if calls["n"] > 8:  # a few steps in (two micro-batches a step)
                out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(EttinModel, "forward", forward)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLoss) as info:
        train(load_recipe(write_recipe(tmp_path, {"arch": "decoder"})), _options(run))
    tags = ck.list_tags(run / "decoder")
    assert tags, "a checkpoint before the bad step"
    msg = str(info.value)
    assert (
        "decoder loss is nan" in msg
        and f"last good checkpoint: {run / 'decoder' / 'checkpoints' / tags[-1].tag}" in msg
    )
    bad_step = int(msg.split("stopped at step ")[1].split()[0])
    assert all(t.step < bad_step for t in tags)
    for t in tags:
        ck.load_checkpoint(run / "decoder" / "checkpoints" / t.tag)


def test_failed_checkpoint_write_keeps_previous_loadable(write_recipe, tmp_path):
    run = tmp_path / "run"
    recipe = load_recipe(write_recipe(tmp_path, {"arch": "encoder"}))
    with (
        faults.arm("checkpoint.write", "enospc", at=2),  # the second checkpoint's files written, then a full disk
        pytest.raises(
            EttinError, match=r"could not write checkpoint .* \(No space left on device\); the previous checkpoint"
        ),
    ):
        train(recipe, _options(run))
    tags = ck.list_tags(run / "encoder")
    assert len(tags) == 1 and tags[0].full_state
    ck.load_checkpoint(run / "encoder" / "checkpoints" / tags[0].tag)
    assert not [p for p in (run / "encoder" / "checkpoints").iterdir() if p.name != tags[0].tag]
    resumed = train(recipe, _options(run, resume=True, max_steps=tags[0].step + 1))
    assert resumed.step == tags[0].step + 1


def test_output_dir_holding_a_run_or_other_files_is_refused(pair_run, write_recipe, tmp_path):
    _, full = pair_run
    recipe = load_recipe(write_recipe(tmp_path))
    with pytest.raises(EttinError, match="already holds a training run.*--resume"):
        train(recipe, _options(full.out))
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(EttinError, match="not an empty folder"):
        train(recipe, _options(other))
    with pytest.raises(EttinError, match="holds no run to resume"):
        train(recipe, _options(tmp_path / "fresh", resume=True))


def test_resume_with_changed_recipe_is_refused_and_says_what_changed(pair_run, tmp_path):
    import shutil

    _, full = pair_run
    run = tmp_path / "run"
    shutil.copytree(full.out, run)
    changed = load_recipe(run / "recipe.yaml", ["phases.2.tokens=300", "seed=6"])
    with pytest.raises(EttinError) as info:
        train(changed, _options(run, resume=True))
    msg = str(info.value)
    assert "phases.2.tokens: 200 -> 300" in msg and "seed: 5 -> 6" in msg and "--force" in msg


def _resumed(run, overrides, logs):
    from ettin.train.setup import release_run
    from ettin.train.trainer import Trainer

    recipe = load_recipe(run / "recipe.yaml", overrides)
    trainer = Trainer(recipe, _options(run, resume=True, force=True, log=logs.append))
    try:
        trainer.setup()
        return [dict(g) for m in trainer.members for g in m.optimizer.param_groups]
    finally:
        release_run(trainer.run_context)


def test_forced_resume_applies_the_recipes_optimizer_settings(pair_run, tmp_path):
    """torch's load_state_dict puts the checkpoint's group settings back; the recipe's must win."""
    import shutil

    _, full = pair_run
    run = tmp_path / "run"
    shutil.copytree(full.out, run)
    before = _resumed(run, [], [])
    logs: list[str] = []
    after = _resumed(run, ["optimizer.weight_decay=0.02", "optimizer.betas=[0.8, 0.95]"], logs)
    assert {g["weight_decay"] for g in before if g["weight_decay"]} != {0.02}
    assert {g["weight_decay"] for g in after if g["weight_decay"]} == {0.02}
    assert {(g["beta1"], g["beta2"]) for g in after} == {(0.8, 0.95)}
    assert [g["step"] for g in after] == [g["step"] for g in before]  # the checkpoint's counters stay
    assert any("optimizer weight_decay" in line and "-> 0.02" in line for line in logs)


def test_forced_resume_reads_each_state_once(pair_run, tmp_path, monkeypatch):
    """The states a --resume --force checks before saving its recipe are the ones it loads: not read twice."""
    import shutil

    _, full = pair_run
    run = tmp_path / "run"
    shutil.copytree(full.out, run)
    read = []
    real = ck.load_checkpoint
    monkeypatch.setattr(ck, "load_checkpoint", lambda path: read.append(path) or real(path))
    _resumed(run, ["optimizer.weight_decay=0.02"], [])
    assert sorted(p.parent.parent.name for p in read) == ["decoder", "encoder"]


def test_forced_resume_refuses_a_changed_eps(pair_run, tmp_path):
    import shutil

    _, full = pair_run
    run = tmp_path / "run"
    shutil.copytree(full.out, run)
    with pytest.raises(EttinError, match=r"optimizer.eps changed from .* to 0.001"):
        _resumed(run, ["optimizer.eps=1e-3"], [])


def test_tokenizer_that_does_not_match_the_data_is_refused(write_recipe, tmp_path, modernbert_tokenizer_dir):
    recipe = load_recipe(write_recipe(tmp_path, {"tokenizer": str(modernbert_tokenizer_dir)}))
    with pytest.raises(EttinError, match="prepared with a different tokenizer"):
        train(recipe, _options(tmp_path / "run"))


def test_missing_data_names_the_command(write_recipe, tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, {"phases.0.data": {"mixture": {"nosuch": 1}}}))
    with pytest.raises(EttinError, match=r"nosuch not prepared here.*ettin data prepare --source nosuch"):
        train(recipe, _options(tmp_path / "run"))


def test_each_launch_records_what_it_ran_on(pair_run):
    import json

    _, result = pair_run
    lines = (result.out / "launches.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert first["attention_backend"] == "sdpa" and first["device"] == "cpu" and first["world_size"] == 1
    assert first["omp_wait_policy"] and first["step"] == 0 and first["resumed"] is False
