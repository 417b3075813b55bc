"""ettin and transformers compute the same function, in both directions of the conversion.

Small random models (4-5 layers so both layer types occur), sequences longer than the local window,
padded batches of mixed lengths; only real (non-pad) positions are compared. Norm weights and the
vocabulary bias are randomised so that a swapped or dropped tensor shows up in the logits.
"""

from __future__ import annotations

import pytest
import torch
import transformers

import ettin
from ettin import hf
from ettin.config import ModelConfig, special_ids_for
from ettin.model import EttinModel

TOL = 1e-4
VOCAB = 1000
LENGTHS = [320, 203, 77]  # longest > 2 x window, shortest inside one window

CONFIGS = {
    # head dim 64, windows of 128 (encoder |i-j| <= 64; decoder 64 keys), thetas as in pretraining/extension
    "h128": dict(
        hidden_size=128,
        intermediate_size=192,
        num_hidden_layers=4,
        num_attention_heads=2,
        global_attn_every_n_layers=3,
        local_attention=128,
        global_rope_theta=160_000.0,
        local_rope_theta=10_000.0,
    ),
    # head dim 32, global every 2nd layer, a narrower window, the thetas the other way round
    "h96": dict(
        hidden_size=96,
        intermediate_size=160,
        num_hidden_layers=5,
        num_attention_heads=3,
        global_attn_every_n_layers=2,
        local_attention=64,
        global_rope_theta=10_000.0,
        local_rope_theta=160_000.0,
    ),
}


def ettin_config(name: str, arch: str) -> ModelConfig:
    return ModelConfig(
        arch=arch, vocab_size=VOCAB, max_position_embeddings=512, **special_ids_for(VOCAB), **CONFIGS[name]
    )


def hf_config(name: str, arch: str):
    d = hf.config_to_hf(ettin_config(name, arch))
    cls = transformers.ModernBertConfig if arch == "encoder" else transformers.ModernBertDecoderConfig
    return cls(**{k: v for k, v in d.items() if k not in ("architectures", "model_type", "dtype", "torch_dtype")})


