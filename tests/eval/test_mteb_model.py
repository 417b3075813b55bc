"""The MTEB adapter, and a cross-check of our retrieval harness against MTEB itself.

The reference embedder that a package ships (all-MiniLM-L6-v2) must score the same nDCG@10 on the
same retrieval subset under our harness and under MTEB. An ettin model goes through MTEB with the
very embeddings our harness computes, so MTEB must reproduce our harness's score for it.
"""

from __future__ import annotations

import pytest
import torch

from ettin.config import config_for_size  # noqa: E402
from ettin.eval.metrics import mean_scores  # noqa: E402
from ettin.eval.mteb_model import EttinMTEBEncoder, evaluate, reference_cross_check, retrieval_task, task_for  # noqa: E402
from ettin.model import EttinModel  # noqa: E402

TOL = 0.01  # the bound for the reference cross-check


def _check_reference(n_queries: int, n_docs: int, max_seq_length: int) -> None:
    r = reference_cross_check(n_queries, n_docs, max_seq_length=max_seq_length)
    print(
        f"\nall-MiniLM-L6-v2 nDCG@10, {r['queries']} queries / {r['documents']} docs: "
        f"ours {r['ours']:.5f}, MTEB {r['mteb']:.5f}"
    )
    assert (r["queries"], r["documents"]) == (n_queries, n_docs)
    assert r["ours"] > 0.5  # a real embedder on a real task, not a degenerate ranking
    assert abs(r["ours"] - r["mteb"]) <= TOL


def test_reference_embedder_scores_the_same_under_our_harness_and_mteb():
    # short texts and a small corpus keep this to a few hundred MiniLM encodes
    _check_reference(n_queries=80, n_docs=160, max_seq_length=128)


@pytest.mark.slow
def test_reference_cross_check_at_full_length_on_a_larger_subset():
    _check_reference(n_queries=300, n_docs=1000, max_seq_length=256)


def _tiny(arch: str, tokenizer_dir) -> EttinMTEBEncoder:
    torch.manual_seed(0)
    model = EttinModel(config_for_size("tiny", arch=arch, vocab_size=1024))
    return EttinMTEBEncoder(model, tokenizer=tokenizer_dir, name=f"tiny-{arch}", max_length=64)


@pytest.mark.parametrize("arch,pooling", [("encoder", "mean"), ("decoder", "last")])
def test_wrapper_hands_mteb_our_embeddings(arch, pooling, small_tokenizer_dir):
    from ettin.eval.pooling import embed_texts

    wrapper = _tiny(arch, small_tokenizer_dir)
    assert wrapper.pooling == pooling
    texts = ["Art movement", "Capital city of France", "A play by Shakespeare", "x"]
    batches = [{"text": texts[:3]}, {"text": texts[3:]}]  # MTEB hands over a loader of such batches
    got = torch.as_tensor(wrapper.encode(batches, task_metadata=None, hf_split="test", hf_subset="default"))
    want = embed_texts(wrapper.em, texts, pooling, normalize=True)
    assert got.shape == (4, wrapper.em.config.hidden_size)
    torch.testing.assert_close(got, want)


def test_mteb_reproduces_our_retrieval_score_for_an_ettin_encoder(small_tokenizer_dir):
    from ettin.eval.retrieve import evaluate_retrieval

    wrapper = _tiny("encoder", small_tokenizer_dir)
    _, data = task_for("wiki_retrieval", max_queries=20, max_corpus_docs=40)
    ours = mean_scores(evaluate_retrieval(wrapper.em, data)["per_query"])["ndcg@10"]
    theirs = evaluate(wrapper, [retrieval_task("wiki_retrieval_small", data)])["wiki_retrieval_small"]["ndcg_at_10"]
    assert abs(ours - theirs) <= 1e-4  # MTEB rounds its scores to 5 decimals


def test_a_decoder_runs_under_mteb(small_tokenizer_dir):
    _, data = task_for("wiki_retrieval", max_queries=5, max_corpus_docs=10)
    scores = evaluate(_tiny("decoder", small_tokenizer_dir), [retrieval_task("wiki_retrieval_tiny", data)])
    assert 0.0 <= scores["wiki_retrieval_tiny"]["ndcg_at_10"] <= 1.0
