"""The model's own contracts: windows, varlen isolation, sparse head, init, RoPE changes, generation."""

import math

import pytest
import torch

from ettin.attention import Varlen, window_mask
from ettin.config import config_for_size
from ettin.model import IGNORE_INDEX, EttinModel

VOCAB = 512


def make(arch: str, seed: int = 0, **overrides) -> EttinModel:
    torch.manual_seed(seed)
    return EttinModel(config_for_size("tiny", arch, vocab_size=VOCAB, **overrides)).eval()


@pytest.mark.parametrize("length", [1, 40, 65, 66, 200])
def test_encoder_window_is_symmetric_64(length):
    mask = window_mask(length, 64, False, "cpu")
    i, j = torch.meshgrid(torch.arange(length), torch.arange(length), indexing="ij")
    expected = (i - j).abs() <= 64
    got = torch.ones(length, length, dtype=torch.bool) if mask is None else mask
    assert torch.equal(got, expected)


@pytest.mark.parametrize("length", [1, 40, 64, 65, 200])
def test_decoder_window_holds_64_keys_including_itself(length):
    mask = window_mask(length, 64, True, "cpu")
    i, j = torch.meshgrid(torch.arange(length), torch.arange(length), indexing="ij")
    expected = (j <= i) & (j > i - 64)
    got = (j <= i) if mask is None else mask
    assert torch.equal(got, expected)
    assert int(expected.sum(1).max()) == min(length, 64)


def test_varlen_positions_restart_per_sequence():
    seqs = Varlen.from_lengths([3, 1, 4])
    assert seqs.positions.tolist() == [0, 1, 2, 0, 0, 1, 2, 3]
    assert seqs.cu_seqlens.tolist() == [0, 3, 4, 8]


@pytest.mark.parametrize("arch", ["encoder", "decoder"])
def test_no_attention_across_sequence_boundaries(arch):
    model = make(arch)
    a = torch.randint(0, 500, (150,))
    b = torch.randint(0, 500, (90,))
    b2 = torch.randint(0, 500, (90,))
    cu = torch.tensor([0, 150, 240], dtype=torch.int32)
    with torch.no_grad():
        out1 = model(torch.cat([a, b]), cu_seqlens=cu).logits
        out2 = model(torch.cat([a, b2]), cu_seqlens=cu).logits
        alone = model(a[None]).logits[0]
    assert torch.equal(out1[:150], out2[:150])  # changing the second sequence leaves the first untouched
    torch.testing.assert_close(out1[:150], alone, rtol=0, atol=1e-5)


def test_decoder_is_causal_and_encoder_is_not():
    ids = torch.randint(0, 500, (1, 120))
    changed = ids.clone()
    changed[0, -1] = (changed[0, -1] + 1) % 500
    for arch, same_prefix in (("decoder", True), ("encoder", False)):
        model = make(arch)
        with torch.no_grad():
            x, y = model(ids).logits, model(changed).logits
        assert torch.equal(x[0, :-1], y[0, :-1]) == same_prefix, arch


def test_local_layer_ignores_tokens_beyond_the_window():
    # One local layer alone: position 0's output cannot depend on a token 100 positions away.
    cfg = config_for_size("tiny", "encoder", vocab_size=VOCAB).replace(
        num_hidden_layers=2, global_attn_every_n_layers=3
    )
    cfg.layer_types = ["sliding_attention", "sliding_attention"]
    torch.manual_seed(0)
    model = EttinModel(cfg).eval()
    ids = torch.randint(0, 500, (1, 200))
    changed = ids.clone()
    changed[0, 150] = (changed[0, 150] + 7) % 500
    with torch.no_grad():
        x, y = model(ids).logits, model(changed).logits
    assert torch.equal(x[0, :20], y[0, :20])  # 2 layers x 64 = 128 < 130
    assert not torch.equal(x[0, 100:], y[0, 100:])


def test_encoder_sparse_prediction_matches_dense_head():
    model = make("encoder")
    ids = torch.randint(0, 500, (2, 50))
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 3], labels[1, 40] = 11, 22
    with torch.no_grad():
        sparse = model(ids, labels=labels)
        dense = model(ids).logits
    assert sparse.logits.shape == (2, VOCAB)
    torch.testing.assert_close(sparse.logits, torch.stack([dense[0, 3], dense[1, 40]]))
    expected = torch.nn.functional.cross_entropy(sparse.logits, torch.tensor([11, 22]))
    torch.testing.assert_close(sparse.loss, expected)


