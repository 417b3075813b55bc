"""Evaluation commands: `ettin eval` (one model) and `ettin compare` (a trained pair, or two models at their tags)."""

from __future__ import annotations

from pathlib import Path

import typer

from ettin.errors import EttinError


class _RichProgress:
    """ettin.eval.runner.Progress drawn with rich: one bar per task step, a line per finished task."""

    def __init__(self, console, enabled: bool = True):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console
        self.enabled = enabled
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not enabled,
        )
        self.current = None

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def start(self, label: str, total: int | None) -> None:
        if self.current is not None:
            self.bar.remove_task(self.current)
        self.current = self.bar.add_task(label, total=total)

    def advance(self, n: int = 1) -> None:
        if self.current is not None:
            self.bar.advance(self.current, n)

    def finish(self, label: str, result) -> None:
        """One line per finished task (`result`: an ettin.eval.result.TaskResult)."""
        if self.current is not None:
            self.bar.remove_task(self.current)
            self.current = None
        who = result.model
        if result.ok:
            sc = result.score
            self.console.print(
                f"  {who:<14} {label:<15} {sc.metric:<8} {sc.value:.3f} "
                f"[{sc.ci['low']:.2f}, {sc.ci['high']:.2f}]  n={sc.n}  chance {sc.chance:.3f}  "
                f"{result.seconds:.1f}s",
                soft_wrap=True,
                highlight=False,
            )
        else:
            first = (result.error or "").splitlines()[0] if result.error else ""
            self.console.print(f"  {who:<14} {label:<15} [red]failed[/red]: {first}", soft_wrap=True)


def _check_out(out: str, overwrite: bool) -> None:
    """Finished results are not overwritten by a new run unless asked."""
    if (Path(out) / "results.json").is_file() and not overwrite:
        raise EttinError(
            "already holds evaluation results (results.json)",
            path=out,
            field="out",
            fix="choose another --out, or pass --overwrite to replace them",
        )


def compare_command(plan) -> str:
    """The `ettin compare` line that reproduces a plan made by `ettin.eval.plan.plan_run` (the flags
    are this module's; the report prints the line)."""
    req = plan.request
    models = req.encoder is not None or req.decoder is not None
    flags = [f"--suite {req.suite}", f"--seed {req.seed}"]
    flags += [f"--tasks {','.join(plan.tasks)}"] if req.tasks else []
    flags += [f"--revision {req.revision}"] if req.revision else []
    flags += [f"--limit {req.limit}"] if req.limit else []
    flags += ["--baselines"] if req.baselines else []
    flags += [] if req.dynamics else ["--no-dynamics"]
    flags += [f"--checkpoints {req.max_checkpoints}"] if req.dynamics and req.max_checkpoints != 4 else []
    flags += [f"--cross {c}" for c in req.cross]
    if models:
        flags += [f"--revisions {','.join(req.revisions)}"] if req.revisions else []
        return f"ettin compare --encoder {req.encoder} --decoder {req.decoder} --out {req.out} " + " ".join(flags)
    flags += [] if req.find_cross else ["--no-find-cross"]
    return f"ettin compare {req.run} --out {req.out} " + " ".join(flags)


