"""Using a model: fill-mask, generate, embed (the model card's three 30-second examples)."""

from __future__ import annotations

import json
import sys

import typer

_MODEL_HELP = "an export, a training run (with --revision) or a hub id"


def _opts():
    return {
        "revision": typer.Option(None, "--revision", help="checkpoint tag of a training run, or a hub revision"),
        "device": typer.Option(None, "--device", help="auto (default: the GPU if any), cpu, cuda, cuda:N"),
        "dtype": typer.Option(None, "--dtype", help="float32 (default), bfloat16, float16 or auto (as saved)"),
    }


def _load(model: str, revision, device, dtype):
    from rich.console import Console

    from ettin import infer

    with Console(stderr=True).status(f"loading {model}..."):
        return infer.load(model, revision, device=device, dtype=dtype)


def register(app: typer.Typer) -> None:
    o = _opts

    @app.command("fill-mask")
    def fill_mask(
        model: str = typer.Argument(..., help=_MODEL_HELP + "; an encoder"),
        text: str = typer.Argument(
            ..., help='text with [MASK] where a token is missing, e.g. "Paris is the [MASK] of France."'
        ),
        top_k: int = typer.Option(5, "--top-k", help="how many candidates per [MASK]"),
        as_json: bool = typer.Option(False, "--json", help="print transformers' fill-mask pipeline output as JSON"),
        revision: str | None = o()["revision"],
        device: str | None = o()["device"],
        dtype: str | None = o()["dtype"],
    ) -> None:
        """The most likely tokens for each [MASK] in TEXT, with their probabilities."""
        from ettin import infer

        if top_k < 1:
            raise typer.BadParameter(f"must be at least 1, not {top_k}", param_hint="'--top-k'")
        lm = _load(model, revision, device, dtype)
        results = infer.fill_mask(lm, text, top_k)
        if as_json:
            print(json.dumps(results[0] if len(results) == 1 else results, indent=2, ensure_ascii=False))
            return
        for m, row in enumerate(results):
            if len(results) > 1:
                print(f"[MASK] {m + 1}:")
            width = max(len(repr(r["token_str"])) for r in row)
            for r in row:
                print(f"  {r['score']:.4f}  {repr(r['token_str']):<{width}}  {r['sequence']}")

    @app.command("generate")
    def generate(
        model: str = typer.Argument(..., help=_MODEL_HELP + "; a decoder"),
        prompt: str | None = typer.Argument(None, help="the text to continue (or --prompts FILE)"),
        prompts: str | None = typer.Option(
            None, "--prompts", help="a .txt (one prompt per line) or .jsonl file (--field) of prompts, run in batches"
        ),
        field: str | None = typer.Option(None, "--field", help="the prompt field of a .jsonl file (default: text)"),
        out: str | None = typer.Option(None, "--out", help="write the completions as JSONL here (default: stdout)"),
        overwrite: bool = typer.Option(False, "--overwrite", help="replace --out if it exists"),
        max_new_tokens: int = typer.Option(50, "--max-new-tokens", help="tokens to generate at most"),
        temperature: float | None = typer.Option(
            None, "--temperature", help="sample with this temperature (0: greedy, the default)"
        ),
        top_p: float | None = typer.Option(None, "--top-p", help="sample from the smallest set of tokens reaching P"),
        top_k: int | None = typer.Option(None, "--top-k", help="sample from the K most likely tokens"),
        num_return_sequences: int = typer.Option(1, "--num-return-sequences", help="samples per prompt"),
        seed: int = typer.Option(0, "--seed", help="random seed of the sampling"),
        batch_size: int = typer.Option(8, "--batch-size", help="sequences generated together"),
        revision: str | None = o()["revision"],
        device: str | None = o()["device"],
        dtype: str | None = o()["dtype"],
    ) -> None:
        """Continue PROMPT, streaming the tokens as they come; or every prompt of --prompts FILE, batched.

        Greedy unless --temperature (above 0), --top-p or --top-k asks for sampling."""
        from ettin import infer
        from ettin.errors import EttinError

        if (prompt is None) == (prompts is None):
            raise EttinError("give one prompt or --prompts FILE (not both, not neither)", field="prompt")
        if field is not None and prompts is None:
            raise EttinError("--field applies to --prompts FILE", field="field")
        if out is not None:
            infer.check_output(out, overwrite, (".jsonl",))
        if batch_size < 1:
            raise typer.BadParameter(f"must be at least 1, not {batch_size}", param_hint="'--batch-size'")
        if prompts is not None and prompts.lower().endswith(".parquet"):
            raise EttinError("prompts come from .txt or .jsonl files", path=prompts)
        texts = [prompt] if prompt is not None else infer.read_texts(prompts, field)
        do_sample = (temperature is not None and temperature > 0) or top_p is not None or top_k is not None
        sampling = infer.Sampling(
            do_sample=do_sample,
            temperature=1.0 if not temperature else temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
        )
        infer.check_generation(max_new_tokens, sampling, num_return_sequences)
        lm = _load(model, revision, device, dtype)
        infer.require_arch(lm, "decoder", "generate")
        stream = prompt is not None and num_return_sequences == 1 and out is None
        if stream:
            sys.stdout.write(prompt)
            sys.stdout.flush()
            streamer = infer.TokenStreamer(lm.tokenizer, sys.stdout)
            infer.generate(
                lm, texts, max_new_tokens=max_new_tokens, sampling=sampling, batch_size=batch_size, streamer=streamer
            )
            sys.stdout.write("\n")
            return
        rows: list[dict | None] = [None] * len(texts)

        def done(i: int, completions: list[str]) -> None:
            rows[i] = {"index": i, "prompt": texts[i], "completions": completions}
            if out is None:
                print(json.dumps(rows[i], ensure_ascii=False), flush=True)

        infer.generate(
            lm,
            texts,
            max_new_tokens=max_new_tokens,
            sampling=sampling,
            num_return_sequences=num_return_sequences,
            batch_size=batch_size,
            on_done=done,
        )
        if out is not None:
            from ettin.io import atomic_write_text

            atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            print(f"wrote {len(rows)} prompts' completions to {out}", file=sys.stderr)

    @app.command("embed")
    def embed(
        model: str = typer.Argument(..., help=_MODEL_HELP),
        input: str = typer.Option(
            ..., "--input", help="texts: .txt (one per line), .jsonl (--field) or .parquet (--field)"
        ),
        out: str = typer.Option(
            ..., "--out", help="embeddings: .npy (float32 [N, hidden]) or .parquet (index, embedding)"
        ),
        field: str | None = typer.Option(
            None, "--field", help="the text field / column of a .jsonl / .parquet input (default: text)"
        ),
        normalize: bool = typer.Option(False, "--normalize", help="L2-normalise each embedding"),
        pooling: str | None = typer.Option(
            None, "--pooling", help="mean (encoder default), last (decoder default) or cls"
        ),
        max_length: int | None = typer.Option(
            None, "--max-length", help="cut texts to this many tokens (default: the model's positions)"
        ),
        batch_tokens: int = typer.Option(16384, "--batch-tokens", help="tokens per forward pass at most"),
        overwrite: bool = typer.Option(False, "--overwrite", help="replace --out if it exists"),
        revision: str | None = o()["revision"],
        device: str | None = o()["device"],
        dtype: str | None = o()["dtype"],
    ) -> None:
        """Embed every text of --input with the arch's pooling (mean for encoders, last token for decoders),
        as SentenceTransformer(EXPORT).encode does, batched by length on the varlen path."""
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from ettin import infer

        target = infer.check_output(out, overwrite)
        texts = infer.read_texts(input, field)
        if max_length is not None and max_length < 2:
            raise typer.BadParameter(f"must be at least 2, not {max_length}", param_hint="'--max-length'")
        infer.check_pooling(None, pooling)
        lm = _load(model, revision, device, dtype)
        infer.check_pooling(lm.arch, pooling)
        console = Console(stderr=True)
        with Progress(
            TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console
        ) as bar:
            task = bar.add_task("embed", total=len(texts))
            vectors = infer.embed(
                lm,
                texts,
                pooling=pooling,
                normalize=normalize,
                max_length=max_length,
                batch_tokens=batch_tokens,
                progress=lambda n: bar.advance(task, n),
            )
        infer.write_embeddings(target, vectors)
        print(
            f"wrote {target}: {vectors.shape[0]} x {vectors.shape[1]} float32 ({lm.arch}, {pooling or infer.ARCH_POOLING[lm.arch]} pooling)"
        )
