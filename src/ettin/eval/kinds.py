"""How each task kind is scored: one function per kind returning a `Score`, and `run_task`, which
wraps one in a `TaskResult` (a failure inside a task is recorded, never raised).

Results depend only on the model, the suite and the seed.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ettin.errors import EttinError
from ettin.eval import classify, metrics, retrieve, score
from ettin.eval.handle import EvalModel, NonFiniteOutput
from ettin.eval.pooling import POOLINGS, default_pooling
from ettin.eval.result import Score, TaskResult
from ettin.eval.tasks import Suite, Task, get_task, subsample

# Fine-tuning settings of the full suite (CPU-sized; the paper's grid is 1e-5..3e-4).
FULL_FINETUNE = classify.FinetuneConfig(lrs=(3e-5, 1e-4, 3e-4), epochs=2, batch_size=16, max_length=256)
FULL_CONTRASTIVE = retrieve.ContrastiveConfig(lr=1e-4, epochs=1, batch_size=32, max_length=256)


class Progress:
    """What the runner reports while it works; the CLI passes a rich progress bar, the library a no-op."""

    def start(self, label: str, total: int | None) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def finish(self, label: str, result: TaskResult) -> None:
        pass


# ----------------------------------------------------------------------------------------- tasks


def _interval(kind: str, per_item: Sequence[float], seed: int) -> dict:
    ci = metrics.interval_for(kind, per_item, seed=seed)
    return {k: ci[k] for k in ("low", "high", "level", "method")}


def run_classification(
    em: EvalModel,
    task: Task,
    suite: Suite,
    seed: int,
    progress: Progress,
    pooling: str | None = None,
    finetune_cfg: classify.FinetuneConfig | None = None,
) -> Score:
    data = task.load()
    train = subsample(data.train, suite.max_train_items, seed)
    ev = subsample(data.eval, suite.eval_items(task.kind), seed)
    n_classes = len(data.labels)
    how = pooling or default_pooling(em.arch)
    if suite.classification == "probe":
        progress.start(f"{task.name}: features", len(train) + len(ev))
        train_x = classify.features(em, train, how, suite.max_length)
        progress.advance(len(train))
        eval_x = classify.features(em, ev, how, suite.max_length)
        progress.advance(len(ev))
        probs = classify.linear_probe(train_x, [e.label for e in train], eval_x, n_classes, seed=seed)
        method = f"linear probe: frozen {how}-pooled features, L2 logistic regression (L-BFGS), {len(train)} train"
        details: dict[str, Any] = {"n_train": len(train), "pooling": how}
    else:
        cfg = finetune_cfg or FULL_FINETUNE
        cfg = classify.FinetuneConfig(**{**cfg.__dict__, "pooling": how})
        progress.start(f"{task.name}: fine-tune", classify.finetune_steps(len(train), cfg))
        probs, details = classify.finetune(em, train, ev, n_classes, cfg, seed=seed, progress=progress.advance)
        method = (
            f"fine-tuning: {how} pooling + linear head, AdamW, lr {details['lr']:g} picked on a dev slice "
            f"from {list(cfg.lrs)}, {cfg.epochs} epochs"
        )
    pred = probs.argmax(-1).tolist()
    gold = [e.label for e in ev]
    correct = [float(p == y) for p, y in zip(pred, gold)]
    values = {"acc": float(np.mean(correct)), "macro_f1": metrics.macro_f1(pred, gold, n_classes)}
    if "f1" in task.metrics:
        values["f1"] = metrics.binary_f1(pred, gold)
    train_labels = [e.label for e in train]
    majority = max(set(train_labels), key=lambda c: (train_labels.count(c), -c))
    chance = float(np.mean([y == majority for y in gold]))
    return Score(
        metric="acc",
        value=values["acc"],
        metrics=values,
        n=len(ev),
        ci=_interval("proportion", correct, seed),
        chance=chance,
        chance_rule="accuracy of always predicting the train set's majority class",
        method=method,
        details=details,
        item_ids=[e.id for e in ev],
        per_item=correct,
    )


def _random_ndcg(n_docs: int, k: int = 10) -> float:
    """Expected nDCG@k of a random ranking with one relevant document among n_docs."""
    return sum(1 / math.log2(r + 1) for r in range(1, min(k, n_docs) + 1)) / n_docs if n_docs else 0.0


def run_retrieval(
    em: EvalModel,
    task: Task,
    suite: Suite,
    seed: int,
    progress: Progress,
    pooling: str | None = None,
    tuned_cache: dict | None = None,
    contrastive_cfg: retrieve.ContrastiveConfig | None = None,
) -> Score:
    data = task.load()
    query_ids = subsample(sorted(data.queries), suite.eval_items(task.kind), seed)
    sub = retrieve.subset_corpus(data, query_ids, suite.max_corpus_docs, seed)
    how = pooling or default_pooling(em.arch)
    progress.start(f"{task.name}: embed {len(sub.corpus)} docs", None)
    zero = retrieve.evaluate_retrieval(em, sub, pooling=how, max_length=suite.max_length)
    zs_means = metrics.mean_scores(zero["per_query"])
    result_from = zero
    method = f"zero-shot: {how} pooling, cosine similarity, {len(sub.corpus)} documents"
    details: dict[str, Any] = {"pooling": how, "corpus": len(sub.corpus), "zero_shot": zs_means}
    if suite.retrieval_finetune:
        cfg = contrastive_cfg or FULL_CONTRASTIVE
        cfg = retrieve.ContrastiveConfig(**{**cfg.__dict__, **suite.contrastive, "pooling": how})
        pairs = subsample(data.train_pairs, suite.max_train_items, seed)
        key = (id(em.model), id(data.train_pairs), len(pairs), how)
        cache = tuned_cache if tuned_cache is not None else {}
        if key not in cache:
            progress.start(f"{task.name}: contrastive fine-tune", retrieve.contrastive_steps(len(pairs), cfg))
            cache[key] = retrieve.contrastive_finetune(em, pairs, cfg, seed=seed, progress=progress.advance)
        tuned = cache[key]
        progress.start(f"{task.name}: embed (tuned)", None)
        result_from = retrieve.evaluate_retrieval(tuned, sub, pooling=how, max_length=suite.max_length)
        details["contrastive"] = tuned.info["contrastive"]
        method = (
            f"contrastive fine-tuning (multiple-negatives ranking, scale {cfg.scale:g}, "
            f"{tuned.info['contrastive']['steps']} steps on {len(pairs)} pairs), then {how} pooling, "
            f"cosine similarity, {len(sub.corpus)} documents; zero-shot scores in details"
        )
    means = metrics.mean_scores(result_from["per_query"])
    per_item = [q["ndcg@10"] for q in result_from["per_query"]]
    return Score(
        metric="ndcg@10",
        value=means["ndcg@10"],
        metrics=means,
        n=len(query_ids),
        ci=_interval("mean", per_item, seed),
        chance=_random_ndcg(len(sub.corpus)),
        chance_rule="expected nDCG@10 of a random ranking",
        method=method,
        details=details,
        item_ids=result_from["query_ids"],
        per_item=per_item,
    )


def run_multiple_choice(em: EvalModel, task: Task, suite: Suite, seed: int, progress: Progress) -> Score:
    items = subsample(task.load(), suite.eval_items(task.kind), seed)
    requests = [r for it in items for r in it.requests]
    progress.start(f"{task.name}: score {len(requests)} choices", score.progress_units(em, requests))
    scored = score.score_requests(em, requests, progress=progress.advance)
    per: dict[str, list[float]] = {"acc": [], "acc_norm": [], "acc_bytes": []}
    k = 0
    for it in items:
        lls = [s for s, _ in scored[k : k + len(it.requests)]]
        k += len(it.requests)
        pred = metrics.mc_predictions(lls, it.choices)
        for name in per:
            per[name].append(float(pred[name] == it.gold))
    names = list(task.metrics)
    values = {name: float(np.mean(per[name])) for name in names}
    how = (
        "log-likelihood of each choice after [CLS] + context (lm-eval style)"
        if em.arch == "decoder"
        else "pseudo-log-likelihood of each choice: each choice token masked in turn in [CLS] context choice [SEP]"
    )
    if task.norm_applicable:
        how += "; acc_norm divides by the choice's length in characters (lm-eval), acc_bytes by UTF-8 bytes"
    else:
        how += "; the choice completes the context and the shared rest is scored (lm-eval's partial scoring)"
    return Score(
        metric=task.metric,
        value=values[task.metric],
        metrics=values,
        n=len(items),
        ci=_interval("proportion", per[task.metric], seed),
        chance=float(np.mean([1 / len(it.choices) for it in items])),
        chance_rule="1 / number of choices",
        method=how,
        details={},
        item_ids=[it.id for it in items],
        per_item=per[task.metric],
    )


def run_generation(em: EvalModel, task: Task, suite: Suite, seed: int, progress: Progress) -> Score:
    items = subsample(task.load(), suite.eval_items(task.kind), seed)
    pairs = [(it.context, it.target) for it in items]
    progress.start(f"{task.name}: greedy", score.progress_units(em, pairs))
    ok = [float(x) for x in score.greedy_matches(em, pairs, progress=progress.advance)]
    how = (
        "greedy decoding after [CLS] + context (computed teacher-forced: identical outcome)"
        if em.arch == "decoder"
        else f"iterative masked filling: {score.DEFAULT_N_MASKS} [MASK] + [SEP] appended, the first mask filled "
        "greedily, repeated (computed teacher-forced: identical outcome)"
    )
    return Score(
        metric="acc",
        value=float(np.mean(ok)) if ok else float("nan"),
        metrics={"acc": float(np.mean(ok))},
        n=len(items),
        ci=_interval("proportion", ok, seed),
        chance=0.0,
        chance_rule="exact match of an open vocabulary: about 0",
        method=f"{how}; correct when every token of the last word is reproduced",
        details={},
        item_ids=[it.id for it in items],
        per_item=ok,
    )


RUNNERS = {
    "classification": run_classification,
    "retrieval": run_retrieval,
    "multiple_choice": run_multiple_choice,
    "generation": run_generation,
}


def check_pooling(pooling: str | None, arch: str) -> None:
    if pooling is None:
        return
    if pooling not in POOLINGS:
        raise EttinError(f"unknown pooling '{pooling}'", field="pooling", fix=f"choose from: {', '.join(POOLINGS)}")
    if pooling == "cls" and arch == "decoder":
        raise EttinError(
            "a decoder cannot use CLS pooling: under its causal mask the first token has seen only itself",
            field="pooling",
            fix="use 'last' (the paper's choice) or 'mean' for a decoder",
        )


def run_task(
    em: EvalModel,
    name: str,
    suite: Suite,
    seed: int = 0,
    progress: Progress | None = None,
    pooling: str | None = None,
    tuned_cache: dict | None = None,
) -> TaskResult:
    """One task's result; never raises for a failure inside the task (no score, the error instead), except
    NonFiniteOutput: a model that gives NaN or inf is damaged, and no task of it can be scored."""
    progress = progress or Progress()
    task = get_task(name)
    result = TaskResult(
        task=name,
        kind=task.kind,
        model=em.name,
        arch=em.arch,
        suite=suite.name,
        seed=seed,
        description=task.description,
        source=task.source,
        split=task.split,
    )
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    try:
        kwargs: dict[str, Any] = {}
        if task.kind in ("classification", "retrieval"):
            kwargs["pooling"] = pooling
        if task.kind == "retrieval":
            kwargs["tuned_cache"] = tuned_cache
        result.score = RUNNERS[task.kind](em, task, suite, seed, progress, **kwargs)
    except (KeyboardInterrupt, NonFiniteOutput):  # a damaged model is no task's failure: evaluation stops
        raise
    except EttinError as exc:
        result.error = str(exc)
    except Exception as exc:  # a bug or a resource problem in one task must not lose the others
        result.error = f"{type(exc).__name__}: {exc}"
        result.traceback = traceback.format_exc()
    result.seconds = round(time.perf_counter() - t0, 3)
    progress.finish(name, result)
    return result