def _print_tasks(console) -> None:
    from rich.table import Table

    from ettin.eval.tasks import SUITES, TASKS

    table = Table(title="evaluation tasks")
    for col in ("task", "kind", "metric", "suites", "what"):
        table.add_column(col)
    for t in TASKS.values():
        suites = ", ".join(s for s, suite in SUITES.items() if t.name in suite.tasks)
        table.add_row(t.name, t.kind, t.metric, suites, t.description)
    console.print(table)


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_cmd(
        model: str | None = typer.Argument(None, help="model folder, or a model's training run (e.g. RUN/encoder)"),
        out: str | None = typer.Option(None, "--out", help="output folder: one JSON per task + results.json"),
        revision: str | None = typer.Option(None, "--revision", help="checkpoint tag of a training run"),
        tasks: str | None = typer.Option(
            None, "--tasks", help="comma-separated tasks or suites (default: the suite's)"
        ),
        suite: str = typer.Option(
            "quick", "--suite", help="quick (subsampled, probes) or full (all items, fine-tuning)"
        ),
        seed: int = typer.Option(0, "--seed", help="seed for subsampling, probes and fine-tuning"),
        limit: int | None = typer.Option(None, "--limit", help="at most this many items per task"),
        tokenizer: str | None = typer.Option(None, "--tokenizer", help="tokenizer folder (default: the model's)"),
        pooling: str | None = typer.Option(
            None, "--pooling", help="mean, cls or last (default: mean for encoders, last for decoders)"
        ),
        threads: int | None = typer.Option(
            None, "--threads", help="torch CPU threads (1 is much faster on a busy machine)"
        ),
        device: str | None = typer.Option(None, "--device", help="auto (default: the GPU if any), cpu, cuda, cuda:N"),
        list_tasks: bool = typer.Option(False, "--list-tasks", help="list the tasks and suites, then exit"),
        overwrite: bool = typer.Option(False, "--overwrite", help="replace results already in --out"),
        no_progress: bool = typer.Option(False, "--no-progress", help="no progress bars"),
    ) -> None:
        """Evaluate one model: per-task JSON with metric, n, 95% interval and seconds."""
        from rich.console import Console

        console = Console()
        if list_tasks:
            _print_tasks(console)
            return
        if model is None:
            raise EttinError("missing MODEL", fix="give a model folder or a model's run folder (or --list-tasks)")
        if out is None:
            raise EttinError("missing --out", field="out", fix="give a folder for the results, e.g. --out evals/mine")
        _check_out(out, overwrite)
        from ettin.eval.runner import evaluate_model

        with _RichProgress(console, enabled=not no_progress) as progress:
            res = evaluate_model(
                model,
                tasks,
                suite,
                out,
                seed,
                revision=revision,
                tokenizer=tokenizer,
                pooling=pooling,
                limit=limit,
                threads=threads,
                device=device,
                progress=progress,
            )
        console.print(
            f"evaluated {res['model']} ({res['info']['arch']}) on {len(res['tasks'])} tasks in {res['seconds']:.0f}s"
        )
        for name in res["tasks"]:
            console.print(f"  wrote {Path(out) / (name + '.json')}")
        console.print(f"  wrote {Path(out) / 'results.json'}")
        if res["failed"]:
            console.print(f"[red]{len(res['failed'])} task(s) failed[/red]: {', '.join(res['failed'])}")
            raise SystemExit(1)

    @app.command("compare")
    def compare_cmd(
        run: str | None = typer.Argument(
            None, help="training run folder holding encoder/ and decoder/ (or give --encoder and --decoder)"
        ),
        out: str = typer.Option(..., "--out", help="output folder for report.md, results.json and plots"),
        suite: str = typer.Option("quick", "--suite", help="quick or full"),
        tasks: str | None = typer.Option(None, "--tasks", help="comma-separated tasks or suites"),
        seed: int = typer.Option(0, "--seed", help="seed for subsampling, probes and fine-tuning"),
        revision: str | None = typer.Option(
            None,
            "--revision",
            help="evaluate this tag of every model (default: the latest; with --revisions, the last of them)",
        ),
        dynamics: bool = typer.Option(True, "--dynamics/--no-dynamics", help="also evaluate earlier checkpoints"),
        checkpoints: int = typer.Option(4, "--checkpoints", help="checkpoints per model for the dynamics plot"),
        limit: int | None = typer.Option(None, "--limit", help="at most this many items per task"),
        tokenizer: str | None = typer.Option(None, "--tokenizer", help="tokenizer folder (default: the models')"),
        baselines: bool = typer.Option(False, "--baselines", help="also evaluate the pair's random initialisation"),
        cross: list[str] | None = typer.Option(
            None, "--cross", help="a cross-objective run or model to include (repeatable)"
        ),
        find_cross: bool = typer.Option(
            True, "--find-cross/--no-find-cross", help="include runs beside RUN that start from its models"
        ),
        encoder: str | None = typer.Option(
            None, "--encoder", help="instead of RUN: the encoder, a hub id or a folder (with --decoder)"
        ),
        decoder: str | None = typer.Option(
            None, "--decoder", help="instead of RUN: the decoder, a hub id or a folder (with --encoder)"
        ),
        revisions: str | None = typer.Option(
            None, "--revisions", help="with --encoder/--decoder: tags for the dynamics, e.g. step0,ext1000,decay100"
        ),
        device: str | None = typer.Option(None, "--device", help="auto (default: the GPU if any), cpu, cuda, cuda:N"),
        threads: int | None = typer.Option(
            None, "--threads", help="torch CPU threads (1 is much faster on a busy machine)"
        ),
        overwrite: bool = typer.Option(False, "--overwrite", help="replace a report already in --out"),
        no_progress: bool = typer.Option(False, "--no-progress", help="no progress bars"),
    ) -> None:
        """Evaluate a run's encoder and decoder (or two models given by --encoder/--decoder, at --revisions)
        on the same tasks; write report.md, results.json, plots."""
        from rich.console import Console

        from ettin.eval.plan import CompareRequest, plan_run
        from ettin.eval.runner import run_plan

        if checkpoints < 1:
            raise EttinError(f"--checkpoints {checkpoints} must be at least 1", field="checkpoints")
        _check_out(out, overwrite)
        request = CompareRequest(
            run,
            out,
            suite,
            seed,
            tasks=tasks,
            revision=revision,
            dynamics=dynamics,
            max_checkpoints=checkpoints,
            limit=limit,
            baselines=baselines,
            cross=tuple(cross or ()),
            find_cross=find_cross,
            encoder=encoder,
            decoder=decoder,
            revisions=tuple(r.strip() for r in (revisions or "").split(",") if r.strip()),
        )
        plan = plan_run(request)
        console = Console()
        with _RichProgress(console, enabled=not no_progress) as progress:
            res = run_plan(
                plan,
                out,
                tokenizer=tokenizer,
                threads=threads,
                device=device,
                command=compare_command(plan),
                progress=progress,
            )
        console.print(f"compared {', '.join(res['models'])} on {len(res['tasks'])} tasks in {res['seconds']:.0f}s")
        for f in res["files"]:
            console.print(f"  wrote {f}")
        if res["failed"]:
            console.print(
                f"[red]{len(res['failed'])} task run(s) failed[/red]: "
                + ", ".join(f"{f['model']}/{f['task']}" for f in res["failed"])
            )
            raise SystemExit(1)
