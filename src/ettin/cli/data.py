"""Data commands: `ettin data prepare|inspect|mixture|order` and `ettin pair verify`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ettin.errors import EttinError


def _console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def _source_dirs(path: Path) -> list[Path]:
    if (path / "manifest.json").is_file():
        return [path]
    if not path.is_dir():
        raise EttinError("no such folder", path=path, fix="give the --out folder of `ettin data prepare`")
    dirs = sorted(p.parent for p in path.glob("*/manifest.json"))
    if not dirs:
        raise EttinError(
            "no prepared sources here", path=path, fix="run `ettin data prepare --source ... --out DIR` first"
        )
    return dirs


def _parse_pairs(items: list[str], option: str) -> list[tuple[str, str]]:
    out = []
    for item in items:
        if "=" not in item:
            raise EttinError(f"cannot read '{item}'", field=option, fix=f"write {option} NAME=VALUE")
        name, value = item.split("=", 1)
        out.append((name.strip(), value.strip()))
    return out


def _number(name: str, value: str, option: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise EttinError(
            f"'{value}' (for {name}) is not a number", field=option, fix=f"write {option} NAME=NUMBER"
        ) from None


def _export(table, out: Path) -> None:
    from ettin.io import atomic_path

    if out.suffix == ".parquet":
        import pyarrow.parquet as pq

        with atomic_path(out) as tmp:
            pq.write_table(table, tmp)
    elif out.suffix in (".jsonl", ".json"):
        with atomic_path(out) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                for row in table.to_pylist():
                    f.write(json.dumps(row) + "\n")
    else:
        raise EttinError(
            "unknown export format", path=out, field="--export", fix="end the file name in .parquet or .jsonl"
        )


def register(app: typer.Typer) -> None:
    sub = typer.Typer(help="Prepare corpora, inspect them, and read the recorded data order.", no_args_is_help=True)
    pair = typer.Typer(help="Checks on an encoder/decoder pair.", no_args_is_help=True)

    @sub.command("prepare")
    def prepare_cmd(
        source: list[str] = typer.Option(
            ...,
            "--source",
            "-s",
            help="a built-in corpus (wiki, shakespeare, pydoc) or [NAME=]KIND:PATH[#FIELD] with KIND text, jsonl, "
            "parquet, hf or mds (MosaicML MDS folder, local or s3://, gs://, hf://); repeatable",
        ),
        tokenizer: Path = typer.Option(..., "--tokenizer", help="tokenizer directory (tokenizer.json)"),
        out: Path = typer.Option(..., "--out", help="data folder; each source goes to OUT/NAME"),
        text_field: str | None = typer.Option(
            None, "--text-field", help="text key/column for jsonl, parquet, hf (default text)"
        ),
        split: str = typer.Option(
            "file", "--split", help="plain text: one document per file, line or blank-line block"
        ),
        on_error: str = typer.Option(
            "fail", "--on-error", help="fail on bytes that are not UTF-8 and bad JSONL lines, or skip (and count) them"
        ),
        shard_tokens: int = typer.Option(
            1 << 25, "--shard-tokens", help="tokens per shard (documents are never split)"
        ),
        workers: int = typer.Option(1, "--workers", help="tokenizer processes; 1 uses the tokenizer's own threads"),
        verify: bool = typer.Option(
            False, "--verify", help="also check the sha256 of shards that are already up to date"
        ),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="allow replacing sources made with another tokenizer"
        ),
        engine: str = typer.Option(
            "local", "--engine", help="local (processes on this machine) or ray (a Ray cluster; same bytes)"
        ),
        ray_address: str | None = typer.Option(
            None,
            "--ray-address",
            help="with --engine ray: HOST:PORT of a running cluster (`ray start --head`); default: RAY_ADDRESS, "
            "else Ray started on this machine",
        ),
    ) -> None:
        """Tokenize sources into memory-mapped shards plus a manifest; a second run with the same inputs does nothing."""
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        from ettin.data.prepare import prepare
        from ettin.data.sources import parse_source

        specs = []
        for s in source:
            spec = parse_source(s, split=split, on_error=on_error)
            if text_field and "#" not in s and spec.kind in ("jsonl", "parquet", "hf"):
                from dataclasses import replace

                spec = replace(spec, field=text_field)
            specs.append(spec)
        console = _console()
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        ) as bar:
            tasks: dict[str, int] = {}

            def progress(name: str, done: int, total: int) -> None:
                if name not in tasks:
                    tasks[name] = bar.add_task(name, total=total)
                bar.update(tasks[name], completed=done)

            results = prepare(
                specs,
                tokenizer,
                out,
                shard_tokens=shard_tokens,
                workers=workers,
                verify=verify,
                overwrite=overwrite,
                progress=progress,
                engine=engine,
                ray_address=ray_address,
            )
        for r in results:
            speed = f", {r.text_bytes / max(r.seconds, 1e-9) / 1e6:.1f} MB/s" if r.status != "up to date" else ""
            console.print(
                f"{r.name}: {r.status}: {r.documents:,} documents, {r.tokens:,} tokens in {r.shards} shard(s) "
                f"-> {r.folder}{speed}"
            )
            rep = r.report
            if rep.get("bad_utf8_bytes"):
                console.print(
                    f"  replaced {rep['bad_utf8_bytes']:,} byte(s) that are not UTF-8 (in {', '.join(rep['bad_utf8_files'])})"
                )
            if rep.get("bad_lines"):
                console.print(
                    f"  skipped {rep['bad_lines']:,} malformed JSONL line(s) (first: {', '.join(rep['bad_line_refs'])})"
                )
            if rep.get("empty_documents"):
                console.print(f"  skipped {rep['empty_documents']:,} empty document(s)")

    @sub.command("inspect")
    def inspect_cmd(
        path: Path = typer.Argument(..., help="a data folder (--out of prepare) or one prepared source"),
        verify: bool = typer.Option(False, "--verify", help="check every shard's sha256 (reads all data)"),
        tokenizer: Path | None = typer.Option(None, "--tokenizer", help="check the data was made with this tokenizer"),
        as_json: bool = typer.Option(False, "--json", help="print the manifests' summaries as JSON"),
    ) -> None:
        """Show what a data folder holds and check its files (sizes always, hashes with --verify)."""
        from ettin.data.shards import PreparedSource

        fp = None
        if tokenizer is not None:
            from ettin.tokenizer import tokenizer_fingerprint

            fp = tokenizer_fingerprint(tokenizer)
        rows = []
        for d in _source_dirs(path):
            src = PreparedSource.open(d, verify=verify, tokenizer_fingerprint=fp)
            m = src.manifest
            lengths = src.doc_lengths
            rows.append(
                {
                    "name": m["name"],
                    "folder": str(d),
                    "source": m["source"],
                    "documents": m["documents"],
                    "tokens": m["tokens"],
                    "shards": len(m["shards"]),
                    "text_bytes": m["text_bytes"],
                    "dtype": m["dtype"],
                    "tokens_per_document": {
                        "mean": float(lengths.mean()),
                        "median": float(sorted(lengths)[len(lengths) // 2]),
                        "max": int(lengths.max()),
                    },
                    "tokenizer": m["tokenizer"]["fingerprint"],
                    "report": m["report"],
                }
            )
        if as_json:
            print(json.dumps(rows, indent=2))
            return
        from rich.table import Table

        table = Table(title=str(path))
        for col in ("source", "from", "documents", "tokens", "tok/doc", "shards", "tokenizer"):
            table.add_column(col, justify="right" if col in ("documents", "tokens", "tok/doc", "shards") else "left")
        for r in rows:
            s = r["source"]
            table.add_row(
                r["name"],
                f"{s['kind']}:{s['path']}",
                f"{r['documents']:,}",
                f"{r['tokens']:,}",
                f"{r['tokens_per_document']['mean']:.0f}",
                str(r["shards"]),
                r["tokenizer"][:12],
            )
        console = _console()
        console.print(table)
        checked = "sizes and sha256" if verify else "sizes"
        console.print(f"checked {checked} of every shard" + (" and the tokenizer" if fp else "") + ": ok")

    @sub.command("mixture")
    def mixture_cmd(
        data: Path = typer.Option(..., "--data", help="the data folder"),
        weight: list[str] = typer.Option([], "--weight", help="NAME=WEIGHT, repeatable"),
        budget: list[str] = typer.Option([], "--budget", help="NAME=TOKENS (e.g. wiki=2M), repeatable"),
        seq_len: int = typer.Option(1024, "--seq-len", help="the phase's sequence length"),
        tokens: str = typer.Option("1M", "--tokens", help="how many tokens to draw"),
        seed: int = typer.Option(21, "--seed"),
        min_tokens: int | None = typer.Option(
            None, "--min-tokens", help="drop pieces under this (default min(128, seq_len/8))"
        ),
    ) -> None:
        """Draw a phase's stream and report the realised mixture (shares of tokens, epochs per source)."""
        from ettin.data.mixture import DataSpec, parse_count
        from ettin.data.stream import TokenStream

        entries = [{"source": n, "weight": _number(n, v, "--weight")} for n, v in _parse_pairs(weight, "--weight")]
        entries += [{"source": n, "tokens": v} for n, v in _parse_pairs(budget, "--budget")]
        if not entries:
            entries = [d.name for d in _source_dirs(data)]
        spec = DataSpec.from_dict(
            {"dir": str(data), "mixture": entries, **({"min_tokens": min_tokens} if min_tokens else {})}
        )
        stream = TokenStream(spec, seed=seed, seq_len=seq_len)
        goal = parse_count(tokens, field="--tokens")
        while stream.tokens_seen < goal:
            stream.next_batch(batch_size_tokens=min(1 << 16, goal - stream.tokens_seen))
        from rich.table import Table

        table = Table(
            title=f"{stream.tokens_seen:,} tokens, {stream.samples_seen:,} samples at seq_len {seq_len} (seed {seed})"
        )
        for col in ("source", "target", "realised", "tokens", "samples", "epochs", "chunks"):
            table.add_column(col, justify="left" if col == "source" else "right")
        for r in stream.mixture_report():
            table.add_row(
                r["source"],
                f"{r['target_share']:.2%}",
                f"{r['realised_share']:.2%}",
                f"{r['tokens']:,}",
                f"{r['samples']:,}",
                f"{r['epochs']:.2f}",
                f"{r['chunks']:,}",
            )
        _console().print(table)

    @sub.command("order")
    def order_cmd(
        run: Path = typer.Argument(
            ...,
            help="a run folder (RUN, RUN/encoder), a data_order folder, a folder in the released layout "
            "(checkpoint_NNNNNN/steps_A_to_B.parquet), or `export` followed by RUN OUT",
        ),
        extra: list[str] | None = typer.Argument(None, help="with `export`: RUN OUT", show_default=False),
        layout: str | None = typer.Option(
            None, "--layout", help="ettin or ettin-release (jhu-clsp/ettin-data-order); default: what the folder holds"
        ),
        pad_id: int | None = typer.Option(
            None, "--pad-id", help="with export: the pad id (default: the run's tokenizer's)"
        ),
        arch: str | None = typer.Option(
            None, "--arch", help="encoder or decoder (default: whichever the run has, encoder first)"
        ),
        step: int | None = typer.Option(None, "--step", help="show (or export) this step only"),
        export: Path | None = typer.Option(None, "--export", help="write the rows to FILE.parquet or FILE.jsonl"),
        tokenizer: Path | None = typer.Option(
            None, "--tokenizer", help="decode the shown sequences with this tokenizer"
        ),
        check: bool = typer.Option(
            False, "--check", help="regenerate the order from the prepared data and seed and compare"
        ),
        data_dir: Path | None = typer.Option(
            None, "--data", help="with --check: the prepared data folder, if it moved"
        ),
        overwrite: bool = typer.Option(False, "--overwrite", help="with --export: replace an existing file"),
    ) -> None:
        """Show, export or check the recorded data order (one row per training sequence).

        `ettin data order export RUN OUT --layout ettin-release` writes a run's order in the layout of the
        released Ettin data order; `ettin data order FOLDER` reads that layout too (counts per checkpoint
        folder; --step N shows a step's sequences, decoded with --tokenizer)."""
        from ettin.data.order import RELEASE_LAYOUT, order_steps, read_order, read_plan, regenerate_order

        if layout not in (None, "ettin", RELEASE_LAYOUT):
            raise EttinError(f"unknown layout '{layout}'", field="--layout", fix=f"use ettin or {RELEASE_LAYOUT}")
        if str(run) == "export":
            _release_export(extra or [], layout, arch, pad_id)
            return
        if extra:
            raise EttinError(f"unexpected argument(s) {' '.join(extra)}", field="order", fix="give one folder")
        if layout == RELEASE_LAYOUT or (layout is None and _is_release_folder(run)):
            _release_show(run, step, tokenizer)
            return

        if check and (export is not None or step is not None or tokenizer is not None):
            raise EttinError(
                "--check compares the whole order; it does not combine with --export, --step or --tokenizer",
                field="--check",
                fix="run --check on its own",
            )
        folder = _order_folder(run, arch)
        console = _console()
        if check:
            recorded = read_order(folder)
            steps = int(recorded.column("step").to_numpy().max()) if recorded.num_rows else 0
            regenerated = regenerate_order(read_plan(folder), data_dir=data_dir, max_steps=steps)
            if recorded.equals(regenerated):
                console.print(f"{folder}: regenerated {steps} step(s) from the prepared data and seed: identical")
                return
            first = _first_difference(recorded, regenerated)
            console.print(f"{folder}: the regenerated order differs from the recorded one at step {first}")
            raise typer.Exit(1)
        if export is not None:
            if export.exists() and not overwrite:
                raise EttinError("exists", path=export, field="--export", fix="choose another file or pass --overwrite")
            table = read_order(folder, step)
            if step is not None and table.num_rows == 0:
                raise EttinError(f"step {step} is not recorded", path=folder, field="--step")
            _export(table, export)
            console.print(f"wrote {table.num_rows:,} row(s) to {export}")
            return
        if step is None:
            summary = order_steps(folder)
            if not summary:
                console.print(f"{folder}: no steps recorded")
                return
            phases: dict[str, list[int]] = {}
            for s in summary:
                phases.setdefault(s["phase"], []).append(s["step"])
            console.print(
                f"{folder}: {len(summary):,} step(s), {sum(s['sequences'] for s in summary):,} sequences, "
                f"{sum(s['tokens'] for s in summary):,} tokens"
            )
            for name, st in phases.items():
                console.print(f"  {name}: steps {st[0]}..{st[-1]}")
            src = read_order(folder, columns=["source", "length"])
            by = src.group_by("source").aggregate([("length", "sum")]).to_pylist()
            total = sum(r["length_sum"] for r in by) or 1
            console.print("  sources: " + ", ".join(f"{r['source']} {r['length_sum'] / total:.1%}" for r in by))
            return
        table = read_order(folder, step)
        if table.num_rows == 0:
            raise EttinError(f"step {step} is not recorded", path=folder, field="--step")
        rows = table.to_pylist()
        decode = None
        if tokenizer is not None:
            from ettin.tokenizer import load_tokenizer

            tok = load_tokenizer(tokenizer)
            decode = lambda ids: tok.decode(ids)  # noqa: E731
        console.print(
            f"step {step} ({rows[0]['phase']}): {len(rows)} sequences, {sum(r['length'] for r in rows):,} tokens, "
            f"hash {rows[0]['batch_hash']}"
        )
        for r in rows:
            if decode:
                shown = repr(decode(r["input_ids"])[:100])
            else:
                shown = " ".join(map(str, r["input_ids"][:12])) + (" ..." if r["length"] > 12 else "")
            console.print(f"  {r['seq']:>4} {r['source']}#{r['doc']}@{r['offset']} len {r['length']}: {shown}")

    @pair.command("verify")
    def verify_cmd(run: Path = typer.Argument(..., help="a pair's run folder holding encoder/ and decoder/")) -> None:
        """Check that the encoder and the decoder consumed identical data in identical order."""
        from ettin.data.order import compare_orders, order_steps

        enc = _order_folder(run, "encoder", strict=True)
        dec = _order_folder(run, "decoder", strict=True)
        result = compare_orders(enc, dec)
        console = _console()
        gaps = _order_gaps(run)
        if gaps:  # orders that agree but do not cover the checkpoints are no proof of anything
            console.print(f"incomplete: {'; '.join(gaps)}")
            raise typer.Exit(1)
        if result.identical:
            steps = order_steps(enc)
            console.print(
                f"identical: {result.steps_a:,} step(s), {sum(s['sequences'] for s in steps):,} sequences, "
                f"{sum(s['tokens'] for s in steps):,} tokens in the same order ({enc} = {dec})"
            )
            return
        console.print(f"differ: {result.reason} (encoder {result.steps_a:,} steps, decoder {result.steps_b:,} steps)")
        raise typer.Exit(1)

    app.add_typer(sub, name="data")
    app.add_typer(pair, name="pair")


