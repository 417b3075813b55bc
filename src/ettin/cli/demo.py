"""`ettin demo`: the main job, from nothing to a report of the pair."""

from __future__ import annotations

from pathlib import Path

import typer


def _summary(console, result) -> None:
    from rich.table import Table

    from ettin.eval.report import task_result
    from ettin.train.metrics import throughput_table

    if result.train_stats:
        console.print(
            throughput_table(result.train_stats, "training (tokens of the shared stream per second, per model)")
        )
    res = result.results or {}
    pair = res.get("pair", {})
    if pair.get("tasks"):
        models = res["models"]
        enc, dec = pair["encoder"], pair["decoder"]
        table = Table(title=f"the pair on the {res.get('suite')} suite (95% intervals in report.md)")
        for col in ("task", "metric", "encoder", "decoder", "decoder - encoder", "chance"):
            table.add_column(col, justify="left" if col in ("task", "metric") else "right")
        for task in res["tasks"]:
            e, d = task_result(models, enc, task), task_result(models, dec, task)
            if not (e and e.ok and d and d.ok):
                table.add_row(task, "", e.status if e else "-", d.status if d else "-", "", "")
                continue
            table.add_row(
                task,
                e.score.metric,
                f"{e.score.value:.3f}",
                f"{d.score.value:.3f}",
                f"{d.score.value - e.score.value:+.3f}",
                f"{e.score.chance:.3f}",
            )
        console.print(table)
    if pair.get("tasks"):
        from ettin.eval.report import cross_findings, family_findings

        table = Table(title="findings (paired 95% intervals only)")
        for col in ("family / model", "the paper", "outcome", "tasks deciding it"):
            table.add_column(col)
        for kind, f in family_findings(res).items():
            deciding = ", ".join(f["expected"] + [f"{t} (opposite)" for t in f["opposite"]]) or "-"
            table.add_row(kind, f"{f['paper']} ahead", f["outcome"], deciding)
        for label, c in cross_findings(res).items():
            deciding = ", ".join([f"{t} (behind)" for t in c["behind"]] + [f"{t} (ahead)" for t in c["ahead"]]) or "-"
            table.add_row(label, f"behind the native {c['native']}", c["outcome"], deciding)
        console.print(table)
    table = Table(title="steps")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    for name, secs in result.seconds.items():
        table.add_row(name, f"{secs:.1f}")
    table.add_row("[bold]total[/bold]", f"[bold]{sum(result.seconds.values()):.1f}[/bold]")
    console.print(table)
    console.print("written:")
    for what, path in result.written:
        console.print(f"  {what:<28} {path}")


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo_cmd(
        out: str = typer.Option(
            "./runs/demo", "--out", help="folder for everything the demo writes (relative to where you run it)"
        ),
        recipe: str | None = typer.Option(
            None, "--recipe", help="recipe file or shipped recipe name (default: the shipped `demo`)"
        ),
        overrides: list[str] = typer.Option(
            [], "--set", help="override a recipe field, e.g. --set phases.0.tokens=200K"
        ),
        suite: str = typer.Option("demo", "--suite", help="evaluation suite: demo, quick or full"),
        cross: bool = typer.Option(
            True, "--cross/--no-cross", help="continue each final model in the other objective (the demo cross recipes)"
        ),
        no_progress: bool = typer.Option(False, "--no-progress", help="no progress bars"),
    ) -> None:
        """Tokenizer, data, a CPU pair through three phases, cross-objective continuations, HF export and
        reload, evaluation on the demo suite, report with findings."""
        from rich.console import Console

        from ettin.cli.evaluate import _RichProgress, compare_command
        from ettin.demo import run_demo

        console = Console()
        with _RichProgress(console, enabled=not no_progress) as progress:
            result = run_demo(
                out,
                recipe=recipe,
                overrides=overrides,
                suite=suite,
                cross=cross,
                progress=not no_progress,
                log=console.print,
                eval_progress=progress,
                render_command=compare_command,
            )
        _summary(console, result)
        console.print(f"[bold]report:[/bold] {Path(out) / 'report.md'}")
        if result.results and result.results.get("failed"):
            console.print(f"[red]{len(result.results['failed'])} evaluation(s) failed; see report.md[/red]")
            raise SystemExit(1)