def test_decoder_loss_reads_aligned_labels():
    model = make("decoder")
    ids = torch.randint(0, 500, (30,))
    labels = torch.cat([ids[1:], torch.tensor([IGNORE_INDEX])])
    cu = torch.tensor([0, 30], dtype=torch.int32)
    with torch.no_grad():
        out = model(ids, cu_seqlens=cu, labels=labels)
    expected = torch.nn.functional.cross_entropy(out.logits[:-1], ids[1:])
    torch.testing.assert_close(out.loss, expected)


def test_initialization_follows_the_spec():
    torch.manual_seed(21)
    model = EttinModel(config_for_size("mini", "encoder", vocab_size=4096))
    n = model.config.num_hidden_layers
    emb = model.model.embeddings.tok_embeddings.weight
    assert abs(emb.std().item() - 0.02 * 0.88) < 0.002  # truncation at 2 std shrinks std to 0.88 x
    assert emb.abs().max().item() <= 0.04 + 1e-6
    out = model.model.layers[1].attn.Wo.weight
    out_std = 0.02 / math.sqrt(2 * n)
    assert out.abs().max().item() <= 2 * out_std + 1e-6
    assert torch.count_nonzero(model.decoder.bias) == 0
    assert model.decoder.weight is model.model.embeddings.tok_embeddings.weight
    assert all(torch.all(m.weight == 1) for m in model.modules() if isinstance(m, torch.nn.LayerNorm))
    assert isinstance(model.model.layers[0].attn_norm, torch.nn.Identity)


def test_same_seed_same_weights():
    a, b = make("encoder", seed=3), make("encoder", seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_set_rope_theta_changes_outputs_and_config():
    model = make("encoder")
    ids = torch.randint(0, 500, (1, 40))
    with torch.no_grad():
        before = model(ids).logits
        model.set_rope_theta(160_000.0, 10_000.0)
        after = model(ids).logits
    assert model.config.global_rope_theta == 160_000.0 and model.config.local_rope_theta == 10_000.0
    assert not torch.allclose(before, after)


def test_bf16_autocast_runs_and_stays_close():
    model = make("decoder")
    ids = torch.randint(0, 500, (2, 70))
    with torch.no_grad():
        ref = model(ids).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(ids).logits
    assert (low.float() - ref).abs().max().item() < 0.1


def test_generate_greedy_equals_argmax_rollout_and_stops_at_eos():
    model = make("decoder")
    prompt = torch.randint(0, 500, (1, 12))
    out = model.generate(prompt, max_new_tokens=5)
    ids = prompt
    with torch.no_grad():
        for _ in range(5):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, ids)
    eos = int(out[0, 13])
    stopped = model.generate(prompt, max_new_tokens=5, eos_token_id=eos)
    assert stopped.shape[1] == 14 and int(stopped[0, -1]) == eos


def test_generate_sampling_is_seeded_and_respects_top_k():
    model = make("decoder")
    prompt = torch.randint(0, 500, (2, 8))
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    a = model.generate(prompt, max_new_tokens=6, do_sample=True, top_k=1, generator=g())
    assert torch.equal(a, model.generate(prompt, max_new_tokens=6))  # top_k=1 is greedy
    b = model.generate(prompt, max_new_tokens=6, do_sample=True, temperature=1.5, top_p=0.9, generator=g())
    c = model.generate(prompt, max_new_tokens=6, do_sample=True, temperature=1.5, top_p=0.9, generator=g())
    assert torch.equal(b, c)


def test_encoder_cannot_generate():
    with pytest.raises(ValueError, match="decoder"):
        make("encoder").generate(torch.zeros(1, 3, dtype=torch.long))


def test_meta_device_build_counts_1b_parameters():
    with torch.device("meta"):
        model = EttinModel(config_for_size("1b", "encoder"), init=False)
    assert model.num_parameters(with_head=False) == 1_028_050_688
    assert model.num_parameters() == 1_031_314_112
