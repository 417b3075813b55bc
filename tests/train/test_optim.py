"""StableAdamW groups and settings."""

from __future__ import annotations

import pytest
import torch

from ettin.config import config_for_size
from ettin.model import EttinModel
from ettin.recipe import OptimizerSection
from ettin.train.optim import build_optimizer, param_groups


def test_no_decay_on_norms_and_biases():
    model = EttinModel(config_for_size("tiny", "encoder", vocab_size=256))
    decay, no_decay = param_groups(model, 3e-4)
    assert decay["weight_decay"] == 3e-4 and no_decay["weight_decay"] == 0.0
    assert all("norm" in n or n.endswith(".bias") for n in no_decay["names"])
    assert "decoder.bias" in no_decay["names"] and "model.final_norm.weight" in no_decay["names"]
    assert "model.layers.0.attn.Wqkv.weight" in decay["names"]
    assert not any("norm" in n for n in decay["names"])
    # the tied projection appears once, as the embedding
    assert "model.embeddings.tok_embeddings.weight" in decay["names"] and "decoder.weight" not in decay["names"]
    assert len(decay["names"]) + len(no_decay["names"]) == len(list(model.parameters()))


@pytest.mark.filterwarnings("ignore:You are using weight_decay")
def test_stable_adamw_settings_and_fully_decoupled_decay():
    model = torch.nn.Linear(4, 4, bias=False)
    cfg = OptimizerSection(lr=1e-2, weight_decay=0.1)
    opt = build_optimizer(model, cfg)
    g = opt.param_groups[0]
    assert type(opt).__name__ == "StableAdamW"
    assert (g["beta1"], g["beta2"], g["eps"], g["decouple_lr"], g["max_lr"]) == (0.9, 0.98, 1e-6, True, 1e-2)
    # zero gradient: the step only decays, by weight_decay * lr / peak, independent of the peak's scale
    before = model.weight.detach().clone()
    model.weight.grad = torch.zeros_like(model.weight)
    g["lr"] = 5e-3
    opt.step()
    assert torch.allclose(model.weight, before * (1 - 0.1 * 0.5))
