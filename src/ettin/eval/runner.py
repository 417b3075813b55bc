"""Execute evaluations: `evaluate_model` for one model, `run_plan` for a comparison planned by
`ettin.eval.plan` (`compare_run` plans a run folder and executes it, `compare_models` does both for
models given by hand).

Each task writes `<out>/<task>.json` as soon as it finishes (atomically), then `results.json`
collects them. A task that fails records its error and the others go on; callers decide the exit
status from `results["failed"]`. A model whose outputs are NaN or inf stops the evaluation with
NonFiniteOutput naming the model and the task (a score from it would be noise). Results depend only on the model, the suite and the seed.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ettin.errors import EttinError
from ettin.eval import metrics
from ettin.eval.handle import EvalModel, NonFiniteOutput, load_eval_model
from ettin.eval.kinds import FULL_CONTRASTIVE, FULL_FINETUNE, Progress, check_pooling, run_task
from ettin.eval.plan import (
    DEFAULT_MAX_CHECKPOINTS,
    DYNAMICS_TASKS,
    Checkpoint,
    ComparePlan,
    CompareRequest,
    DynamicsPoint,
    Member,
    dynamics_task_names,
    plan_run,
)
from ettin.eval.result import TaskResult
from ettin.eval.tasks import Suite, get_suite, resolve_tasks
from ettin.io import atomic_write_json

RESULTS_FILE = "results.json"

__all__ = [
    "DYNAMICS_TASKS",
    "FULL_CONTRASTIVE",
    "FULL_FINETUNE",
    "RESULTS_FILE",
    "Progress",
    "check_pooling",
    "compare_models",
    "compare_run",
    "evaluate_model",
    "run_plan",
    "run_task",
    "torch_threads",
]


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


# ----------------------------------------------------------------------------------- one model


def _run_tasks(
    em: EvalModel,
    names: Sequence[str],
    suite: Suite,
    seed: int,
    out: Path | None,
    threads: int | None,
    progress: Progress | None,
    pooling: str | None = None,
) -> tuple[dict[str, TaskResult], int]:
    """Each task's result (written to `out/<task>.json` as it finishes) and the thread count used."""
    results: dict[str, TaskResult] = {}
    tuned_cache: dict = {}  # contrastive tuning shared by the retrieval tasks
    with torch_threads(threads) as n_threads:
        for n in names:
            try:
                r = run_task(em, n, suite, seed, progress, pooling, tuned_cache)
            except NonFiniteOutput as exc:  # the model is damaged: an error for the command, not a score
                raise exc.on_task(em, n) from None
            results[n] = r
            if out is not None:
                atomic_write_json(out / f"{n}.json", r.to_dict())
    return results, n_threads


