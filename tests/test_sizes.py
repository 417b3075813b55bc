"""Parameter counts of the six Ettin sizes against the spec (ettin-spec.md section 1), counted three
ways: the closed form, ettin's model built on the meta device, and transformers' own classes."""

from __future__ import annotations

import pytest
import torch

from ettin.config import MODERNBERT_VOCAB_SIZE, SIZES, config_for_size, count_parameters
from ettin.model import EttinModel

SPEC_BACKBONE = {
    "17m": 16_797_440,
    "32m": 31_883_136,
    "68m": 68_144_640,
    "150m": 149_014_272,
    "400m": 394_781_696,
    "1b": 1_028_050_688,
}
SPEC_WITH_HEAD = {"17m": 16_913_600, "150m": 149_655_232, "1b": 1_031_314_112}


def spec_with_head(size: str) -> int:
    """The spec lists three totals; the others follow from its rule: dense h x h, norm h, bias V."""
    if size in SPEC_WITH_HEAD:
        return SPEC_WITH_HEAD[size]
    h = SIZES[size].hidden_size
    return SPEC_BACKBONE[size] + h * h + h + MODERNBERT_VOCAB_SIZE


def unique_numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def test_the_six_ettin_sizes_are_the_spec_sizes():
    assert sorted(s for s, v in SIZES.items() if v.ettin) == sorted(SPEC_BACKBONE)
    for name in SPEC_BACKBONE:
        assert SIZES[name].hidden_size // SIZES[name].num_attention_heads == 64


@pytest.mark.parametrize("size", list(SPEC_BACKBONE))
def test_ettin_model_parameter_counts_match_spec(size):
    config = config_for_size(size)
    with torch.device("meta"):
        model = EttinModel(config, init=False)
    assert unique_numel(model.model) == SPEC_BACKBONE[size]
    assert unique_numel(model) == spec_with_head(size)
    assert model.decoder.weight is model.model.embeddings.tok_embeddings.weight
    assert count_parameters(config) == SPEC_BACKBONE[size]
    assert count_parameters(config, with_head=True) == spec_with_head(size)


@pytest.mark.parametrize("size", ["17m", "1b"])
def test_transformers_modernbert_parameter_counts_match_spec(size):
    from transformers import ModernBertConfig, ModernBertForMaskedLM, ModernBertModel

    from ettin.hf import config_to_hf

    d = config_to_hf(config_for_size(size))
    hf_config = ModernBertConfig(**{k: v for k, v in d.items() if k not in ("architectures", "model_type")})
    with torch.device("meta"):
        backbone = ModernBertModel(hf_config)
        mlm = ModernBertForMaskedLM(hf_config)
    assert unique_numel(backbone) == SPEC_BACKBONE[size]
    assert unique_numel(mlm) == spec_with_head(size)


def test_cpu_sizes_count_like_the_model():
    for name, size in SIZES.items():
        if size.ettin:
            continue
        config = config_for_size(name, vocab_size=1024)
        with torch.device("meta"):
            model = EttinModel(config, init=False)
        assert count_parameters(config, with_head=True) == unique_numel(model)
        assert count_parameters(config) == unique_numel(model.model)