def _order_gaps(run: Path) -> list[str]:
    """Per model: the steps its checkpoints say were trained that its data order does not record."""
    from ettin.data.order import ORDER_DIR, order_coverage_gap
    from ettin.runs import list_tags

    gaps = []
    for arch in ("encoder", "decoder"):
        tags = list_tags(run / arch) if (run / arch).is_dir() else []
        last = max((t.step for t in tags), default=0)
        gap = order_coverage_gap(run / arch / ORDER_DIR, last)
        if gap:
            gaps.append(f"{arch}: the data order does not cover its checkpoints' {last} steps: {gap}")
    return gaps


def _is_release_folder(path: Path) -> bool:
    import re

    pat = re.compile(r"^checkpoint_\d{6,}$")
    return path.is_dir() and (bool(pat.match(path.name)) or any(pat.match(p.name) for p in path.iterdir()))


def _release_export(args: list[str], layout: str | None, arch: str | None, pad_id: int | None) -> None:
    from ettin.data.order import RELEASE_LAYOUT, export_release

    if len(args) != 2:
        raise EttinError(
            "export needs RUN and OUT", field="export", fix="ettin data order export RUN OUT --layout ettin-release"
        )
    if layout not in (None, RELEASE_LAYOUT):
        raise EttinError(
            f"export writes the {RELEASE_LAYOUT} layout", field="--layout", fix=f"pass --layout {RELEASE_LAYOUT}"
        )
    run, out = Path(args[0]), Path(args[1])
    folder = _order_folder(run, arch)
    written = export_release(folder, out, pad_id=pad_id)
    console = _console()
    console.print(f"wrote {sum(written.values()):,} row(s) of {folder} to {out} ({RELEASE_LAYOUT} layout)")
    for name, rows in written.items():
        console.print(f"  {name}: {rows:,} rows")


