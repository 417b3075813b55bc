"""Training dropout is a function of (seed, arch, step, sequence index, position, layer, channel) only."""

from __future__ import annotations

import pytest
import torch

from ettin.config import config_for_size
from ettin.dropout import dropout_seed, keep_mask, sequence_dropout_keys, token_keys
from ettin.model import EttinModel

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(p: float = 0.1) -> EttinModel:
    torch.manual_seed(0)
    cfg = config_for_size("tiny", "encoder", vocab_size=128, attention_dropout=p)
    return EttinModel(cfg).train()


def _flat(seqs: list[torch.Tensor]):
    cu = torch.zeros(len(seqs) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor([len(s) for s in seqs]).cumsum(0)
    return torch.cat(seqs), cu


def test_keep_rate_is_p_and_masks_differ_by_layer_and_step():
    keys = token_keys(sequence_dropout_keys(3, 7, 0, 64), [64] * 64, torch.arange(64).repeat(64))
    m0, m1 = keep_mask(keys, 0, 256, 0.1), keep_mask(keys, 1, 256, 0.1)
    assert abs(1 - m0.float().mean().item() - 0.1) < 0.005
    assert (m0 != m1).float().mean() > 0.1  # independent layers disagree on ~18% of elements
    other_step = token_keys(sequence_dropout_keys(3, 8, 0, 64), [64] * 64, torch.arange(64).repeat(64))
    assert (keep_mask(other_step, 0, 256, 0.1) != m0).float().mean() > 0.1
    assert dropout_seed(1, "encoder") != dropout_seed(1, "decoder")


def test_a_sequence_gets_its_mask_whatever_the_split():
    """Four sequences in one micro-batch, or as 1 + 3, give each sequence the same output."""
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, 128, (n,), generator=g) for n in (70, 9, 130, 33)]
    model = _model()
    seed, step = dropout_seed(5, "encoder"), 11
    ids, cu = _flat(seqs)
    out = model(ids, cu_seqlens=cu, dropout_keys=sequence_dropout_keys(seed, step, 0, 4)).logits
    parts = []
    for first, chunk in ((0, seqs[:1]), (1, seqs[1:])):
        ids_c, cu_c = _flat(chunk)
        parts.append(
            model(ids_c, cu_seqlens=cu_c, dropout_keys=sequence_dropout_keys(seed, step, first, len(chunk))).logits
        )
    torch.testing.assert_close(torch.cat(parts), out, rtol=1e-5, atol=1e-5)
    # and the dropout is real: another step gives other outputs, eval mode none at all
    other = model(ids, cu_seqlens=cu, dropout_keys=sequence_dropout_keys(seed, step + 1, 0, 4)).logits
    assert not torch.allclose(other, out, rtol=0, atol=1e-5)
    model.eval()
    plain = model(ids, cu_seqlens=cu).logits
    assert not torch.allclose(plain, out, rtol=0, atol=1e-5)
    torch.testing.assert_close(
        model(ids, cu_seqlens=cu, dropout_keys=sequence_dropout_keys(seed, step, 0, 4)).logits, plain
    )


def test_dropout_scales_kept_elements_and_zero_p_is_identity():
    from ettin.dropout import hashed_dropout

    x = torch.ones(50, 40)
    keys = token_keys(sequence_dropout_keys(0, 0, 0, 1), [50], torch.arange(50))
    y = hashed_dropout(x, keys, 2, 0.25)
    assert torch.unique(y).tolist() == [0.0, pytest.approx(1 / 0.75)]
    assert hashed_dropout(x, keys, 2, 0.0) is x


def test_wrong_number_of_keys_is_refused():
    model = _model()
    ids, cu = _flat([torch.arange(10), torch.arange(5)])
    with pytest.raises(ValueError, match="2 sequences"):
        model(ids, cu_seqlens=cu, dropout_keys=sequence_dropout_keys(0, 0, 0, 3))
