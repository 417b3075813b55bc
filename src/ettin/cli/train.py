"""Training commands: train, checkpoints, plot."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer


def _strip_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        out.append(a)
    return out


def _effective_recipe(
    recipe: str | Path | None,
    out: Path,
    resume: bool,
    overrides: list[str],
    arch: str | None,
    init: str | None,
    revision: str | None,
):
    from ettin.errors import EttinError
    from ettin.recipe import load_recipe
    from ettin.runs import RECIPE_FILE

    sets = list(overrides)
    if arch is not None:
        sets.append(f"arch={arch}")
    if init is not None:
        sets.append(f"init.path={json.dumps(init)}")
    if revision is not None:
        sets.append(f"init.revision={json.dumps(revision)}")
    if recipe is None:
        if not resume:
            raise EttinError(
                "no recipe given", fix="ettin train RECIPE --out RUN (or --resume --out RUN to continue a run)"
            )
        recipe = out / RECIPE_FILE
    return load_recipe(recipe, sets)


def _print_summary(console, result) -> None:
    from ettin.train.metrics import throughput_table

    if result.stats:
        console.print(throughput_table(result.stats))
    state = "finished" if result.finished else "stopped (resume with --resume)"
    losses = ", ".join(f"{a} {v:.4f}" for a, v in result.losses.items())
    console.print(
        f"{state} at step {result.step:,} ({result.tokens:,} tokens) in {result.seconds:.1f}s; last loss {losses}"
    )
    if result.tags:
        console.print(f"checkpoints: {', '.join(result.tags)}")
    console.print(f"run folder: {result.out}  (ettin checkpoints {result.out}; ettin plot {result.out})")


def register(app: typer.Typer) -> None:
    @app.command("train", context_settings={"allow_interspersed_args": True})
    def train_cmd(
        recipe: str | None = typer.Argument(
            None,
            help="recipe YAML or a shipped recipe's name, e.g. ettin-17m (`ettin recipes`); optional with --resume",
        ),
        out: Path = typer.Option(..., "--out", help="run folder; each model goes to OUT/encoder and OUT/decoder"),
        arch: str | None = typer.Option(None, "--arch", help="pair, encoder or decoder (default: the recipe's)"),
        overrides: list[str] = typer.Option(
            [], "--set", help="override a recipe field, e.g. --set phases.0.tokens=200000; repeatable"
        ),
        resume: bool = typer.Option(False, "--resume", help="continue from the run's last full checkpoint"),
        force: bool = typer.Option(False, "--force", help="with --resume: accept a changed recipe"),
        init: str | None = typer.Option(
            None,
            "--init",
            help="start from these weights: a run's model folder (RUN/encoder), an HF folder, a folder of "
            "revisions or a hub id (jhu-clsp/ettin-encoder-150m)",
        ),
        revision: str | None = typer.Option(
            None, "--revision", help="with --init: the tag to start from (default: a run's latest, the hub's main)"
        ),
        nproc: int = typer.Option(
            1, "--nproc", help="processes on this machine (runs torchrun; DDP, or FSDP2 for large models)"
        ),
        max_steps: int | None = typer.Option(
            None, "--max-steps", help="stop after this global step (checkpoint first with a matching interval)"
        ),
        device: str | None = typer.Option(None, "--device", help="cpu, cuda (default: cuda when available)"),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar per phase"),
        threads: int | None = typer.Option(
            None, "--threads", help="CPU threads per process (on a busy shared CPU, 1 is often fastest)"
        ),
    ) -> None:
        """Train a pair (or one model) on a recipe: three phases, tagged checkpoints, exact resume."""
        from ettin.errors import EttinError

        for name, value in (("--max-steps", max_steps), ("--nproc", nproc), ("--threads", threads)):
            if value is not None and value < 1:
                raise EttinError(f"{value} must be at least 1", field=name)
        if force and not resume:
            raise EttinError(
                "--force only applies with --resume (it accepts a changed recipe)",
                field="--force",
                fix="add --resume to continue a run, or drop --force",
            )
        if nproc > 1 and "WORLD_SIZE" not in os.environ:
            raise typer.Exit(_launch(nproc))
        from rich.console import Console

        from ettin.train.trainer import TrainOptions, train

        console = Console(highlight=False)
        r = _effective_recipe(recipe, out, resume, overrides, arch, init, revision)
        rank0 = os.environ.get("RANK", "0") == "0"
        result = train(
            r,
            TrainOptions(
                out=out,
                resume=resume,
                force=force,
                progress=progress and rank0,
                max_steps=max_steps,
                device=device,
                threads=threads,
                log=console.print,
            ),
        )
        if rank0:
            _print_summary(console, result)

    @app.command("checkpoints")
    def checkpoints_cmd(
        run: Path = typer.Argument(..., help="a run folder (RUN) or one model's folder (RUN/encoder)"),
        as_json: bool = typer.Option(False, "--json", help="print machine-readable JSON"),
    ) -> None:
        """List a run's checkpoint tags with the tokens seen at each."""
        from rich.console import Console
        from rich.table import Table

        from ettin.errors import EttinError
        from ettin.runs import list_tags, model_runs

        dirs = model_runs(run)
        if not dirs:
            raise EttinError(
                "is not a training run (no encoder/ or decoder/ with checkpoints)",
                path=run,
                fix="give the --out of `ettin train`",
            )
        listing = {str(d): [t.to_dict() for t in list_tags(d)] for d in dirs}
        if as_json:
            print(json.dumps(listing, indent=2))
            return
        console = Console(highlight=False)
        for d in dirs:
            tags = list_tags(d)
            table = Table(title=f"{d} ({len(tags)} tags)")
            for col in ("tag", "phase", "step", "phase step", "tokens seen", "full state", "HF export"):
                table.add_column(col, justify="left" if col in ("tag", "phase") else "right")
            for t in tags:
                table.add_row(
                    t.tag,
                    t.phase_name,
                    f"{t.step:,}",
                    f"{t.phase_step:,}",
                    f"{t.tokens:,}",
                    "yes" if t.full_state else "-",
                    "yes" if t.hf else "-",
                )
            console.print(table)
        console.print(
            f"load one with ettin.load('{dirs[0]}', revision=TAG) or `ettin export {dirs[0]} --revision TAG OUT`"
        )

    @app.command("plot")
    def plot_cmd(
        run: Path = typer.Argument(..., help="a run folder"),
        out: Path | None = typer.Option(None, "--out", help="PNG to write (default RUN/loss.png)"),
    ) -> None:
        """Plot training (and held-out) loss against tokens for both models, phase boundaries marked."""
        from ettin.train.plot import plot_run

        path = plot_run(run, out)
        print(f"wrote {path}")


def _launch(nproc: int) -> int:
    from ettin.train.distributed import launch

    argv = _strip_nproc(sys.argv[1:])
    return launch(nproc, argv)
