"""Run tasks on models: `evaluate_model` for one model, `compare_models` / `compare_run` for a pair.

Each task writes `<out>/<task>.json` as soon as it finishes (atomically), then `results.json`
collects them. A task that fails records its error and the others go on; callers decide the exit
status from `results["failed"]`. Results depend only on the model, the suite and the seed.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ettin.errors import EttinError
from ettin.eval import classify, metrics, retrieve, score
from ettin.eval.handle import EvalModel, load_eval_model
from ettin.eval.pooling import POOLINGS, default_pooling
from ettin.eval.tasks import SUITES, Suite, Task, get_suite, get_task, resolve_tasks, subsample
from ettin.io import atomic_write_json

RESULTS_FILE = "results.json"

# Fine-tuning settings of the full suite (CPU-sized; the paper's grid is 1e-5..3e-4).
FULL_FINETUNE = classify.FinetuneConfig(lrs=(3e-5, 1e-4, 3e-4), epochs=2, batch_size=16, max_length=256)
FULL_CONTRASTIVE = retrieve.ContrastiveConfig(lr=1e-4, epochs=1, batch_size=32, max_length=256)


class Progress:
    """What the runner reports while it works; the CLI passes a rich progress bar, the library a no-op."""

    def start(self, label: str, total: int | None) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def finish(self, label: str, result: dict) -> None:
        pass


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run with `n` intra-op threads (None: leave torch's setting), restoring the previous count.

    On a CPU other processes also use, small models evaluate far faster with one thread: with two,
    every one of the many small ops waits for both threads to be scheduled.
    """
    if n is None:
        yield torch.get_num_threads()
        return
    if n < 1:
        raise EttinError(f"threads {n} must be at least 1", field="threads")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------- tasks


def _interval(kind: str, per_item: Sequence[float], seed: int) -> dict:
    ci = metrics.interval_for(kind, per_item, seed=seed)
    return {k: ci[k] for k in ("low", "high", "level", "method")}


def _max_length(suite: Suite) -> int | None:
    return suite.max_length


def run_classification(
    em: EvalModel,
    task: Task,
    suite: Suite,
    seed: int,
    progress: Progress,
    pooling: str | None = None,
    finetune_cfg: classify.FinetuneConfig | None = None,
) -> dict:
    data = task.load()
    train = subsample(data.train, suite.max_train_items, seed)
    ev = subsample(data.eval, suite.eval_items(task.kind), seed)
    n_classes = len(data.labels)
    how = pooling or default_pooling(em.arch)
    if suite.classification == "probe":
        progress.start(f"{task.name}: features", len(train) + len(ev))
        train_x = classify.features(em, train, how, _max_length(suite))
        progress.advance(len(train))
        eval_x = classify.features(em, ev, how, _max_length(suite))
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
    return {
        "metric": "acc",
        "value": values["acc"],
        "metrics": values,
        "n": len(ev),
        "ci": _interval("proportion", correct, seed),
        "chance": chance,
        "chance_rule": "accuracy of always predicting the train set's majority class",
        "method": method,
        "details": details,
        "item_ids": [e.id for e in ev],
        "per_item": correct,
    }


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
) -> dict:
    data = task.load()
    query_ids = subsample(sorted(data.queries), suite.eval_items(task.kind), seed)
    sub = retrieve.subset_corpus(data, query_ids, suite.max_corpus_docs, seed)
    how = pooling or default_pooling(em.arch)
    progress.start(f"{task.name}: embed {len(sub.corpus)} docs", None)
    zero = retrieve.evaluate_retrieval(em, sub, pooling=how, max_length=_max_length(suite))
    zs_means = metrics.mean_scores(zero["per_query"])
    result_from = zero
    method = f"zero-shot: {how} pooling, cosine similarity, {len(sub.corpus)} documents"
    details: dict[str, Any] = {"pooling": how, "corpus": len(sub.corpus), "zero_shot": zs_means}
    if suite.retrieval_finetune:
        cfg = contrastive_cfg or FULL_CONTRASTIVE
        cfg = retrieve.ContrastiveConfig(**{**cfg.__dict__, "pooling": how})
        pairs = subsample(data.train_pairs, suite.max_train_items, seed)
        key = (id(em.model), id(data.train_pairs), len(pairs), how)
        cache = tuned_cache if tuned_cache is not None else {}
        if key not in cache:
            progress.start(f"{task.name}: contrastive fine-tune", retrieve.contrastive_steps(len(pairs), cfg))
            cache[key] = retrieve.contrastive_finetune(em, pairs, cfg, seed=seed, progress=progress.advance)
        tuned = cache[key]
        progress.start(f"{task.name}: embed (tuned)", None)
        result_from = retrieve.evaluate_retrieval(tuned, sub, pooling=how, max_length=_max_length(suite))
        details["contrastive"] = tuned.info["contrastive"]
        method = (
            f"contrastive fine-tuning (multiple-negatives ranking, scale {cfg.scale:g}, "
            f"{tuned.info['contrastive']['steps']} steps on {len(pairs)} pairs), then {how} pooling, "
            f"cosine similarity, {len(sub.corpus)} documents; zero-shot scores in details"
        )
    means = metrics.mean_scores(result_from["per_query"])
    per_item = [q["ndcg@10"] for q in result_from["per_query"]]
    return {
        "metric": "ndcg@10",
        "value": means["ndcg@10"],
        "metrics": means,
        "n": len(query_ids),
        "ci": _interval("mean", per_item, seed),
        "chance": _random_ndcg(len(sub.corpus)),
        "chance_rule": "expected nDCG@10 of a random ranking",
        "method": method,
        "details": details,
        "item_ids": result_from["query_ids"],
        "per_item": per_item,
    }


