"""The ecosystem's harnesses: lm-evaluation-harness and MTEB, for both archs.

`ettin lm-eval ARGS...` is lm-eval's own command line with `--model ettin` registered and the local
tasks (`ettin_*`, over installed data) on the include path; everything after `lm-eval` goes to
lm-eval unchanged. `ettin mteb MODEL` runs ettin's retrieval tasks under MTEB; `ettin mteb-check`
cross-checks our retrieval harness against MTEB with the packaged reference embedder.
"""

from __future__ import annotations

import typer


def _print_scores(title: str, rows: list[tuple[str, dict]], keys: tuple[str, ...]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("task")
    for k in keys:
        table.add_column(k, justify="right")
    for name, scores in rows:
        table.add_row(name, *(f"{scores[k]:.4f}" if k in scores else "-" for k in keys))
    Console().print(table)


def register(app: typer.Typer) -> None:
    @app.command(
        "lm-eval",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
        add_help_option=False,
    )
    def lm_eval_cmd(ctx: typer.Context) -> None:
        """lm-evaluation-harness with `--model ettin` (both archs) and local `ettin_*` tasks; all arguments go to lm-eval (try `ettin lm-eval --help`)."""
        from ettin.eval.lm_eval_model import main

        main(list(ctx.args))

    @app.command("lm-eval-tasks")
    def lm_eval_tasks(
        out: str = typer.Option(..., "--out", help="folder for the task YAMLs (give it to lm-eval as --include_path)"),
    ) -> None:
        """Write the local lm-eval task YAMLs (ettin_arc_easy, ettin_hellaswag, ...; tag ettin_paper) that read the installed data."""
        from rich.console import Console

        from ettin.eval.lm_eval_model import LOCAL_TAG, write_local_tasks

        path = write_local_tasks(out)
        for f in sorted(path.glob("ettin_*.yaml")):
            Console().print(f"  wrote {f}")
        Console().print(f"use: lm_eval ... --include_path {path} --tasks {LOCAL_TAG} (or one task name)")

    @app.command("mteb")
    def mteb_cmd(
        model: str = typer.Argument(..., help="an ettin / modernbert / modernbert-decoder folder or training run"),
        task: str = typer.Option("wiki_retrieval", "--task", help="ettin retrieval task(s), comma-separated"),
        revision: str | None = typer.Option(None, "--revision", help="checkpoint tag of a training run"),
        tokenizer: str | None = typer.Option(None, "--tokenizer", help="tokenizer folder (default: the model's)"),
        pooling: str | None = typer.Option(
            None, "--pooling", help="mean, cls or last (default: mean for encoders, last for decoders)"
        ),
        max_queries: int | None = typer.Option(None, "--max-queries", help="seeded subset of queries"),
        max_docs: int | None = typer.Option(None, "--max-docs", help="corpus size (relevant documents always kept)"),
        max_length: int = typer.Option(512, "--max-length", help="tokens per text"),
        batch_size: int = typer.Option(32, "--batch-size", help="texts per MTEB batch"),
        out: str | None = typer.Option(None, "--out", help="write MTEB's scores as JSON here"),
    ) -> None:
        """Run ettin's retrieval tasks under MTEB (offline, no result cache)."""
        from rich.console import Console

        from ettin.eval.mteb_model import EttinMTEBEncoder, evaluate, task_for
        from ettin.eval.tasks import resolve_tasks
        from ettin.io import atomic_write_json

        names = resolve_tasks(task)
        encoder = EttinMTEBEncoder(
            model, revision=revision, tokenizer=tokenizer, pooling=pooling, max_length=max_length
        )
        tasks, sizes = [], {}
        for name in names:
            t, data = task_for(name, max_queries=max_queries, max_corpus_docs=max_docs)
            tasks.append(t)
            sizes[name] = {"queries": len(data.queries), "documents": len(data.corpus)}
        Console().print(f"MTEB: {encoder.em.name} ({encoder.em.arch}, {encoder.pooling} pooling) on {', '.join(names)}")
        scores = evaluate(encoder, tasks, batch_size=batch_size, show_progress_bar=True)
        _print_scores(
            f"MTEB scores: {encoder.em.name}", list(scores.items()), ("ndcg_at_10", "recall_at_10", "mrr_at_10")
        )
        if out:
            payload = {
                "model": str(model),
                "revision": revision,
                "arch": encoder.em.arch,
                "pooling": encoder.pooling,
                "tasks": {n: {"size": sizes[n], "scores": scores[n]} for n in scores},
            }
            Console().print(f"wrote {atomic_write_json(out, _jsonable(payload))}")

    @app.command("mteb-check")
    def mteb_check(
        queries: int = typer.Option(300, "--queries", help="wiki_retrieval queries (seeded subset)"),
        docs: int = typer.Option(1000, "--docs", help="corpus size (relevant documents always kept)"),
        max_seq_length: int = typer.Option(256, "--max-seq-length", help="tokens per text for the reference model"),
        tolerance: float = typer.Option(0.01, "--tolerance", help="largest accepted |ours - MTEB| in nDCG@10"),
    ) -> None:
        """Cross-check our retrieval harness against MTEB with the packaged all-MiniLM-L6-v2 (exit 1 if they disagree)."""
        from rich.console import Console

        from ettin.eval.mteb_model import reference_cross_check

        r = reference_cross_check(queries, docs, max_seq_length=max_seq_length)
        diff = abs(r["ours"] - r["mteb"])
        Console().print(
            f"all-MiniLM-L6-v2 on wiki_retrieval ({r['queries']} queries, {r['documents']} documents): "
            f"nDCG@10 ours {r['ours']:.5f}, MTEB {r['mteb']:.5f}, |diff| {diff:.5f} (tolerance {tolerance})"
        )
        if diff > tolerance:
            raise typer.Exit(1)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    return obj
