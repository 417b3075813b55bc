import pytest
import torch

from ettin.eval import pooling as P
from ettin.eval.handle import hidden_flat, token_batches

pytestmark = pytest.mark.usefixtures("one_thread")


def test_pooling_on_hand_made_tensors():
    h = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)  # row0: 0..3, row1: 4..7
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    assert P.mean_pool(h, right).squeeze(1).tolist() == [1.0, 4.5]
    assert P.cls_pool(h, right).squeeze(1).tolist() == [0.0, 4.0]
    assert P.last_token_pool(h, right).squeeze(1).tolist() == [2.0, 5.0]
    assert P.cls_pool(h, left).squeeze(1).tolist() == [1.0, 6.0]
    assert P.last_token_pool(h, left).squeeze(1).tolist() == [3.0, 7.0]
    assert P.mean_pool(h, left).squeeze(1).tolist() == [2.0, 6.5]


def test_pool_flat_matches_padded():
    torch.manual_seed(0)
    lengths = [3, 1, 4]
    flat = torch.randn(sum(lengths), 5)
    cu = torch.tensor([0, 3, 4, 8], dtype=torch.int32)
    padded = torch.zeros(3, 4, 5)
    mask = torch.zeros(3, 4, dtype=torch.long)
    for i, (a, n) in enumerate(zip([0, 3, 4], lengths)):
        padded[i, :n] = flat[a : a + n]
        mask[i, :n] = 1
    for how, fn in (("mean", P.mean_pool), ("cls", P.cls_pool), ("last", P.last_token_pool)):
        torch.testing.assert_close(P.pool_flat(flat, cu, how), fn(padded, mask))
    with pytest.raises(ValueError):
        P.pool_flat(flat, cu, "max")


def test_default_pooling_follows_the_paper():
    assert P.default_pooling("encoder") == "mean" and P.default_pooling("decoder") == "last"


def test_token_batches_cover_everything_once():
    lengths = [5, 1, 9, 3, 3, 7]
    batches = list(token_batches(lengths, batch_tokens=10))
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert all(sum(lengths[i] for i in b) <= 10 or len(b) == 1 for b in batches)


@pytest.mark.parametrize("arch", ["encoder", "decoder"])
def test_hidden_flat_equals_one_sequence_at_a_time(arch, tiny_encoder, tiny_decoder):
    """Padding a decoder batch and grouping an encoder batch by length change nothing."""
    em = tiny_encoder if arch == "encoder" else tiny_decoder
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, 1000, (n,), generator=g).tolist() for n in (7, 3, 7, 12, 1)]
    with torch.no_grad():
        h, cu = hidden_flat(em.model, seqs)
        direct = torch.cat([em.model.hidden_states(torch.tensor([s]))[0] for s in seqs])
    assert cu.tolist() == [0, 7, 10, 17, 29, 30]
    torch.testing.assert_close(h, direct, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["encoder", "decoder"])
def test_embed_texts_is_deterministic_and_independent_of_batching(arch, tiny_encoder, tiny_decoder):
    em = tiny_encoder if arch == "encoder" else tiny_decoder
    texts = ["To be, or not to be", "that is the question", "Whether 'tis nobler in the mind to suffer", "O"]
    a = P.embed_texts(em, texts)
    assert a.shape == (4, em.config.hidden_size)
    keep = em.batch_tokens
    try:
        em.batch_tokens = 8  # one text per batch
        b = P.embed_texts(em, texts)
    finally:
        em.batch_tokens = keep
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert torch.equal(a, P.embed_texts(em, texts))
    # the decoder's embedding is its last token's state: the [SEP] after the text
    if arch == "decoder":
        ids = em.with_specials(em.encode(texts[0]))
        with torch.no_grad():
            h = em.model.hidden_states(torch.tensor([ids]))[0, -1]
        torch.testing.assert_close(a[0], h, rtol=1e-4, atol=1e-5)
