"""`ettin embed` against `SentenceTransformer(EXPORT).encode` on the same export and the same texts.

Both sides start from the texts (tokenisation included) and return float32 vectors; they run
interleaved in one process (ettin, sentence-transformers, ettin, ...) and the medians are compared,
so machine load hits both alike. The texts are Wikipedia paragraphs (the installed `wiki` corpus) cut
to seeded, log-uniform lengths of 8..`--max-words` words; models are random-initialised exports (speed does not
depend on the weights) with the ModernBERT tokenizer. The outputs are checked to agree.

    .venv/bin/python bench/bench_embed.py [--sizes 17m demo] [--archs encoder] [--texts 2000]
        [--dtypes fp32 bf16] [--bf16-texts 64] [--max-words 250] [--repeat 3] [--threads 2] [--json OUT]

bf16 on a CPU without native bf16 matmul (AVX2 only) is emulated and very slow on both sides:
keep `--bf16-texts` small there.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path


def make_texts(n: int, max_words: int = 250, seed: int = 0) -> list[str]:
    from ettin.tokenizer import corpus_texts

    rng = random.Random(seed)
    words: list[str] = []
    for doc in corpus_texts(["wiki"]):
        words.extend(doc.split())
        if len(words) > max_words * 50 + n * 40:
            break
    texts = []
    for _ in range(n):
        k = int(math.exp(rng.uniform(math.log(8), math.log(max_words))))
        start = rng.randrange(0, len(words) - k)
        texts.append(" ".join(words[start : start + k]))
    return texts


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def bench_case(export: Path, texts: list[str], dtype: str, repeat: int, batch_size: int) -> dict:
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from ettin import infer

    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    lm = infer.load(export, device="cpu", dtype="bfloat16" if dtype == "bf16" else None)
    st = SentenceTransformer(str(export), device="cpu", model_kwargs={"dtype": torch_dtype})
    runs = {"ettin": [], "st": []}
    out = {}

    def ettin_side():
        return infer.embed(lm, texts)

    def st_side():
        return st.encode(texts, batch_size=batch_size, convert_to_numpy=True).astype(np.float32)

    warm = texts[: min(len(texts), 64)]
    infer.embed(lm, warm), st.encode(warm, batch_size=batch_size)  # warm-up
    for r in range(repeat):
        for side, fn in (("ettin", ettin_side), ("st", st_side)):
            t = time.perf_counter()
            result = fn()
            runs[side].append(time.perf_counter() - t)
            if r == 0:
                out[side] = result
    med = {k: statistics.median(v) for k, v in runs.items()}
    tokens = sum(len(x) for x in infer.model_inputs(lm, texts))
    return {
        "texts": len(texts),
        "tokens": tokens,
        "ettin_s": med["ettin"],
        "st_s": med["st"],
        "ratio": med["st"] / med["ettin"],
        "ettin_texts_per_s": len(texts) / med["ettin"],
        "st_texts_per_s": len(texts) / med["st"],
        "ettin_runs": runs["ettin"],
        "st_runs": runs["st"],
        "max_abs_diff": float(np.abs(out["ettin"] - out["st"]).max()),
        "st_batch_size": batch_size,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["17m", "demo"])
    ap.add_argument("--archs", nargs="+", default=["encoder"])
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--texts", type=int, nargs="+", default=[2000], help="texts per size (one number, or one per size)")
    ap.add_argument("--max-words", type=int, default=250)
    ap.add_argument("--bf16-texts", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32, help="SentenceTransformer.encode batch size (its default)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from ettin import commands
    from ettin.tokenizer import build_modernbert_tokenizer

    torch.set_num_threads(args.threads)
    per_size = dict(zip(args.sizes, args.texts * len(args.sizes) if len(args.texts) == 1 else args.texts))
    texts = make_texts(max(per_size.values()), args.max_words)
    report = {
        "cpu": cpu_name(),
        "threads": args.threads,
        "torch": torch.__version__,
        "cases": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        tok = build_modernbert_tokenizer(Path(tmp) / "tok")
        for size in args.sizes:
            for arch in args.archs:
                export, _ = commands.init_model(size, arch, Path(tmp) / f"{size}-{arch}", tokenizer=tok)
                for dtype in args.dtypes:
                    n = per_size[size] if dtype == "fp32" else min(args.bf16_texts, per_size[size])
                    r = bench_case(export, texts[:n], dtype, args.repeat, args.batch_size)
                    r |= {"size": size, "arch": arch, "dtype": dtype}
                    report["cases"].append(r)
                    print(
                        f"{size} {arch} {dtype}: {r['texts']} texts ({r['tokens']:,} tokens): ettin {r['ettin_s']:.2f} s, "
                        f"sentence-transformers {r['st_s']:.2f} s, ratio {r['ratio']:.2f}, max |diff| {r['max_abs_diff']:.1e}",
                        file=sys.stderr,
                        flush=True,
                    )
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