def run_multiple_choice(em: EvalModel, task: Task, suite: Suite, seed: int, progress: Progress) -> dict:
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
    return {
        "metric": task.metric,
        "value": values[task.metric],
        "metrics": values,
        "n": len(items),
        "ci": _interval("proportion", per[task.metric], seed),
        "chance": float(np.mean([1 / len(it.choices) for it in items])),
        "chance_rule": "1 / number of choices",
        "method": how,
        "details": {},
        "item_ids": [it.id for it in items],
        "per_item": per[task.metric],
    }


def run_generation(em: EvalModel, task: Task, suite: Suite, seed: int, progress: Progress) -> dict:
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
    return {
        "metric": "acc",
        "value": float(np.mean(ok)) if ok else float("nan"),
        "metrics": {"acc": float(np.mean(ok))},
        "n": len(items),
        "ci": _interval("proportion", ok, seed),
        "chance": 0.0,
        "chance_rule": "exact match of an open vocabulary: about 0",
        "method": f"{how}; correct when every token of the last word is reproduced",
        "details": {},
        "item_ids": [it.id for it in items],
        "per_item": ok,
    }


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
) -> dict:
    """One task's result dict; never raises for a failure inside the task (status 'error' instead)."""
    progress = progress or Progress()
    task = get_task(name)
    base = {
        "task": name,
        "kind": task.kind,
        "model": em.name,
        "arch": em.arch,
        "suite": suite.name,
        "seed": seed,
        "description": task.description,
        "source": task.source,
        "split": task.split,
    }
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    try:
        kwargs: dict[str, Any] = {}
        if task.kind in ("classification", "retrieval"):
            kwargs["pooling"] = pooling
        if task.kind == "retrieval":
            kwargs["tuned_cache"] = tuned_cache
        out = RUNNERS[task.kind](em, task, suite, seed, progress, **kwargs)
        result = {**base, "status": "ok", **out}
    except KeyboardInterrupt:
        raise
    except EttinError as exc:
        result = {**base, "status": "error", "error": str(exc)}
    except Exception as exc:  # a bug or a resource problem in one task must not lose the others
        result = {
            **base,
            "status": "error",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }
    result["seconds"] = round(time.perf_counter() - t0, 3)
    progress.finish(name, result)
    return result