def perturb(module: torch.nn.Module, seed: int) -> None:
    """Move norm weights off 1 and biases off 0, and widen the weights so logits are well separated."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            else:
                p.mul_(2.0)


def padded_batch(seed: int = 0, lengths=LENGTHS):
    g = torch.Generator().manual_seed(seed)
    t = max(lengths)
    ids = torch.randint(0, VOCAB - 8, (len(lengths), t), generator=g)
    mask = torch.zeros(len(lengths), t, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    pad = special_ids_for(VOCAB)["pad_token_id"]
    return ids.masked_fill(mask == 0, pad), mask


def max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    real = mask.bool()
    return (a[real] - b[real]).abs().max().item()


def auto_class(arch: str):
    return transformers.AutoModelForMaskedLM if arch == "encoder" else transformers.AutoModelForCausalLM


@pytest.fixture(scope="module")
def ettin_exports(tmp_path_factory):
    """ettin models (spec init, perturbed) and their exports, per (config, arch)."""
    out = {}
    for i, name in enumerate(CONFIGS):
        for j, arch in enumerate(("encoder", "decoder")):
            torch.manual_seed(10 * i + j)
            model = EttinModel(ettin_config(name, arch)).eval()
            perturb(model, seed=10 * i + j)
            out[name, arch] = (model, hf.save_pretrained(model, tmp_path_factory.mktemp("ettin") / f"{name}-{arch}"))
    return out


@pytest.fixture(scope="module")
def hf_saved(tmp_path_factory):
    """transformers models (its own init, perturbed) written by its own save_pretrained."""
    out = {}
    for i, name in enumerate(CONFIGS):
        for j, arch in enumerate(("encoder", "decoder")):
            torch.manual_seed(100 + 10 * i + j)
            cls = transformers.ModernBertForMaskedLM if arch == "encoder" else transformers.ModernBertDecoderForCausalLM
            model = cls(hf_config(name, arch)).eval()
            perturb(model, seed=100 + 10 * i + j)
            path = tmp_path_factory.mktemp("hf") / f"{name}-{arch}"
            model.save_pretrained(path)
            out[name, arch] = (model, path)
    return out


@pytest.mark.parametrize("arch", ["encoder", "decoder"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_ettin_export_loaded_by_transformers(ettin_exports, name, arch):
    model, path = ettin_exports[name, arch]
    ref = auto_class(arch).from_pretrained(path, dtype=torch.float32).eval()
    assert type(ref).__name__ == hf.ARCHITECTURES[arch]
    ids, mask = padded_batch(seed=1)
    with torch.no_grad():
        ours = model(ids, mask).logits
        theirs = ref(input_ids=ids, attention_mask=mask).logits
    assert max_diff(ours, theirs, mask) <= TOL


@pytest.mark.parametrize("arch", ["encoder", "decoder"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_transformers_save_loaded_by_ettin(hf_saved, name, arch):
    ref, path = hf_saved[name, arch]
    model = ettin.load(path)
    assert model.config.arch == arch
    assert model.config.layer_types == list(ref.config.layer_types)
    ids, mask = padded_batch(seed=2)
    with torch.no_grad():
        ours = model(ids, mask).logits
        theirs = ref(input_ids=ids, attention_mask=mask).logits
    assert max_diff(ours, theirs, mask) <= TOL


def test_hidden_states_match_modernbert_model(ettin_exports):
    model, path = ettin_exports["h128", "encoder"]
    ref = transformers.AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    assert type(ref).__name__ == "ModernBertModel"
    ids, mask = padded_batch(seed=3)
    with torch.no_grad():
        ours = model.hidden_states(ids, mask)
        theirs = ref(input_ids=ids, attention_mask=mask).last_hidden_state
    assert max_diff(ours, theirs, mask) <= TOL


def test_sequence_classification_loads_everything_but_the_classifier(ettin_exports):
    _, path = ettin_exports["h128", "encoder"]
    clf, info = transformers.AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=3, output_loading_info=True
    )
    assert type(clf).__name__ == "ModernBertForSequenceClassification"
    assert info["missing_keys"] and all(k.startswith("classifier.") for k in info["missing_keys"])
    assert not info.get("mismatched_keys")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_generation_matches_transformers(hf_saved, name):
    ref, path = hf_saved[name, "decoder"]
    model = ettin.load(path)
    g = torch.Generator().manual_seed(4)
    prompt = torch.randint(0, VOCAB - 8, (1, 100), generator=g)
    with torch.no_grad():
        ours = model.generate(prompt, max_new_tokens=20)
        theirs = ref.generate(prompt, max_new_tokens=20, do_sample=False)
    assert ours.shape == (1, 120)
    assert ours.tolist() == theirs.tolist()


def test_left_padded_batch_generation_matches_transformers(hf_saved):
    ref, path = hf_saved["h128", "decoder"]
    model = ettin.load(path)
    g = torch.Generator().manual_seed(5)
    lengths = [100, 71, 30]
    ids = torch.full((3, 100), model.config.pad_token_id)
    mask = torch.zeros(3, 100, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, 100 - n :] = torch.randint(0, VOCAB - 8, (n,), generator=g)
        mask[i, 100 - n :] = 1
    with torch.no_grad():
        ours = model.generate(ids, mask, max_new_tokens=20)
        theirs = ref.generate(input_ids=ids, attention_mask=mask, max_new_tokens=20, do_sample=False)
        alone = model.generate(ids[2:, 70:], max_new_tokens=20)
    assert ours.tolist() == theirs.tolist()
    assert ours[2, 100:].tolist() == alone[0, 30:].tolist()


@pytest.mark.parametrize("arch", ["encoder", "decoder"])
def test_varlen_equals_padded(ettin_exports, arch):
    model, _ = ettin_exports["h128", arch]
    ids, mask = padded_batch(seed=6)
    real = mask.bool()
    flat = ids[real]
    cu = torch.zeros(len(LENGTHS) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(LENGTHS).cumsum(0)
    with torch.no_grad():
        padded = model(ids, mask).logits[real]
        varlen = model(flat, cu_seqlens=cu, max_seqlen=max(LENGTHS)).logits
    assert varlen.shape == padded.shape
    assert (varlen - padded).abs().max().item() <= TOL