def _summary(em: EvalModel, suite: Suite, seed: int, limit, n_threads: int, results: dict, t0: float) -> dict:
    """The results.json of one model."""
    return {
        "model": em.name,
        "info": em.info,
        "suite": suite.name,
        "seed": seed,
        "limit": limit,
        "threads": n_threads,
        "tasks": {n: r.to_dict() for n, r in results.items()},
        "failed": [n for n, r in results.items() if not r.ok],
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _out_dir(out_dir: str | os.PathLike | None) -> Path | None:
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        if out.exists() and not out.is_dir():
            raise EttinError("exists and is not a directory", path=out, fix="choose another --out")
        out.mkdir(parents=True, exist_ok=True)
    return out


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
    """Evaluate one model on tasks (default: the suite's) and write per-task JSON plus results.json;
    returns what results.json holds (each task as `TaskResult.to_dict`; `TaskResult.from_dict` reads one).

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
    out = _out_dir(out_dir)
    t0 = time.perf_counter()
    results, n_threads = _run_tasks(em, names, the_suite, seed, out, threads, progress, pooling)
    summary = _summary(em, the_suite, seed, limit, n_threads, results, t0)
    if out is not None:
        atomic_write_json(out / RESULTS_FILE, summary)
        summary["out_dir"] = str(out)
    return summary


# ------------------------------------------------------------------------------------ compare


def _pair_differences(a: dict[str, TaskResult], b: dict[str, TaskResult], seed: int) -> dict:
    """Paired bootstrap of a - b per task over the items both scored (same ids, same order)."""
    return {
        t: metrics.paired_difference(ra.score.per_item, b[t].score.per_item, seed=seed)
        for t, ra in a.items()
        if ra.paired_with(b.get(t))  # unpaired should not happen: same suite and seed
    }


def _model_record(em: EvalModel, summary: dict, checkpoint: Checkpoint | None) -> dict:
    return {
        "arch": em.arch,
        "info": em.info,
        "tag": checkpoint.tag if checkpoint else em.info.get("revision"),
        "tokens": checkpoint.tokens if checkpoint else None,
        "init": checkpoint.init if checkpoint else None,
        "results": summary,
    }


def _initialised_copy(em: EvalModel, label: str, seed: int) -> EvalModel:
    """The same config, freshly initialised (the spec's init, seeded): what training started from."""
    from ettin.model import EttinModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = EttinModel(em.config.replace()).to(em.device).eval()
    info = dict(em.info, path=None, model_dir=None, revision=None, init_seed=seed)
    return EvalModel(model, em.tokenizer, label, max_length=em.max_length, batch_tokens=em.batch_tokens, info=info)


def _failures(label: str, results: dict[str, TaskResult]) -> list[dict]:
    return [{"model": label, "task": t, "error": r.error or ""} for t, r in results.items() if not r.ok]


def run_plan(
    plan: ComparePlan,
    out_dir: str | os.PathLike,
    *,
    tokenizer: Any = None,
    threads: int | None = None,
    device: str | None = None,
    command: str | None = None,
    progress: Progress | None = None,
) -> dict:
    """Evaluate every model of `plan` on its tasks and write the report; returns what results.json holds.

    The pair (`plan.pair()`) gets paired intervals of its gaps; a cross-objective member is compared
    with the native model of its arch; with `plan.baselines` a randomly initialised copy of the
    pair's configs (seeded) is evaluated too: probes and embedding similarity score above chance
    even without training, and this shows by how much. `command`: the line that reproduces the
    report, shown at its end (the CLI renders it; the library does not know its flags).
    """
    from ettin.eval import report

    t0 = time.perf_counter()
    suite = get_suite(plan.suite).limited(plan.limit)
    seed, names = plan.seed, plan.tasks
    out = Path(out_dir)
    loaded = {m.label: load_eval_model(m.model, tokenizer=tokenizer, name=m.label, device=device) for m in plan.members}
    for m in plan.members:
        m.arch = loaded[m.label].arch
    enc, dec = plan.pair()
    baseline_of = plan.baseline_labels()
    for label, init_label in baseline_of.items():
        loaded[init_label] = _initialised_copy(loaded[label], init_label, seed)
    checkpoints = {m.label: m.checkpoint for m in plan.members}
    results: dict[str, dict[str, TaskResult]] = {}
    records: dict[str, dict] = {}
    for label, em in loaded.items():
        t_model = time.perf_counter()
        model_out = _out_dir(out / "models" / label)
        results[label], n_threads = _run_tasks(em, names, suite, seed, model_out, threads, progress)
        summary = _summary(em, suite, seed, plan.limit, n_threads, results[label], t_model)
        atomic_write_json(model_out / RESULTS_FILE, summary)
        summary["out_dir"] = str(model_out)
        records[label] = _model_record(em, summary, checkpoints.get(label))
    for m in plan.members:
        native = enc if m.cross_of == "encoder" else dec
        if m.cross_of and native:
            records[m.label]["cross_of"] = native
            records[m.label]["vs_native"] = _pair_differences(results[m.label], results[native], seed)
    for label, init_label in baseline_of.items():
        records[init_label].update(baseline_of=label, tokens=0, tag=f"init (seed {seed})")
        records[label]["vs_init"] = _pair_differences(results[label], results[init_label], seed)
    dyn_names = plan.dynamics_tasks
    dyn_out: dict[str, list[dict]] = {}
    failed = [f for label, res in results.items() for f in _failures(label, res)]
    dyn_failed = []
    for label, points in plan.dynamics.items():
        dyn_out[label] = []
        if label in baseline_of:  # the initialisation is where training started: tokens 0
            init_res = results[baseline_of[label]]
            dyn_out[label].append({"tag": "init", "tokens": 0, "step": 0, "tasks": _slim(init_res, dyn_names)})
        for p in points:
            if p.final and label in results:
                res = results[label]
            else:
                em = load_eval_model(p.model, tokenizer=tokenizer, name=f"{label}@{p.tag}", device=device)
                res, _ = _run_tasks(em, dyn_names, suite, seed, None, threads, progress)
            dyn_out[label].append({**p.record(), "tasks": _slim(res, dyn_names)})
            dyn_failed += _failures(f"{label}@{p.tag}", {t: r for t, r in res.items() if t in dyn_names})
    results_doc = {
        "run_name": plan.run_name,
        "command": command,
        "suite": suite.name,
        "seed": seed,
        "limit": plan.limit,
        "tasks": names,
        "models": records,
        "pair": {
            "encoder": enc,
            "decoder": dec,
            "tasks": _pair_differences(results[enc], results[dec], seed) if enc and dec else {},
        },
        "dynamics": dyn_out,
        "dynamics_tasks": dyn_names if dyn_out else [],
        "dynamics_note": plan.dynamics_note,
        "tokens_note": plan.tokens_note,
        "pretraining_overlap": plan.overlap(),
        "failed": failed + dyn_failed,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    results_doc["files"] = [str(p) for p in report.write_report(results_doc, out)]
    return results_doc


def _slim(results: dict[str, TaskResult], names: Sequence[str]) -> dict:
    """The dynamics table's entries: the results of `names`, without per-item arrays."""
    return {t: results[t].to_dict(per_item=False) for t in names if t in results}


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
    """Evaluate several models given by hand on the same tasks and write the report (`run_plan`).

    `models` maps a label to anything `load_eval_model` takes; the first encoder and the first
    decoder (labels 'encoder'/'decoder' preferred) form the pair whose gaps get paired intervals.
    `dynamics` maps a label to [(model at a checkpoint, {"tag", "tokens", "step", "final"}), ...];
    `checkpoints` maps a label to {"tag", "tokens"} of the model evaluated (for the report).
    `pretraining_sources` (built-in corpus names the models were trained on) flags tasks whose
    texts the models may have seen. `cross_of` maps a cross-objective model's label to the arch it
    was trained into; each is compared with the native model of that arch.
    """
    get_suite(suite)
    names = resolve_tasks(tasks, suite)
    marks = checkpoints or {}
    members = [
        Member(
            label,
            model,
            checkpoint=Checkpoint(
                marks[label].get("tag"), marks[label].get("tokens"), marks[label].get("step"), marks[label].get("init")
            )
            if label in marks
            else None,
            cross_of=(cross_of or {}).get(label),
        )
        for label, model in models.items()
    ]
    plan = ComparePlan(
        suite=suite,
        seed=seed,
        tasks=names,
        members=members,
        limit=limit,
        run_name=run_name,
        dynamics={
            label: [
                DynamicsPoint(m, meta.get("tag"), meta.get("tokens"), meta.get("step"), bool(meta.get("final")))
                for m, meta in points
            ]
            for label, points in (dynamics or {}).items()
        },
        dynamics_tasks=dynamics_task_names(names, dynamics_tasks),
        dynamics_note=dynamics_note,
        baselines=baselines,
        pretraining_sources=list(pretraining_sources or []),
    )
    return run_plan(
        plan, out_dir, tokenizer=tokenizer, threads=threads, device=device, command=command, progress=progress
    )


def compare_run(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    suite: str = "quick",
    seed: int = 0,
    *,
    tasks: Sequence[str] | str | None = None,
    revision: str | None = None,
    dynamics: bool = True,
    max_checkpoints: int = DEFAULT_MAX_CHECKPOINTS,
    dynamics_tasks: Sequence[str] | None = None,
    limit: int | None = None,
    tokenizer: Any = None,
    baselines: bool = False,
    threads: int | None = None,
    cross: Sequence[str | os.PathLike] | None = None,
    find_cross: bool = True,
    device: str | None = None,
    command: str | None = None,
    progress: Progress | None = None,
) -> dict:
    """Evaluate a run's encoder and decoder on the same tasks, and up to `max_checkpoints`
    checkpoints of each for the dynamics plot: `run_plan(plan_run(CompareRequest(...)))`.

    Cross-objective models are evaluated alongside: extra model folders inside the run, the runs in
    `cross`, and (with `find_cross`) runs beside this one whose recipe starts from its models.
    `revision` picks the tag evaluated for the pair (default: each model's latest); dynamics then
    stop at that tag. `baselines`: also evaluate the pair's random initialisation.
    """
    request = CompareRequest(
        run_dir,
        out_dir,
        suite,
        seed,
        tasks=tasks,
        revision=revision,
        dynamics=dynamics,
        max_checkpoints=max_checkpoints,
        dynamics_tasks=dynamics_tasks,
        limit=limit,
        baselines=baselines,
        cross=tuple(cross or ()),
        find_cross=find_cross,
    )
    return run_plan(
        plan_run(request),
        out_dir,
        tokenizer=tokenizer,
        threads=threads,
        device=device,
        command=command,
        progress=progress,
    )
