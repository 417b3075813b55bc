"""The model's speed paths compute what the plain paths compute (values and gradients)."""

import pytest
import torch
import torch.nn.functional as F

from ettin.attention import Varlen, _sdpa, grouped_attention, local_attention, varlen_attention
from ettin.config import config_for_size
from ettin.model import IGNORE_INDEX, EttinModel, linear_cross_entropy


def per_sequence(q, k, v, lengths, causal, half_window=64):
    outs = []
    for a, b, c in zip(q.split(lengths), k.split(lengths), v.split(lengths)):
        o = _sdpa(
            a.transpose(0, 1)[None],
            b.transpose(0, 1)[None],
            c.transpose(0, 1)[None],
            causal=causal,
            half_window=half_window,
            scale=0.125,
        )
        outs.append(o[0].transpose(0, 1))
    return torch.cat(outs)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lengths", [[300], [1, 64, 65, 66, 129, 130, 200], [5, 7], [192], [700, 3]])
def test_block_local_attention_equals_windowed_attention_per_sequence(causal, lengths):
    torch.manual_seed(0)
    n = sum(lengths)
    q, k, v = (torch.randn(n, 2, 64, dtype=torch.float64, requires_grad=True) for _ in range(3))
    ref = per_sequence(q, k, v, lengths, causal)
    out = local_attention(q, k, v, Varlen.from_lengths(lengths), causal=causal, half_window=64, scale=0.125)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("half_window", [None, 4, 64])
@pytest.mark.parametrize("lengths", [[1, 3, 9, 12, 5, 2, 7, 40, 41], [6, 6, 6, 1], [130, 1, 1, 1, 90]])
def test_grouped_padded_attention_equals_attention_per_sequence(causal, half_window, lengths):
    torch.manual_seed(0)
    n = sum(lengths)
    q, k, v = (torch.randn(n, 2, 8, dtype=torch.float64) for _ in range(3))
    seqs = Varlen.from_lengths(lengths)
    ref = per_sequence(q, k, v, lengths, causal, half_window)
    out = grouped_attention(q, k, v, seqs, causal=causal, half_window=half_window, scale=0.125)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    assert len(seqs.padded_groups()) < len(lengths)  # sequences did share calls


def test_cpu_inference_takes_the_grouped_path_and_training_the_per_sequence_one():
    torch.manual_seed(0)
    lengths = [3, 9, 12, 5, 2, 7]  # sum of T^2 below 3w * N: not block-local
    q, k, v = (torch.randn(sum(lengths), 2, 8, requires_grad=True) for _ in range(3))
    seqs = Varlen.from_lengths(lengths)
    kw = {"causal": False, "half_window": 4, "scale": 0.125}
    with torch.no_grad():
        inference = varlen_attention(q, k, v, seqs, **kw)
    assert "groups" in seqs._masks
    training = varlen_attention(q, k, v, Varlen.from_lengths(lengths), **kw)
    assert training.requires_grad
    torch.testing.assert_close(inference, training.detach(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("vocab", [97, 5000])
def test_linear_cross_entropy_matches_cross_entropy_and_its_gradients(vocab):
    torch.manual_seed(0)
    h = torch.randn(70, 32, dtype=torch.float64, requires_grad=True)
    w = (0.1 * torch.randn(vocab, 32, dtype=torch.float64)).requires_grad_()
    b = torch.randn(vocab, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, vocab, (70,))
    ref = F.cross_entropy(F.linear(h, w, b), y)
    out = linear_cross_entropy(h, w, b, y, chunk_elements=3 * vocab)  # several chunks, a short last one
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    for a, c in zip(torch.autograd.grad(2.5 * out, (h, w, b)), torch.autograd.grad(2.5 * ref, (h, w, b))):
        torch.testing.assert_close(a, c, rtol=0, atol=1e-12)


@pytest.mark.parametrize("arch", ["encoder", "decoder"])
def test_training_loss_without_logits_equals_the_loss_with_logits(arch):
    torch.manual_seed(0)
    model = EttinModel(config_for_size("tiny", arch, vocab_size=300))
    ids = torch.randint(0, 290, (230,))
    labels = torch.where(torch.rand(230) < 0.3, ids, torch.full_like(ids, IGNORE_INDEX))
    cu = torch.tensor([0, 150, 230], dtype=torch.int32)
    grads = []
    for return_logits in (True, False):
        model.zero_grad()
        out = model(ids, cu_seqlens=cu, labels=labels, return_logits=return_logits)
        out.loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        assert (out.logits is None) == (not return_logits)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_training_loss_under_bf16_autocast_stays_close_to_float32():
    torch.manual_seed(0)
    model = EttinModel(config_for_size("tiny", "decoder", vocab_size=300))
    ids = torch.randint(0, 290, (120,))
    labels = torch.cat([ids[1:], torch.tensor([IGNORE_INDEX])])
    cu = torch.tensor([0, 120], dtype=torch.int32)
    ref = model(ids, cu_seqlens=cu, labels=labels, return_logits=False).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(ids, cu_seqlens=cu, labels=labels, return_logits=False).loss
    low.backward()
    assert low.dtype == torch.float32 and abs(low.item() - ref.item()) < 0.02
    assert model.decoder.weight.grad.dtype == torch.float32 and torch.isfinite(model.decoder.weight.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_matches_transformers_formula_and_its_gradient(dtype):
    from ettin.model import apply_rotary

    torch.manual_seed(0)
    x = torch.randn(50, 2, 3, 64).to(dtype).requires_grad_()
    angles = torch.rand(50, 32) * 6
    cos, sin = angles.cos()[:, None, None], angles.sin()[:, None, None]

    def reference(x):  # transformers' apply_rotary_pos_emb: float32, full-width tables, rotate_half
        xf, c, s = x.float(), torch.cat([cos, cos], -1), torch.cat([sin, sin], -1)
        x1, x2 = xf.chunk(2, -1)
        return (xf * c + torch.cat([-x2, x1], -1) * s).to(dtype)

    out, ref = apply_rotary(x, cos, sin), reference(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6 if dtype == torch.float32 else 1e-2)
    g = torch.randn_like(out)
    (a,), (b,) = torch.autograd.grad(out, x, g), torch.autograd.grad(ref, x, g)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5 if dtype == torch.float32 else 3e-2)
