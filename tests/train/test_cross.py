"""Cross-objective training: start from the other arch's checkpoint or from an HF folder."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from ettin.recipe import load_recipe
from ettin.train import checkpoint as ck
from ettin.train.metrics import read_metrics
from ettin.train.trainer import TrainOptions, train

ONE_PHASE = {
    "phases": [
        {
            "name": "cross",
            "tokens": 250,
            "seq_len": 32,
            "batch_size": 4,
            "mask_rate": 0.15,
            "lr": {"schedule": "constant", "start": 0.0},
            "data": {"mixture": {"wiki": 1}},
        }
    ],
    "checkpoint.every_tokens": 100_000,
    "eval.every_tokens": None,
}


def _options(out, **kw):
    return TrainOptions(out=out, progress=False, tensorboard=False, **kw)


def _state(run, arch):
    tag = ck.list_tags(run / arch)[-1].tag
    return load_file(str(run / arch / "checkpoints" / tag / "model.safetensors")), tag


def test_encoder_checkpoint_continues_as_a_decoder(pair_run, write_recipe, tmp_path):
    _, pair = pair_run
    start = ck.list_tags(pair.out / "encoder")[1]
    recipe = load_recipe(
        write_recipe(tmp_path, {**ONE_PHASE, "arch": "decoder"}),
        [f"init.path={pair.out / 'encoder'}", f"init.revision={start.tag}"],
    )
    result = train(recipe, _options(tmp_path / "run"))
    assert result.finished
    weights, tag = _state(tmp_path / "run", "decoder")
    source = load_file(str(pair.out / "encoder" / "hf" / start.tag / "model.safetensors"))
    # lr 0 in this phase: the weights are the encoder's, now trained as a decoder
    assert torch.equal(weights["model.layers.0.attn.Wqkv.weight"], source["model.layers.0.attn.Wqkv.weight"])
    info = json.loads((tmp_path / "run" / "decoder" / "hf" / tag / "ettin_checkpoint.json").read_text())
    assert info["objective"] == "clm" and info["arch"] == "decoder"
    cfg = json.loads((tmp_path / "run" / "decoder" / "hf" / tag / "config.json").read_text())
    assert cfg["model_type"] == "modernbert-decoder"


def test_hf_decoder_folder_continues_as_an_encoder_with_masked_next_token(pair_run, write_recipe, tmp_path):
    _, pair = pair_run
    hf_dir = ck.resolve_revision(pair.out / "decoder")  # an ordinary modernbert-decoder folder
    changes = {**ONE_PHASE, "arch": "encoder", "objective": {"encoder": "mntp"}, "init": {"path": str(hf_dir)}}
    result = train(load_recipe(write_recipe(tmp_path, changes)), _options(tmp_path / "run"))
    rows = [r for r in read_metrics(tmp_path / "run" / "encoder") if r["kind"] == "train"]
    assert result.finished and rows and all(0 < r["loss"] < 20 for r in rows)
    weights, tag = _state(tmp_path / "run", "encoder")
    source = load_file(str(hf_dir / "model.safetensors"))
    assert torch.equal(weights["head.dense.weight"], source["lm_head.dense.weight"])
    info = json.loads((tmp_path / "run" / "encoder" / "hf" / tag / "ettin_checkpoint.json").read_text())
    assert info["objective"] == "mntp" and info["arch"] == "encoder"


def test_bf16_autocast_on_cpu(write_recipe, tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, {**ONE_PHASE, "arch": "decoder", "precision": "bf16"}))
    recipe.phases[0].lr.start = 1.0
    result = train(recipe, _options(tmp_path / "run"))
    weights, _ = _state(tmp_path / "run", "decoder")
    assert result.finished and all(v.dtype == torch.float32 for v in weights.values())
    losses = [r["loss"] for r in read_metrics(tmp_path / "run" / "decoder") if r["kind"] == "train"]
    assert all(0 < x < 20 for x in losses)
