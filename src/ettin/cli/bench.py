"""`ettin bench`: ettin against transformers on this machine (train, infer, generate, data, scaling)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import typer

ARCH_DEFAULT = {"train": "both", "infer": "encoder", "generate": "decoder"}
HELP = {
    "train": "One training step (forward, backward, StableAdamW): ettin varlen vs transformers padded + SDPA.",
    "infer": "Encoder inference (final hidden states) on a batch of varied lengths: ettin varlen vs transformers padded.",
    "generate": "Greedy generation with a KV cache: ettin's generate vs transformers' generate.",
}


def _choices(value: str, allowed: tuple[str, ...], both: tuple[str, ...], field: str) -> list[str]:
    from ettin.errors import EttinError

    if value == "both":
        return list(both)
    if value not in allowed:
        raise EttinError(f"unknown {field} '{value}'", field=field, fix=f"use one of {', '.join(allowed + ('both',))}")
    return [value]


def _table(reports: list[dict]):
    from rich.table import Table

    table = Table(title="ettin vs transformers: medians, ratio > 1 when ettin is faster")
    for col in ("bench", "ettin s", "hf s", "ratio", "tok/s ettin/hf", "MFU ettin/hf", "MB ettin/hf", "numerics"):
        table.add_column(col, justify="left" if col in ("bench", "numerics") else "right")
    for r in reports:
        s, e, h = r["spec"], r["ettin"], r.get("hf")

        def mem(side):
            return f"{side['memory']['step_peak_mb']:.0f}" if "step_peak_mb" in side.get("memory", {}) else "-"

        pair = (lambda a, b: f"{a}/{b}") if h else (lambda a, b: a)  # noqa: E731
        h = h or {}
        table.add_row(
            f"{s['task']} {s['size']} {s['arch']} {s['dtype']}",
            f"{e['median_s']:.3f}",
            f"{h['median_s']:.3f}" if h else "-",
            f"{r['ratio']:.2f}" if "ratio" in r else "-",
            pair(f"{e['tokens_per_s']:,.0f}", f"{h.get('tokens_per_s', 0):,.0f}"),
            pair(f"{e['mfu']:.1%}", f"{h.get('mfu', 0):.1%}"),
            pair(mem(e), mem(h)),
            _check(r["check"]),
        )
    return table


def _check(check: dict) -> str:
    if "abs_diff" in check:
        return f"loss Δ {check['abs_diff']:.0e}"
    if "max_abs_diff" in check:
        return f"max Δ {check['max_abs_diff']:.0e}"
    if "tokens_equal" in check:
        return "same tokens" if check["tokens_equal"] else f"{check['agree']:.0%} same"
    return "-"


def _write(reports, out: Path | None) -> None:
    if out is not None:
        from ettin.io import atomic_write_json

        atomic_write_json(out, reports)


def _run(
    task: str,
    size: str,
    arch: str | None,
    vs: str,
    dtype: str,
    repeats: int,
    warmup: int,
    batch: int | None,
    min_len: int | None,
    max_len: int | None,
    new_tokens: int,
    memory: bool,
    compile_: bool,
    threads: int | None,
    device: str,
    as_json: bool,
    out: Path | None,
) -> None:
    from ettin import omp

    wait_policy = str(omp.current())
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ettin.bench import Spec, run

    archs = _choices(arch or ARCH_DEFAULT[task], ("encoder", "decoder"), ("encoder", "decoder"), "arch")
    dtypes = _choices(dtype, ("fp32", "bf16"), ("fp32", "bf16"), "dtype")
    if vs not in ("hf", "none"):
        from ettin.errors import EttinError

        raise EttinError(f"unknown --vs '{vs}'", field="vs", fix="use hf (transformers) or none")
    specs = [
        Spec(
            task=task,
            size=size,
            arch=a,
            dtype=d,
            batch=batch,
            min_len=min_len,
            max_len=max_len,
            new_tokens=new_tokens,
            device=device,
            compile=compile_,
            threads=threads,
        )
        for a in archs
        for d in dtypes
    ]
    console = Console(stderr=as_json, width=None if sys.stdout.isatty() else 120)
    reports = []
    per_spec = repeats * (2 if vs == "hf" else 1)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        for spec in specs:
            job = bar.add_task(f"{task} {spec.size} {spec.arch} {spec.dtype}", total=per_spec)
            reports.append(
                run(
                    spec,
                    vs=None if vs == "none" else "hf",
                    repeats=repeats,
                    warmup=warmup,
                    memory=memory,
                    on_step=lambda job=job: bar.advance(job),
                )
            )
    _write(reports, out)
    if as_json:
        print(json.dumps(reports, indent=2))
        return
    console.print(_table(reports))
    r0 = reports[0]
    console.print(
        f"{r0['machine']['cpu']}, {r0['machine']['threads']} threads (OpenMP waits: {wait_policy}), load average "
        f"{r0['load_average'][0]:.1f}; matmul peak measured at start. Peak memory: "
        + (r0["ettin"].get("memory", {}).get("method", "not measured") if memory else "not measured (--no-memory)")
    )
    if out is not None:
        console.print(f"wrote {out}")


def _command(task: str):
    def command(
        size: str = typer.Option("demo", "--size", help="model size (ettin models sizes)"),
        arch: str | None = typer.Option(
            None, "--arch", help=f"encoder, decoder or both (default {ARCH_DEFAULT[task]})"
        ),
        vs: str = typer.Option("hf", "--vs", help="hf: also run transformers and report the ratio; none: ettin only"),
        dtype: str = typer.Option("bf16", "--dtype", help="bf16 (autocast, fp32 weights), fp32 or both"),
        repeats: int = typer.Option(5, "--repeats", min=1, help="timed steps per side (medians reported)"),
        warmup: int = typer.Option(2, "--warmup", min=1, help="untimed steps per side first"),
        batch: int | None = typer.Option(None, "--batch", help="sequences per step (default per task)"),
        min_len: int | None = typer.Option(None, "--min-len", help="shortest sequence (prompt for generate)"),
        max_len: int | None = typer.Option(None, "--max-len", help="longest sequence (prompt for generate)"),
        new_tokens: int = typer.Option(64, "--new-tokens", help="generate: tokens generated per prompt"),
        memory: bool = typer.Option(
            True, "--memory/--no-memory", help="measure peak memory (one extra process per side)"
        ),
        compile_: bool = typer.Option(False, "--compile", help="torch.compile ettin's model (compile time not timed)"),
        threads: int | None = typer.Option(None, "--threads", help="torch threads (default: one per core)"),
        device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
        as_json: bool = typer.Option(False, "--json", help="print the full reports as JSON (the table goes away)"),
        out: Path | None = typer.Option(None, "--out", help="also write the JSON reports to this file"),
    ) -> None:
        _run(
            task,
            size,
            arch,
            vs,
            dtype,
            repeats,
            warmup,
            batch,
            min_len,
            max_len,
            new_tokens,
            memory,
            compile_,
            threads,
            device,
            as_json,
            out,
        )

    command.__doc__ = HELP[task]
    return command


def register(app: typer.Typer) -> None:
    bench = typer.Typer(
        help="Benchmarks: ettin against transformers on this machine (docs/performance.md).", no_args_is_help=True
    )
    app.add_typer(bench, name="bench")
    for task in ("train", "infer", "generate"):
        bench.command(task)(_command(task))

    @bench.command("data")
    def data_cmd(
        quick: bool = typer.Option(True, "--quick/--full", help="shakespeare only and fewer repeats, or everything"),
        out: Path | None = typer.Option(None, "--out", help="also write the numbers here (JSON)"),
    ) -> None:
        """The data path: prepare throughput and batch cost (runs ettin.bench.data_path, also bench/bench_data.py)."""
        args = [sys.executable, "-m", "ettin.bench.data_path"] + (["--quick"] if quick else [])
        args += ["--json", str(out)] if out else []
        typer.echo(f"running the data benchmark ({'quick' if quick else 'full'})")
        code = subprocess.call(args)
        if code == 0 and out is not None:
            typer.echo(f"wrote {out}")
        raise typer.Exit(code)

    @bench.command("scaling")
    def scaling_cmd(
        out: Path = typer.Option(Path("bench/scaling.md"), "--out", help="markdown table to write (JSON next to it)"),
        quick: bool = typer.Option(False, "--quick", help="fewer points (a smoke run)"),
        repeats: int = typer.Option(3, "--repeats", min=1),
        threads: int | None = typer.Option(None, "--threads", help="torch threads (default: one per core)"),
    ) -> None:
        """How time and memory grow with sequence length and model size, ettin vs transformers."""
        from rich.console import Console

        from ettin.bench.scaling import scaling

        console = Console()
        with console.status("measuring") as status:
            path = scaling(
                out,
                quick=quick,
                repeats=repeats,
                threads=threads,
                on_point=lambda msg: status.update(f"measuring {msg}"),
            )
        console.print(f"wrote {path} and {path.with_suffix('.json')}")