def _task_file(out_dir: Path, name: str) -> Path:
    return out_dir / f"{name}.json"


def evaluate_model(
    model_or_path: "EvalModel | Any | str | os.PathLike",
    tasks: Sequence[str] | str | None = None,
    suite: str = "quick",
    out_dir: str | os.PathLike | None = None,
    seed: int = 0,
    *,
    revision: str | None = None,
    tokenizer: Any = None,
    name: str | None = None,
    pooling: str | None = None,
    limit: int | None = None,
    threads: int | None = None,
    device: str | None = None,
    progress: Progress | None = None,
) -> dict:
    """Evaluate one model on tasks (default: the suite's) and write per-task JSON plus results.json.

    `model_or_path`: a model folder, a training run's model folder (with `revision`), an EttinModel
    (with `tokenizer`) or an EvalModel. Bad input (unknown task, not a model, no such revision)
    raises EttinError before any task runs; failures inside a task are recorded and skipped.
    `limit` caps the items per task (see Suite.limited); `threads` sets torch's intra-op threads;
    `device` as in `load_eval_model` (default: the GPU if any for a model read from disk).
    """
    the_suite = get_suite(suite).limited(limit)
    names = resolve_tasks(tasks, suite)
    em = load_eval_model(model_or_path, revision=revision, tokenizer=tokenizer, name=name, device=device)
    check_pooling(pooling, em.arch)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        if out.exists() and not out.is_dir():
            raise EttinError("exists and is not a directory", path=out, fix="choose another --out")
        out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results: dict[str, dict] = {}
    tuned_cache: dict = {}
    with torch_threads(threads) as n_threads:
        for n in names:
            r = run_task(em, n, the_suite, seed, progress, pooling, tuned_cache)
            results[n] = r
            if out is not None:
                atomic_write_json(_task_file(out, n), r)
    summary = {
        "model": em.name,
        "info": em.info,
        "suite": the_suite.name,
        "seed": seed,
        "limit": limit,
        "threads": n_threads,
        "tasks": results,
        "failed": [n for n, r in results.items() if r["status"] != "ok"],
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if out is not None:
        atomic_write_json(out / RESULTS_FILE, summary)
        summary["out_dir"] = str(out)
    return summary


# --------------------------------------------------------------------------------------- compare

DYNAMICS_TASKS = ("sst2", "wiki_retrieval", "arc_easy", "lambada")


def _pair_differences(a: dict, b: dict, seed: int) -> dict:
    """Paired bootstrap of a - b per task over the items both scored (same ids, same order)."""
    out = {}
    for t, ra in a["tasks"].items():
        rb = b["tasks"].get(t)
        if not rb or ra.get("status") != "ok" or rb.get("status") != "ok":
            continue
        if ra["item_ids"] != rb["item_ids"]:
            continue  # cannot pair (should not happen: same suite and seed)
        out[t] = metrics.paired_difference(ra["per_item"], rb["per_item"], seed=seed)
    return out


def _model_record(em: EvalModel, results: dict, checkpoint: dict | None) -> dict:
    checkpoint = checkpoint or {}
    return {
        "arch": em.arch,
        "info": em.info,
        "tag": checkpoint.get("tag", em.info.get("revision")),
        "tokens": checkpoint.get("tokens"),
        "init": checkpoint.get("init"),
        "results": results,
    }


def compare_models(
    models: dict[str, Any],
    out_dir: str | os.PathLike,
    suite: str = "quick",
    seed: int = 0,
    *,
    tasks: Sequence[str] | str | None = None,
    tokenizer: Any = None,
    limit: int | None = None,
    dynamics: dict[str, list[tuple[Any, dict]]] | None = None,
    dynamics_tasks: Sequence[str] | None = None,
    run_name: str = "models",
    checkpoints: dict[str, dict] | None = None,
    dynamics_note: str | None = None,
    baselines: bool = False,
    pretraining_sources: Sequence[str] | None = None,
    threads: int | None = None,
    cross_of: dict[str, str] | None = None,
    device: str | None = None,
    command: str | None = None,
    progress: Progress | None = None,
) -> dict:
    """Evaluate several models on the same tasks and write the report.

    `models` maps a label to anything `load_eval_model` takes; the first encoder and the first
    decoder (labels 'encoder'/'decoder' preferred) form the pair whose gaps get paired intervals.
    `dynamics` maps a label to [(model at a checkpoint, {"tag", "tokens", "step", "final"}), ...];
    `checkpoints` maps a label to {"tag", "tokens"} of the model evaluated (for the report).
    `baselines` also evaluates a randomly initialised copy of the pair's configs (seeded): probes and
    embedding similarity score above chance even without training, and this shows by how much.
    `pretraining_sources` (built-in corpus names the models were trained on) flags tasks whose
    texts the models may have seen. `cross_of` maps a cross-objective model's label to the arch it
    was trained into; each is compared with the native model of that arch.
    """
    from ettin.eval import report

    t0 = time.perf_counter()
    the_suite = get_suite(suite)
    names = resolve_tasks(tasks, suite)
    out = Path(out_dir)
    loaded = {label: load_eval_model(m, tokenizer=tokenizer, name=label, device=device) for label, m in models.items()}
    enc = (
        "encoder"
        if loaded.get("encoder") and loaded["encoder"].arch == "encoder"
        else next((k for k, v in loaded.items() if v.arch == "encoder"), None)
    )
    dec = (
        "decoder"
        if loaded.get("decoder") and loaded["decoder"].arch == "decoder"
        else next((k for k, v in loaded.items() if v.arch == "decoder"), None)
    )
    baseline_of: dict[str, str] = {}
    if baselines:
        for label in (enc, dec):
            if label is not None:
                init_label = f"{label}-init"
                loaded[init_label] = _initialised_copy(loaded[label], init_label, seed)
                baseline_of[label] = init_label
    results_by_model = {}
    for label, em in loaded.items():
        results_by_model[label] = evaluate_model(
            em, names, suite, out / "models" / label, seed, limit=limit, threads=threads, progress=progress
        )
    model_records = {
        label: _model_record(em, results_by_model[label], (checkpoints or {}).get(label))
        for label, em in loaded.items()
    }
    for label, arch in (cross_of or {}).items():
        native = enc if arch == "encoder" else dec
        if label in model_records and native:
            model_records[label]["cross_of"] = native
            model_records[label]["vs_native"] = _pair_differences(
                results_by_model[label], results_by_model[native], seed
            )
    for label, init_label in baseline_of.items():
        model_records[init_label].update(baseline_of=label, tokens=0, tag=f"init (seed {seed})")
        model_records[label]["vs_init"] = _pair_differences(results_by_model[label], results_by_model[init_label], seed)
    dyn_out: dict[str, list[dict]] = {}
    dyn_names = [t for t in (dynamics_tasks or DYNAMICS_TASKS) if t in names]
    for label, points in (dynamics or {}).items():
        dyn_out[label] = []
        if label in baseline_of:  # the initialisation is where training started: tokens 0
            init_res = results_by_model[baseline_of[label]]["tasks"]
            dyn_out[label].append(
                {
                    "tag": "init",
                    "tokens": 0,
                    "step": 0,
                    "tasks": {t: _slim(init_res[t]) for t in dyn_names if t in init_res},
                }
            )
        for m, meta in points:
            if meta.get("final") and label in results_by_model:
                res = results_by_model[label]["tasks"]
            else:
                em = load_eval_model(m, tokenizer=tokenizer, name=f"{label}@{meta.get('tag')}", device=device)
                res = evaluate_model(em, dyn_names, suite, None, seed, limit=limit, threads=threads, progress=progress)[
                    "tasks"
                ]
            dyn_out[label].append(
                {
                    **{k: v for k, v in meta.items() if k != "final"},
                    "tasks": {t: _slim(res[t]) for t in dyn_names if t in res},
                }
            )
    failed = [
        {"model": label, "task": t, "error": r.get("error", "")}
        for label, res in results_by_model.items()
        for t, r in res["tasks"].items()
        if r["status"] != "ok"
    ]
    for label, points in dyn_out.items():
        for p in points:
            failed += [
                {"model": f"{label}@{p.get('tag')}", "task": t, "error": r.get("error", "")}
                for t, r in p["tasks"].items()
                if r["status"] != "ok"
            ]
    results = {
        "run_name": run_name,
        "command": command,
        "suite": the_suite.name,
        "seed": seed,
        "limit": limit,
        "tasks": names,
        "models": model_records,
        "pair": {
            "encoder": enc,
            "decoder": dec,
            "tasks": _pair_differences(results_by_model[enc], results_by_model[dec], seed) if enc and dec else {},
        },
        "dynamics": dyn_out,
        "dynamics_tasks": dyn_names if dyn_out else [],
        "dynamics_note": dynamics_note,
        "pretraining_overlap": {
            t: sorted(set(get_task(t).pretraining_overlap) & set(pretraining_sources or []))
            for t in names
            if set(get_task(t).pretraining_overlap) & set(pretraining_sources or [])
        },
        "failed": failed,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    results["files"] = [str(p) for p in report.write_report(results, out)]
    return results


def _initialised_copy(em: EvalModel, label: str, seed: int) -> EvalModel:
    """The same config, freshly initialised (the spec's init, seeded): what training started from."""
    from ettin.model import EttinModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = EttinModel(em.config.replace()).to(em.device).eval()
    info = dict(em.info, path=None, model_dir=None, revision=None, init_seed=seed)
    return EvalModel(model, em.tokenizer, label, max_length=em.max_length, batch_tokens=em.batch_tokens, info=info)


def recipe_sources(run_dir: str | os.PathLike) -> list[str]:
    """Source names a run's recipe.yaml trains on (`source:` / `sources:` anywhere in it)."""
    import yaml

    path = Path(run_dir) / "recipe.yaml"
    if not path.is_file():
        return []
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return []
    found: set[str] = set()

    def walk(x):
        if isinstance(x, dict):
            for k, v in x.items():
                if k == "source" and isinstance(v, str):
                    found.add(v)
                elif k == "sources" and isinstance(v, list):
                    found.update(s for s in v if isinstance(s, str))
                else:
                    walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(recipe)
    return sorted(found)


def _slim(r: dict) -> dict:
    """A task result without per-item arrays (for the dynamics table)."""
    return {k: v for k, v in r.items() if k not in ("item_ids", "per_item", "traceback")}


def discover_run(run_dir: str | os.PathLike) -> dict[str, Path]:
    """The models of a training run: label -> model folder (encoder, decoder, then the others)."""
    from ettin.runs import is_model_run

    run = Path(run_dir)
    if not run.is_dir():
        raise EttinError(
            "no such run folder" if not run.exists() else "is not a folder",
            path=run,
            fix="give the folder `ettin train` wrote (it holds encoder/ and decoder/)",
        )
    if is_model_run(run) or (run / "config.json").is_file():
        raise EttinError(
            "is a single model, not a run of a pair",
            path=run,
            fix="give the run folder that holds encoder/ and decoder/, or use `ettin eval` for one model",
        )
    found = {}
    for sub in sorted(p for p in run.iterdir() if p.is_dir()):
        if is_model_run(sub) or (sub / "config.json").is_file():
            found[sub.name] = sub
    order = [k for k in ("encoder", "decoder") if k in found] + [k for k in found if k not in ("encoder", "decoder")]
    found = {k: found[k] for k in order}
    if not found:
        raise EttinError(
            "holds no models (no subfolder with hf/ checkpoints or config.json)",
            path=run,
            fix="train a pair first (`ettin train`), or point at the run's folder",
        )
    return found


def _pick_tags(tags: list, k: int) -> list:
    if len(tags) <= k:
        return list(tags)
    idx = sorted({round(i * (len(tags) - 1) / (k - 1)) for i in range(k)}) if k > 1 else [len(tags) - 1]
    return [tags[i] for i in idx]


def _read_recipe(run: Path) -> dict:
    import yaml

    try:
        d = yaml.safe_load((run / "recipe.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return d if isinstance(d, dict) else {}


def _cross_member(path: Path) -> tuple[Path, dict]:
    """A cross-objective model given as a run folder, a model's run folder or a model folder:
    (the folder to load, what its recipe says it started from)."""
    from ettin.runs import is_model_run

    path = Path(path)
    if is_model_run(path) or (path / "config.json").is_file():
        return path, (_read_recipe(path.parent).get("init") or {})
    members = [p for p in sorted(path.iterdir()) if p.is_dir() and is_model_run(p)] if path.is_dir() else []
    if len(members) != 1:
        raise EttinError(
            "is not a cross-objective model (expected one model folder, a run of one, or a model's run)",
            path=path,
            field="cross",
            fix="give e.g. runs/demo/cross-enc2dec or runs/demo/cross-enc2dec/decoder",
        )
    return members[0], (_read_recipe(path).get("init") or {})


def find_cross_runs(run_dir: str | os.PathLike) -> list[Path]:
    """Runs beside `run_dir` whose recipe starts from one of its models (`init.path`): the pair's
    cross-objective continuations."""
    run = Path(run_dir).resolve()
    found = []
    for sib in sorted(p for p in run.parent.iterdir() if p.is_dir() and p.resolve() != run):
        init = (_read_recipe(sib).get("init") or {}).get("path")
        if not init:
            continue
        target = Path(init)
        parts = target.parts
        same = (target.is_absolute() and target.resolve().parent == run) or (
            len(parts) >= 2 and parts[-2] == run.name and (run / parts[-1]).is_dir()
        )
        if same:
            found.append(sib)
    return found


def compare_run(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    suite: str = "quick",
    seed: int = 0,
    *,
    tasks: Sequence[str] | str | None = None,
    revision: str | None = None,
    dynamics: bool = True,
    max_checkpoints: int = 4,
    dynamics_tasks: Sequence[str] | None = None,
    limit: int | None = None,
    tokenizer: Any = None,
    baselines: bool = False,
    threads: int | None = None,
    cross: Sequence[str | os.PathLike] | None = None,
    find_cross: bool = True,
    device: str | None = None,
    progress: Progress | None = None,
) -> dict:
    """Evaluate a run's encoder and decoder on the same tasks, and up to `max_checkpoints`
    checkpoints of each for the dynamics plot.

    Cross-objective models are evaluated alongside: extra model folders inside the run, the runs in
    `cross`, and (with `find_cross`) runs beside this one whose recipe starts from its models.
    `revision` picks the tag evaluated for the pair (default: each model's latest); dynamics then
    stop at that tag. `baselines`: also evaluate the pair's random initialisation.
    """
    from ettin import hf
    from ettin.runs import is_model_run, list_tags

    get_suite(suite)
    resolve_tasks(tasks, suite)
    found = discover_run(run_dir)
    models: dict[str, Any] = {}
    checkpoints: dict[str, dict] = {}
    history: dict[str, list] = {}
    for label, path in found.items():
        if is_model_run(path):
            model_dir = hf.resolve(path, revision)  # EttinError listing the tags if there is no such revision
            tags = [t for t in list_tags(path) if t.hf]
            chosen = next((t for t in tags if t.tag == model_dir.name), None)
            if chosen is not None:
                checkpoints[label] = {"tag": chosen.tag, "tokens": chosen.tokens, "step": chosen.step}
                history[label] = [t for t in tags if t.step <= chosen.step]
        else:
            if revision is not None:
                raise EttinError(
                    f"is a plain model folder, so --revision {revision} does not apply",
                    path=path,
                    field="revision",
                    fix="drop --revision, or give runs whose models have checkpoints",
                )
            model_dir = path
        models[label] = model_dir
    cross_of: dict[str, str] = {}
    cross_paths = [Path(c) for c in (cross or [])]
    if find_cross:
        cross_paths += [p for p in find_cross_runs(run_dir) if p.resolve() not in {c.resolve() for c in cross_paths}]
    for c in cross_paths:
        member, init = _cross_member(c)
        model_dir = hf.resolve(member) if is_model_run(member) else member
        arch = hf.read_config(Path(model_dir)).arch
        source = Path(init["path"]).name if init.get("path") else "other"
        label = f"{source}-to-{arch}" if source in ("encoder", "decoder") and source != arch else c.name
        while label in models:
            label += "+"
        models[label] = model_dir
        cross_of[label] = arch
        if is_model_run(member):
            tags = [t for t in list_tags(member) if t.hf]
            chosen = next((t for t in tags if t.tag == Path(model_dir).name), None)
            if chosen is not None:
                checkpoints[label] = {
                    "tag": chosen.tag,
                    "tokens": chosen.tokens,
                    "step": chosen.step,
                    "init": f"{init.get('path')}" + (f"@{init['revision']}" if init.get("revision") else ""),
                }
    archs = {label: hf.read_config(Path(d)).arch for label, d in models.items()}
    if "encoder" not in archs.values() or "decoder" not in archs.values():
        have = ", ".join(f"{k} ({v})" for k, v in archs.items())
        raise EttinError(
            f"needs an encoder and a decoder to compare; found {have}",
            path=run_dir,
            fix="train both members of the pair, or use `ettin eval` for one model",
        )
    dyn: dict[str, list] = {}
    note = None
    if dynamics:
        for label in ("encoder", "decoder"):
            tags = history.get(label, [])
            if len(tags) < 2:
                continue
            dyn[label] = [
                (
                    found[label] / "hf" / t.tag,
                    {"tag": t.tag, "tokens": t.tokens, "step": t.step, "final": t is tags[-1]},
                )
                for t in _pick_tags(tags, max_checkpoints)
            ]
        if not dyn:
            note = "The run has fewer than two exported checkpoints per model: no training dynamics to plot."
    flags = [f"--suite {suite}", f"--seed {seed}"]
    flags += [f"--tasks {','.join(resolve_tasks(tasks, suite))}"] if tasks else []
    flags += [f"--revision {revision}"] if revision else []
    flags += [f"--limit {limit}"] if limit else []
    flags += ["--baselines"] if baselines else []
    flags += [] if dynamics else ["--no-dynamics"]
    flags += [f"--checkpoints {max_checkpoints}"] if dynamics and max_checkpoints != 4 else []
    flags += [f"--cross {c}" for c in (cross or [])] + ([] if find_cross else ["--no-find-cross"])
    command = f"ettin compare {run_dir} --out {out_dir} " + " ".join(flags)
    return compare_models(
        models,
        out_dir,
        suite,
        seed,
        tasks=tasks,
        tokenizer=tokenizer,
        limit=limit,
        dynamics=dyn,
        dynamics_tasks=dynamics_tasks,
        run_name=Path(run_dir).resolve().name,
        checkpoints=checkpoints,
        dynamics_note=note,
        baselines=baselines,
        pretraining_sources=recipe_sources(run_dir),
        threads=threads,
        cross_of=cross_of,
        device=device,
        command=command,
        progress=progress,
    )


def suite_names() -> list[str]:
    return list(SUITES)
