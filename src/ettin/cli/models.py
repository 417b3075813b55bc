"""Model commands: sizes, init, export, convert."""

from __future__ import annotations

import json

import typer

from ettin.config import MODERNBERT_VOCAB_SIZE


def sizes_rows(vocab_size: int) -> list[dict]:
    from ettin.config import SIZES, config_for_size, count_parameters

    rows = []
    for name, s in SIZES.items():
        cfg = config_for_size(name, vocab_size=vocab_size)
        rows.append(
            {
                "size": name,
                "ettin": s.ettin,
                "layers": s.num_hidden_layers,
                "hidden": s.hidden_size,
                "intermediate": s.intermediate_size,
                "heads": s.num_attention_heads,
                "backbone_params": count_parameters(cfg),
                "with_head_params": count_parameters(cfg, with_head=True),
                "note": s.note,
            }
        )
    return rows


def register(app: typer.Typer) -> None:
    @app.command("sizes")
    def sizes(
        vocab_size: int = typer.Option(MODERNBERT_VOCAB_SIZE, "--vocab-size", help="vocabulary size for the counts"),
        as_json: bool = typer.Option(False, "--json", help="print machine-readable JSON"),
    ) -> None:
        """List the model sizes with their shapes and parameter counts."""
        rows = sizes_rows(vocab_size)
        if as_json:
            print(json.dumps({"vocab_size": vocab_size, "sizes": rows}, indent=2))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"ettin sizes (vocab {vocab_size:,})")
        for col in ("size", "layers", "hidden", "intermediate", "heads", "backbone", "with head", "kind"):
            table.add_column(col, justify="left" if col in ("size", "kind") else "right")
        for r in rows:
            kind = "Ettin" if r["ettin"] else "CPU"
            table.add_row(
                r["size"],
                str(r["layers"]),
                str(r["hidden"]),
                str(r["intermediate"]),
                str(r["heads"]),
                f"{r['backbone_params']:,}",
                f"{r['with_head_params']:,}",
                kind,
            )
        console = Console()
        if not console.is_terminal:
            console = Console(width=120)  # piped: keep the table whole
        console.print(table)
        console.print(
            "Backbone = embeddings + layers + final norm; the head adds dense, norm and vocabulary bias (tied weight)."
        )

    @app.command("init")
    def init(
        size: str = typer.Option(..., "--size", help="a size from `ettin sizes`"),
        arch: str = typer.Option(..., "--arch", help="encoder or decoder"),
        out: str = typer.Option(..., "--out", help="output directory (Hugging Face format)"),
        vocab_size: int | None = typer.Option(
            None, "--vocab-size", help="vocabulary size (default: the tokenizer's, else 50368)"
        ),
        tokenizer: str | None = typer.Option(
            None, "--tokenizer", help="tokenizer directory: vocabulary and special ids come from it and it is copied"
        ),
        seed: int = typer.Option(21, "--seed", help="random seed for the initialization"),
        overwrite: bool = typer.Option(False, "--overwrite", help="replace OUT if it exists"),
    ) -> None:
        """Write a randomly initialized model (spec initialization, seeded) as a Hugging Face directory."""
        from ettin import commands

        with _busy(f"initializing a {size} {arch}"):
            path, model = commands.init_model(
                size, arch, out, vocab_size=vocab_size, tokenizer=tokenizer, seed=seed, overwrite=overwrite
            )
        _report(path, model, f"initialized {size} {arch} (seed {seed})")

    @app.command("export")
    def export(
        src: str = typer.Argument(..., help="a model ettin can load: HF directory or training run"),
        out: str = typer.Argument(..., help="output directory (Hugging Face format)"),
        revision: str | None = typer.Option(None, "--revision", help="checkpoint tag of a training run"),
        arch: str | None = typer.Option(None, "--arch", help="convert to this arch on the way out"),
        tokenizer: str | None = typer.Option(None, "--tokenizer", help="tokenizer directory to include"),
        overwrite: bool = typer.Option(False, "--overwrite", help="replace OUT if it exists"),
    ) -> None:
        """Export anything ettin can load to a Hugging Face directory."""
        from ettin import commands

        with _busy(f"exporting {src}"):
            path, model = commands.export(
                src, out, revision=revision, arch=arch, tokenizer=tokenizer, overwrite=overwrite
            )
        _report(path, model, f"exported {src}" + (f" @ {revision}" if revision else ""))

    @app.command("convert")
    def convert(
        src: str = typer.Argument(..., help="a model ettin can load"),
        out: str = typer.Argument(..., help="output directory (Hugging Face format)"),
        arch: str = typer.Option(..., "--arch", help="target arch: encoder or decoder"),
        revision: str | None = typer.Option(None, "--revision", help="checkpoint tag of a training run"),
        overwrite: bool = typer.Option(False, "--overwrite", help="replace OUT if it exists"),
    ) -> None:
        """Convert an encoder to a decoder or back (same weights; the start of cross-objective training)."""
        from ettin import commands

        with _busy(f"converting {src} to a {arch}"):
            path, model = commands.export(
                src, out, revision=revision, arch=arch, overwrite=overwrite, require_arch_change=True
            )
        _report(path, model, f"converted {src} to a {arch}")


def _busy(what: str):
    """A spinner on stderr while a large model is built or read (stdout keeps only the report)."""
    from rich.console import Console

    return Console(stderr=True).status(f"{what}...")


def _report(path, model, what: str) -> None:
    from rich.console import Console

    from ettin.config import count_parameters

    cfg = model.config
    kind = "modernbert-decoder" if cfg.arch == "decoder" else "modernbert"
    console = Console(soft_wrap=True, highlight=False)
    console.print(
        f"{what}: {kind}, {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, vocab {cfg.vocab_size}, "
        f"{count_parameters(cfg, with_head=True):,} parameters"
    )
    console.print(f"wrote {path}/")
    for f in sorted(p for p in path.iterdir() if p.is_file()):
        console.print(f"  {f.name} ({f.stat().st_size:,} bytes)")
