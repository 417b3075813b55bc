"""Scores and their uncertainty.

Pure functions on plain Python/numpy values, so every number in a report can be checked by hand.
Intervals are 95% unless asked otherwise: Wilson's score interval for proportions (accuracy), a
seeded percentile bootstrap over items for everything else (nDCG, MRR, differences between two
models on the same items).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

Z95 = 1.959963984540054


# ----------------------------------------------------------------------------------- choice tasks


def mc_predictions(loglikelihoods: Sequence[float], choices: Sequence[str]) -> dict[str, int]:
    """The chosen index under lm-evaluation-harness's three rules.

    `acc` takes the highest log-likelihood; `acc_norm` divides it by the choice's length in
    characters and `acc_bytes` by its length in UTF-8 bytes (lm-eval 0.4.x `Task.process_results`;
    the leading space that joins context and choice is not counted). Ties go to the first index, as
    numpy's argmax does.
    """
    lls = np.asarray(loglikelihoods, dtype=np.float64)
    if lls.shape != (len(choices),):
        raise ValueError(f"{lls.shape[0] if lls.ndim else 0} log-likelihoods for {len(choices)} choices")
    chars = np.array([max(len(c), 1) for c in choices], dtype=np.float64)
    nbytes = np.array([max(len(c.encode("utf-8")), 1) for c in choices], dtype=np.float64)
    return {
        "acc": int(np.argmax(lls)),
        "acc_norm": int(np.argmax(lls / chars)),
        "acc_bytes": int(np.argmax(lls / nbytes)),
    }


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        return float("nan")
    return float(np.mean(np.asarray(predictions) == np.asarray(labels)))


def macro_f1(predictions: Sequence[int], labels: Sequence[int], num_classes: int | None = None) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions."""
    p, y = np.asarray(predictions), np.asarray(labels)
    classes = range(num_classes) if num_classes is not None else sorted(set(p.tolist()) | set(y.tolist()))
    scores = []
    for c in classes:
        tp = int(np.sum((p == c) & (y == c)))
        fp = int(np.sum((p == c) & (y != c)))
        fn = int(np.sum((p != c) & (y == c)))
        if tp + fp + fn == 0:
            continue
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else float("nan")


def binary_f1(predictions: Sequence[int], labels: Sequence[int], positive: int = 1) -> float:
    """F1 of the positive class (GLUE reports this for MRPC)."""
    p, y = np.asarray(predictions), np.asarray(labels)
    tp = int(np.sum((p == positive) & (y == positive)))
    fp = int(np.sum((p == positive) & (y != positive)))
    fn = int(np.sum((p != positive) & (y == positive)))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")


# -------------------------------------------------------------------------------------- retrieval


def ranking_scores(
    ranking: Sequence[str], relevant: Mapping[str, float] | set[str] | Sequence[str], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """nDCG@k, recall@k and MRR of one ranked list of document ids.

    `relevant` maps doc id -> graded relevance (a set means relevance 1 each). nDCG uses the
    exponential-free form used by MTEB/pytrec_eval (gain = relevance, discount = log2(rank + 1)),
    the ideal ranking built from all relevant documents, including any not retrieved. MRR is the
    reciprocal rank of the first relevant document anywhere in the list (0 if none).
    """
    rel = dict(relevant) if isinstance(relevant, Mapping) else {d: 1.0 for d in relevant}
    rel = {d: float(g) for d, g in rel.items() if g > 0}
    out: dict[str, float] = {}
    ideal = sorted(rel.values(), reverse=True)
    for k in ks:
        dcg = sum(rel.get(d, 0.0) / math.log2(i + 2) for i, d in enumerate(ranking[:k]))
        idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal[:k]))
        out[f"ndcg@{k}"] = dcg / idcg if idcg > 0 else 0.0
        out[f"recall@{k}"] = (sum(1 for d in ranking[:k] if d in rel) / len(rel)) if rel else 0.0
    out["mrr"] = next((1.0 / (i + 1) for i, d in enumerate(ranking) if d in rel), 0.0)
    return out


def mean_scores(per_query: Sequence[Mapping[str, float]]) -> dict[str, float]:
    if not per_query:
        return {}
    return {k: float(np.mean([q[k] for q in per_query])) for k in per_query[0]}


# -------------------------------------------------------------------------------------- intervals


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion: sensible at 0, 1 and small n, unlike the normal one."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes <= 0 else max(0.0, centre - half)
    high = 1.0 if successes >= n else min(1.0, centre + half)
    return (low, high)


def bootstrap_interval(
    values: Sequence[float], seed: int = 0, n_resamples: int = 1000, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap of the mean over items, seeded so a report is reproducible."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_resamples, x.size))
    means = x[idx].mean(axis=1)
    alpha = (1 - level) / 2
    return (float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)))


def paired_difference(
    a: Sequence[float], b: Sequence[float], seed: int = 0, n_resamples: int = 1000, level: float = 0.95
) -> dict[str, float]:
    """Mean of a - b over the same items with a paired bootstrap interval.

    Pairing removes the item-difficulty variance both models share, so it detects smaller gaps than
    comparing two separate intervals.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired scores differ in length: {x.size} vs {y.size}")
    d = x - y
    low, high = bootstrap_interval(d, seed=seed, n_resamples=n_resamples, level=level)
    return {"diff": float(d.mean()) if d.size else float("nan"), "low": low, "high": high, "n": int(d.size)}


def interval_for(metric_kind: str, per_item: Sequence[float], seed: int = 0) -> dict:
    """The interval a task reports: Wilson for 0/1 scores, bootstrap otherwise; says which."""
    n = len(per_item)
    mean = float(np.mean(per_item)) if n else float("nan")
    if metric_kind == "proportion":
        low, high = wilson_interval(float(np.sum(per_item)), n)
        method = "wilson"
    else:
        low, high = bootstrap_interval(per_item, seed=seed)
        method = "bootstrap-percentile-1000"
    return {"low": low, "high": high, "level": 0.95, "method": method, "mean": mean, "n": n}
