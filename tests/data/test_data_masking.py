import numpy as np
import pytest
import torch

from ettin.data.masking import IGNORE_INDEX, make_inputs
from ettin.errors import EttinError

SPECIAL = {
    "unk_token_id": 95,
    "cls_token_id": 96,
    "sep_token_id": 97,
    "pad_token_id": 98,
    "mask_token_id": 99,
    "bos_token_id": 96,
    "eos_token_id": 97,
}
VOCAB = 100
CLS, SEP, MASK = 96, 97, 99


def samples(n=64, seed=0, max_len=40, end_sep_every=3):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        body = rng.integers(0, 95, size=int(rng.integers(1, max_len)))
        seq = [CLS, *body.tolist()] + ([SEP] if i % end_sep_every == 0 else [])
        out.append(np.asarray(seq, np.int32))
    return out


def inputs(objective, s, **kw):
    kw.setdefault("mask_rate", 0.3)
    return make_inputs(
        s, objective, special_ids=SPECIAL, vocab_size=VOCAB, seed=kw.pop("seed", 1), step=kw.pop("step", 7), **kw
    )


def test_layout_and_sep_rule():
    s = samples(10)
    enc, dec = inputs("mlm", s), inputs("clm", s)
    lens_enc = (enc.cu_seqlens[1:] - enc.cu_seqlens[:-1]).tolist()
    assert lens_enc == [len(x) if x[-1] == SEP else len(x) + 1 for x in s]  # encoder samples end with [SEP]
    assert (dec.cu_seqlens[1:] - dec.cu_seqlens[:-1]).tolist() == [len(x) for x in s]
    for b in (enc, dec):
        assert b.input_ids.dtype == torch.int64 and b.labels.dtype == torch.int64 and b.cu_seqlens.dtype == torch.int32
        assert b.num_sequences == 10 and b.num_tokens == int(b.cu_seqlens[-1]) == b.labels.numel()
        assert b.max_seqlen == max(lens_enc if b is enc else [len(x) for x in s])
        assert b.num_label_tokens == int((b.labels != IGNORE_INDEX).sum())


def test_clm_labels_shift_within_sequences_only():
    s = samples(20)
    b = inputs("clm", s)
    ids, labels, cu = b.input_ids.numpy(), b.labels.numpy(), b.cu_seqlens.numpy()
    assert np.array_equal(ids, np.concatenate(s))
    for a, e in zip(cu[:-1], cu[1:]):
        assert np.array_equal(labels[a : e - 1], ids[a + 1 : e])
        assert labels[e - 1] == IGNORE_INDEX  # no loss across a boundary
    assert b.num_label_tokens == b.num_tokens - b.num_sequences


def test_mlm_proportions_and_specials():
    s = samples(4000, max_len=80)
    b = inputs("mlm", s, mask_rate=0.3)
    plain = np.concatenate([x if x[-1] == SEP else np.append(x, SEP) for x in s]).astype(np.int64)
    ids, labels = b.input_ids.numpy(), b.labels.numpy()
    chosen = labels != IGNORE_INDEX
    special = np.isin(plain, [CLS, SEP])
    assert not (chosen & special).any()  # specials never masked
    assert np.array_equal(ids[special], plain[special])
    assert np.array_equal(labels[chosen], plain[chosen])
    rate = chosen.sum() / (~special).sum()
    assert abs(rate - 0.3) < 0.01
    masked = ids[chosen] == MASK
    kept = ids[chosen] == plain[chosen]
    n = chosen.sum()
    assert abs(masked.mean() - 0.8) < 0.01
    # "unchanged" also catches random draws that hit the original id (1/95 of the random 10%)
    assert abs(kept.mean() - (0.1 + 0.1 / 95)) < 0.01
    replaced = ~masked & ~kept
    assert abs(replaced.sum() / n - 0.1 * 94 / 95) < 0.01
    assert not np.isin(ids[chosen][replaced], list(SPECIAL.values())).any()  # random ids are never special
    assert np.array_equal(ids[~chosen], plain[~chosen])


def test_mntp_labels_sit_one_position_early():
    s = samples(200)
    mlm, mntp = inputs("mlm", s), inputs("mntp", s)
    assert torch.equal(mlm.input_ids, mntp.input_ids)  # same masking (no masked position is a sequence start)
    pos_mlm = torch.nonzero(mlm.labels != IGNORE_INDEX).flatten()
    pos_mntp = torch.nonzero(mntp.labels != IGNORE_INDEX).flatten()
    assert torch.equal(pos_mntp, pos_mlm - 1)
    assert torch.equal(mntp.labels[pos_mntp], mlm.labels[pos_mlm])
    starts = set(mntp.cu_seqlens[:-1].tolist())
    assert not starts & set(pos_mlm.tolist())


def test_deterministic_and_independent_of_split():
    s = samples(30)
    full = inputs("mlm", s, seed=3, step=11)
    again = inputs("mlm", s, seed=3, step=11)
    assert torch.equal(full.input_ids, again.input_ids) and torch.equal(full.labels, again.labels)
    other_step = inputs("mlm", s, seed=3, step=12)
    assert not torch.equal(other_step.labels, full.labels)
    # a micro-batch built on its own with first_index == its slice of the full batch
    a, b = int(full.cu_seqlens[10]), int(full.cu_seqlens[25])
    part = inputs("mlm", s[10:25], seed=3, step=11, first_index=10)
    assert torch.equal(part.input_ids, full.input_ids[a:b]) and torch.equal(part.labels, full.labels[a:b])
    assert torch.equal(part.cu_seqlens, full.cu_seqlens[10:26] - a)
    # any split into micro-batches, each built on its own, gives the full batch back
    bounds = [0, 7, 8, 19, 30]
    parts = [inputs("mlm", s[i:j], seed=3, step=11, first_index=i) for i, j in zip(bounds[:-1], bounds[1:])]
    assert torch.equal(torch.cat([p.input_ids for p in parts]), full.input_ids)
    assert torch.equal(torch.cat([p.labels for p in parts]), full.labels)
    assert sum(p.num_label_tokens for p in parts) == full.num_label_tokens


def test_zero_rate_and_errors():
    s = samples(5)
    b = inputs("mlm", s, mask_rate=0.0)
    assert b.num_label_tokens == 0
    with pytest.raises(EttinError, match="objective"):
        inputs("nsp", s)
    with pytest.raises(EttinError, match="mask_rate"):
        inputs("mlm", s, mask_rate=1.5)
    with pytest.raises(EttinError, match="mask_token_id"):
        make_inputs(s, "mlm", special_ids={"sep_token_id": SEP}, vocab_size=VOCAB)
