import math

import numpy as np
import pytest

from ettin.eval import metrics as M


def test_mc_predictions_follow_lm_eval_rules():
    # raw: choice 0 wins; per character: the long choice 1 wins; per byte: the multi-byte choice 2 loses
    lls = [-4.0, -6.0, -5.5]
    choices = ["ab", "abcdefgh", "é" * 6]  # 2, 8, 6 chars; 2, 8, 12 bytes
    p = M.mc_predictions(lls, choices)
    assert p["acc"] == 0
    # per char: -2, -0.75, -0.9167 -> 1; per byte: -2, -0.75, -0.458 -> 2
    assert p["acc_norm"] == 1
    assert p["acc_bytes"] == 2


def test_mc_predictions_ties_go_to_first_and_shapes_checked():
    assert M.mc_predictions([-1.0, -1.0], ["a", "b"])["acc"] == 0
    with pytest.raises(ValueError):
        M.mc_predictions([-1.0], ["a", "b"])


def test_accuracy_and_f1():
    assert M.accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    # positive class: tp=2, fp=1, fn=1 -> 4/6
    assert M.binary_f1([1, 0, 1, 1], [1, 1, 1, 0]) == pytest.approx(2 / 3)
    # class 0: tp=0 fp=1 fn=1 -> 0; class 1: 2/3 -> mean 1/3
    assert M.macro_f1([1, 0, 1, 1], [1, 1, 1, 0]) == pytest.approx(1 / 3)
    assert M.macro_f1([2, 2], [2, 2], num_classes=3) == 1.0  # absent classes are skipped
    with pytest.raises(ValueError):
        M.accuracy([1], [1, 0])


def test_ndcg_on_hand_made_rankings():
    # one relevant doc at rank 3: nDCG@10 = 1/log2(4) = 0.5; MRR = 1/3
    s = M.ranking_scores(["a", "b", "r", "c"], {"r"}, ks=(1, 10))
    assert s["ndcg@10"] == pytest.approx(0.5)
    assert s["ndcg@1"] == 0.0
    assert s["mrr"] == pytest.approx(1 / 3)
    assert s["recall@1"] == 0.0 and s["recall@10"] == 1.0
    # perfect ranking of two relevant docs
    assert M.ranking_scores(["r1", "r2", "x"], {"r1", "r2"}, ks=(10,))["ndcg@10"] == pytest.approx(1.0)
    # two relevant at ranks 1 and 3: dcg = 1 + 0.5, idcg = 1 + 1/log2(3)
    s = M.ranking_scores(["r1", "x", "r2"], {"r1", "r2"}, ks=(10,))
    assert s["ndcg@10"] == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
    # relevant doc beyond k contributes to MRR but not to nDCG@k
    ranking = [f"d{i}" for i in range(12)] + ["r"]
    s = M.ranking_scores(ranking, {"r"}, ks=(10,))
    assert s["ndcg@10"] == 0.0 and s["recall@10"] == 0.0 and s["mrr"] == pytest.approx(1 / 13)
    # graded relevance: gain is the grade (trec_eval / pytrec_eval convention)
    s = M.ranking_scores(["b", "a"], {"a": 2, "b": 1}, ks=(2,))
    assert s["ndcg@2"] == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)))


def test_ndcg_matches_pytrec_eval():
    import pytrec_eval

    qrels = {"q1": {"a": 1}, "q2": {"b": 1, "c": 1}, "q3": {"z": 1}}
    rankings = {"q1": ["x", "y", "a"], "q2": ["c", "x", "y", "b"], "q3": ["x"] * 1 + ["y"]}
    run = {q: {d: float(len(r) - i) for i, d in enumerate(r)} for q, r in rankings.items()}
    ref = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recip_rank"}).evaluate(run)
    for q, r in rankings.items():
        ours = M.ranking_scores(r, qrels[q], ks=(10,))
        assert ours["ndcg@10"] == pytest.approx(ref[q]["ndcg_cut_10"])
        assert ours["mrr"] == pytest.approx(ref[q]["recip_rank"])


def test_wilson_interval_known_values():
    low, high = M.wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    low, high = M.wilson_interval(0, 10)  # does not collapse at 0
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    assert M.wilson_interval(10, 10)[1] == 1.0
    assert all(math.isnan(v) for v in M.wilson_interval(0, 0))


def test_bootstrap_is_seeded_and_covers_the_mean():
    x = np.random.default_rng(3).random(300)
    a = M.bootstrap_interval(x, seed=7)
    assert a == M.bootstrap_interval(x, seed=7)
    assert a != M.bootstrap_interval(x, seed=8)
    assert a[0] < x.mean() < a[1]
    # roughly mean +- 1.96 sd/sqrt(n)
    se = x.std() / math.sqrt(x.size)
    assert (a[1] - a[0]) == pytest.approx(2 * 1.96 * se, rel=0.2)


def test_paired_difference():
    a = [1, 1, 1, 0, 1, 1, 1, 1] * 20
    b = [0, 1, 0, 0, 1, 0, 1, 0] * 20
    d = M.paired_difference(a, b, seed=0)
    assert d["diff"] == pytest.approx(0.5) and d["low"] > 0.3 and d["n"] == 160
    same = M.paired_difference(a, a)
    assert same["diff"] == 0.0 and same["low"] == 0.0 == same["high"]
    with pytest.raises(ValueError):
        M.paired_difference([1, 0], [1])


def test_interval_for_names_its_method():
    ci = M.interval_for("proportion", [1, 0, 1, 1])
    assert ci["method"] == "wilson" and ci["mean"] == 0.75 and ci["n"] == 4
    ci = M.interval_for("mean", [0.2, 0.4, 0.9], seed=1)
    assert ci["method"].startswith("bootstrap") and ci["low"] <= ci["mean"] <= ci["high"]