def _release_show(folder: Path, step: int | None, tokenizer: Path | None) -> None:
    from ettin.data.order import release_step, release_summary

    console = _console()
    if step is None:
        rows = release_summary(folder)
        console.print(
            f"{folder}: {len(rows)} checkpoint folder(s), {sum(r['num_steps'] for r in rows):,} step(s), "
            f"{sum(r['rows'] for r in rows):,} sequences, {sum(r['ids'] for r in rows):,} ids"
        )
        for r in rows:
            sl = ",".join(map(str, r["sequence_length"])) or "?"
            console.print(
                f"  {r['checkpoint']}: {r['files']} file(s), steps {r['first_step']}..{r['last_step']} "
                f"({r['num_steps']:,}), {r['rows']:,} sequences, {r['ids']:,} ids, sequence_length {sl}"
            )
        return
    rows = release_step(folder, step)
    if not rows:
        raise EttinError(f"step {step} is not in these files", path=folder, field="--step")
    tok = None
    if tokenizer is not None:
        from ettin.tokenizer import load_tokenizer

        tok = load_tokenizer(tokenizer)
    console.print(f"step {step}: {len(rows)} sequences of {max(len(r) for r in rows)} ids")
    for i, r in enumerate(rows):
        if tok is not None:
            shown = repr(tok.decode(r, skip_special_tokens=False)[:160])
        else:
            shown = " ".join(map(str, r[:12])) + (" ..." if len(r) > 12 else "")
        console.print(f"  {i:>4}: {shown}")


def _order_folder(run: Path, arch: str | None, *, strict: bool = False) -> Path:
    from ettin.data.order import ORDER_DIR, resolve_order_dir

    if arch is None and not (run / ORDER_DIR).is_dir() and not any(run.glob("part-*.parquet")):
        for candidate in ("encoder", "decoder"):
            if (run / candidate / ORDER_DIR).is_dir():
                return resolve_order_dir(run, candidate)
    if strict:
        folder = run / arch / ORDER_DIR
        if not folder.is_dir():
            raise EttinError(
                f"no {arch} data order", path=folder, fix=f"give a pair's run folder that holds {arch}/{ORDER_DIR}"
            )
        return folder
    return resolve_order_dir(run, arch)


def _first_difference(a, b) -> int:
    ra, rb = a.to_pylist(), b.to_pylist()
    for x, y in zip(ra, rb):
        if x != y:
            return x["step"]
    return (ra[len(rb)] if len(ra) > len(rb) else rb[len(ra)])["step"] if len(ra) != len(rb) else -1
