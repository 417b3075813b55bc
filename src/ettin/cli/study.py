"""`ettin study`: the demo's comparison over a size ladder, ending in a figure per task family."""

from __future__ import annotations

from pathlib import Path

import typer


def _summary(console, result) -> None:
    from rich.table import Table

    table = Table(title="study: encoder - decoder per task and size (paired 95% intervals in study.md)")
    rungs = [r["label"] for r in result.summary["rungs"]]
    for col in ("family", "task", *rungs):
        table.add_column(col, justify="left" if col in ("family", "task") else "right")
    for kind, fam in result.summary["families"].items():
        for t in fam["tasks"]:
            cells = {p["rung"]: p["gap"] for p in result.summary["tasks"][t]["points"]}
            row = [f"{g['diff']:+.3f}" if (g := cells.get(r)) and g.get("diff") is not None else "-" for r in rungs]
            table.add_row(kind, t, *row)
    console.print(table)
    for label, secs in result.seconds.items():
        console.print(f"  {label:<8} {secs:.0f} s")
    for path in result.written:
        console.print(f"  written: {path}")


def register(app: typer.Typer) -> None:
    @app.command("study")
    def study_cmd(
        out: str = typer.Option("runs/study", "--out", help="folder for every rung and the study's figure"),
        ladder: str = typer.Option("cpu", "--ladder", help="cpu (tiny, mini, demo on 2 cores) or gpu (17m, 32m, 68m)"),
        sizes: str | None = typer.Option(None, "--sizes", help="comma-separated sizes (default: the ladder's)"),
        overrides: list[str] = typer.Option([], "--set", help="override a field of every rung's recipe"),
        suite: str = typer.Option("demo", "--suite", help="evaluation suite of every rung"),
        cross: bool = typer.Option(False, "--cross/--no-cross", help="also run the cross-objective continuations"),
        no_progress: bool = typer.Option(False, "--no-progress", help="no progress bars"),
    ) -> None:
        """The pair at each size of a ladder on one stream, then score and gap against parameters."""
        from rich.console import Console

        from ettin.cli.evaluate import _RichProgress, compare_command
        from ettin.study import run_study

        console = Console()
        with _RichProgress(console, enabled=not no_progress) as progress:
            result = run_study(
                out,
                ladder=ladder,
                sizes=[s.strip() for s in sizes.split(",") if s.strip()] if sizes else None,
                overrides=overrides,
                suite=suite,
                cross=cross,
                progress=not no_progress,
                log=console.print,
                eval_progress=progress,
                render_command=compare_command,
            )
        _summary(console, result)
        console.print(f"[bold]study:[/bold] {Path(out) / 'study.md'}")
