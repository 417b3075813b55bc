import pytest
import torch

from ettin.eval import classify as C
from ettin.eval import retrieve as R
from ettin.eval.tasks import Example, RetrievalData

pytestmark = pytest.mark.usefixtures("one_thread")


def test_linear_probe_separates_separable_features_deterministically():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=g) * 4
    y = torch.arange(90) % 3
    x = centres[y] + torch.randn(90, 8, generator=g)
    probs = C.linear_probe(x[:60], y[:60].tolist(), x[60:], 3, seed=1)
    assert probs.shape == (30, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(30))
    assert (probs.argmax(-1) == y[60:]).float().mean() > 0.95
    assert torch.equal(probs, C.linear_probe(x[:60], y[:60].tolist(), x[60:], 3, seed=1))


EXAMPLES = [
    Example(f"e{i}", text, None, label)
    for i, (text, label) in enumerate(
        [
            ("good and fair", 1),
            ("foul and bad", 0),
            ("fair is fair", 1),
            ("bad is foul", 0),
            ("good good", 1),
            ("foul foul", 0),
            ("fair and good", 1),
            ("bad and foul", 0),
        ]
    )
]


@pytest.mark.parametrize("arch", ["encoder", "decoder"])
def test_finetune_is_deterministic_and_leaves_the_model_alone(arch, tiny_encoder, tiny_decoder):
    em = tiny_encoder if arch == "encoder" else tiny_decoder
    before = {k: v.clone() for k, v in em.model.state_dict().items()}
    cfg = C.FinetuneConfig(lrs=(1e-3,), epochs=2, batch_size=4)
    steps = []
    probs, info = C.finetune(em, EXAMPLES, EXAMPLES[:3], 2, cfg, seed=0, progress=steps.append)
    assert probs.shape == (3, 2) and info["lr"] == 1e-3
    assert info["pooling"] == ("mean" if arch == "encoder" else "last")
    assert sum(steps) == C.finetune_steps(len(EXAMPLES), cfg) == 4
    again, _ = C.finetune(em, EXAMPLES, EXAMPLES[:3], 2, cfg, seed=0)
    assert torch.equal(probs, again)
    assert all(torch.equal(v, em.model.state_dict()[k]) for k, v in before.items())


def test_finetune_grid_picks_on_a_dev_slice(tiny_encoder):
    cfg = C.FinetuneConfig(lrs=(1e-4, 1e-3), epochs=1, batch_size=4, dev_fraction=0.25)
    probs, info = C.finetune(tiny_encoder, EXAMPLES, EXAMPLES[:2], 2, cfg, seed=0)
    assert set(info["dev_acc"]) == {"0.0001", "0.001"} and info["n_dev"] == 2 and info["n_train"] == 6
    assert info["lr"] in (1e-4, 1e-3)


def test_pair_inputs_are_trimmed_longest_first(tiny_encoder):
    em = tiny_encoder
    keep = em.max_length
    try:
        em.max_length = 10
        ids = em.pair_with_specials(list(range(3)), list(range(100, 120)))
        c = em.config
        assert ids == [c.cls_token_id, 0, 1, 2, c.sep_token_id, 100, 101, 102, 103, c.sep_token_id]
    finally:
        em.max_length = keep


def test_rank_on_hand_made_embeddings():
    docs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [1.0, 0.0]])
    queries = torch.tensor([[1.0, 0.1], [0.0, 2.0]])
    top = R.rank(queries, docs, k=3)
    assert top[0].tolist() == [0, 3, 2]  # tie between 0 and 3 goes to the lower index
    assert top[1].tolist() == [1, 2, 0]


def test_mnrl_loss():
    e = torch.eye(4)
    # perfectly aligned pairs: loss = log(1 + 3 e^{-20})
    assert float(R.mnrl_loss(e, e)) == pytest.approx(float(torch.log(1 + 3 * torch.exp(torch.tensor(-20.0)))))
    assert float(R.mnrl_loss(e, e.roll(1, 0))) > 19  # every positive is a negative's place


def test_subset_corpus_keeps_the_relevant_documents():
    corpus = {f"d{i}": f"text {i}" for i in range(50)}
    queries = {f"q{i}": f"query {i}" for i in range(10)}
    qrels = {f"q{i}": {f"d{i * 5}": 1} for i in range(10)}
    data = RetrievalData(corpus, queries, qrels, [])
    sub = R.subset_corpus(data, ["q1", "q7"], max_docs=12, seed=0)
    assert len(sub.corpus) == 12 and {"d5", "d35"} <= set(sub.corpus)
    assert set(sub.queries) == {"q1", "q7"}
    assert sub.corpus == R.subset_corpus(data, ["q1", "q7"], max_docs=12, seed=0).corpus
    assert R.subset_corpus(data, ["q1"], max_docs=None, seed=0).corpus == corpus


def test_evaluate_retrieval_and_contrastive_tuning(tiny_encoder):
    pairs = [
        ("fair Verona", "In fair Verona, where we lay our scene"),
        ("a rose", "A rose by any other name would smell as sweet"),
        ("the winter", "Now is the winter of our discontent"),
        ("to be", "To be, or not to be, that is the question"),
    ]
    data = RetrievalData(
        {f"d{i}": d for i, (_, d) in enumerate(pairs)},
        {f"q{i}": q for i, (q, _) in enumerate(pairs)},
        {f"q{i}": {f"d{i}": 1} for i in range(4)},
        pairs,
    )
    res = R.evaluate_retrieval(tiny_encoder, data)
    assert res["query_ids"] == ["q0", "q1", "q2", "q3"] and len(res["per_query"]) == 4
    assert all(0 <= q["ndcg@10"] <= 1 for q in res["per_query"])
    before = {k: v.clone() for k, v in tiny_encoder.model.state_dict().items()}
    steps = []
    cfg = R.ContrastiveConfig(lr=1e-3, epochs=3, batch_size=4)
    tuned = R.contrastive_finetune(tiny_encoder, pairs, cfg, seed=0, progress=steps.append)
    assert sum(steps) == R.contrastive_steps(4, cfg) == 3
    assert tuned.info["contrastive"]["scale"] == 20.0
    assert all(torch.equal(v, tiny_encoder.model.state_dict()[k]) for k, v in before.items())
    assert not all(torch.equal(v, tuned.model.state_dict()[k]) for k, v in before.items())
