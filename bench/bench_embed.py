"""`ettin embed` against `SentenceTransformer(EXPORT).encode` on the same export and the same texts.

Both sides start from the texts (tokenisation included) and return float32 vectors; they run
interleaved in one process (ettin, sentence-transformers, ettin, ...) and the medians are compared,
so machine load hits both alike; the OpenMP wait policy is chosen as the `ettin` command chooses it
(`ettin.omp`: PASSIVE when the machine is busy at start) and holds for every side. The texts are Wikipedia paragraphs (the installed `wiki` corpus) cut
to seeded, log-uniform lengths of 8..`--max-words` words; models are random-initialised exports (speed does not
depend on the weights) with the ModernBERT tokenizer. The outputs are checked to agree.

Second reference (fp32 only, when onnxruntime, onnx and onnxscript are installed: `pip install -e .[bench]`):
ONNX Runtime's CPU session (`--threads` intra-op threads) on the same weights, the transformers model that
sentence-transformers loads exported with `torch.onnx.export`, run on sentence-transformers' batches
(texts sorted by length, `--batch-size` per batch, padded, tokenised by the same tokenizer with its
max_seq_length) and pooled as the export's pooling config says (mean over real tokens or the last real
token). The export is made before the timing; tokenisation and pooling are timed.

    .venv/bin/python bench/bench_embed.py [--sizes 17m demo] [--archs encoder] [--texts 2000]
        [--dtypes fp32 bf16] [--bf16-texts 64] [--max-words 250] [--repeat 3] [--threads 2] [--no-onnx]
        [--json OUT]

bf16 on a CPU without native bf16 matmul (AVX2 only) is emulated and very slow on both sides:
keep `--bf16-texts` small there.
"""

from __future__ import annotations

import argparse
import json
import math
import os
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


def onnx_missing() -> str | None:
    """Why the ONNX Runtime reference cannot run here, or None when it can."""
    import importlib.util

    missing = [m for m in ("onnxruntime", "onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    return f"{', '.join(missing)} not installed (pip install -e .[bench])" if missing else None


class OnnxSide:
    """The model sentence-transformers runs, exported to ONNX, in an ONNX Runtime CPU session, fed
    sentence-transformers' batches (see the module doc)."""

    def __init__(self, st, path: Path, threads: int, batch_size: int):
        import onnxruntime as ort
        import torch

        hf_model = st[0].auto_model.eval()
        self.tokenizer = st.tokenizer
        self.max_length = st.max_seq_length
        self.batch_size = batch_size
        pooling = st[1].get_config_dict()
        mode = pooling.get("pooling_mode")  # sentence-transformers >= 6; older ones: one flag per mode
        if mode is None:
            mode = (
                "lasttoken"
                if pooling.get("pooling_mode_lasttoken")
                else "mean" * bool(pooling.get("pooling_mode_mean_tokens"))
            )
        if mode not in ("mean", "lasttoken"):
            raise SystemExit(f"bench_embed: unexpected pooling config {pooling}")
        self.last = mode == "lasttoken"

        class Hidden(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask):
                return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

        sample = self.tokenizer(
            ["a short text", "and a somewhat longer text than that"], padding=True, return_tensors="pt"
        )
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
        with torch.no_grad():
            torch.onnx.export(
                Hidden(hf_model),
                (sample["input_ids"], sample["attention_mask"]),
                str(path),
                input_names=["input_ids", "attention_mask"],
                output_names=["hidden"],
                dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
                dynamo=True,
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def encode(self, texts: list[str]):
        import numpy as np

        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.zeros((len(texts), 0), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            members = order[start : start + self.batch_size]
            enc = self.tokenizer(
                [texts[i] for i in members],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="np",
            )
            mask = enc["attention_mask"].astype(np.int64)
            h = self.session.run(None, {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": mask})[0]
            if self.last:  # the last real token, whichever side the padding is on
                last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)
                vecs = h[np.arange(len(members)), last]
            else:
                vecs = (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
            if out.shape[1] == 0:
                out = np.zeros((len(texts), h.shape[-1]), dtype=np.float32)
            out[members] = vecs
        return out


def bench_case(
    export: Path, texts: list[str], dtype: str, repeat: int, batch_size: int, threads: int, onnx: bool, work: Path
) -> dict:
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from ettin import infer

    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    lm = infer.load(export, device="cpu", dtype="bfloat16" if dtype == "bf16" else None)
    st = SentenceTransformer(str(export), device="cpu", model_kwargs={"dtype": torch_dtype})
    ort_side = OnnxSide(st, work / "model.onnx", threads, batch_size) if onnx else None
    runs = {"ettin": [], "st": []} | ({"ort": []} if ort_side else {})
    out = {}

    def ettin_side():
        return infer.embed(lm, texts)

    def st_side():
        return st.encode(texts, batch_size=batch_size, convert_to_numpy=True).astype(np.float32)

    sides = [("ettin", ettin_side), ("st", st_side)] + ([("ort", lambda: ort_side.encode(texts))] if ort_side else [])
    warm = texts[: min(len(texts), 64)]
    infer.embed(lm, warm), st.encode(warm, batch_size=batch_size)  # warm-up
    if ort_side:
        ort_side.encode(warm)
    for r in range(repeat):
        for side, fn in sides:
            t = time.perf_counter()
            result = fn()
            runs[side].append(time.perf_counter() - t)
            if r == 0:
                out[side] = result
    med = {k: statistics.median(v) for k, v in runs.items()}
    tokens = sum(len(x) for x in infer.model_inputs(lm, texts))
    extra = {}
    if ort_side:
        extra = {
            "ort_s": med["ort"],
            "ort_over_ettin": med["ort"] / med["ettin"],
            "ort_texts_per_s": len(texts) / med["ort"],
            "ort_runs": runs["ort"],
            "ort_max_abs_diff_vs_st": float(np.abs(out["ort"] - out["st"]).max()),
        }
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
        "ettin_batch_tokens": infer.DEFAULT_BATCH_TOKENS,
    } | extra


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
    ap.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime reference")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from ettin.omp import choose_wait_policy

    policy = str(choose_wait_policy())  # before torch loads, as the `ettin` command chooses it; both sides share it
    print(f"bench_embed: OpenMP wait policy {policy}", file=sys.stderr)

    import torch

    from ettin import commands
    from ettin.tokenizer import build_modernbert_tokenizer

    torch.set_num_threads(args.threads)
    why_no_onnx = "--no-onnx" if args.no_onnx else onnx_missing()
    if why_no_onnx:
        print(f"bench_embed: no ONNX Runtime reference: {why_no_onnx}", file=sys.stderr)
    per_size = dict(zip(args.sizes, args.texts * len(args.sizes) if len(args.texts) == 1 else args.texts))
    texts = make_texts(max(per_size.values()), args.max_words)
    report = {
        "cpu": cpu_name(),
        "threads": args.threads,
        "omp_wait_policy": policy,
        "torch": torch.__version__,
        "onnxruntime": None if why_no_onnx else __import__("onnxruntime").__version__,
        "load_average": list(os.getloadavg()),
        "cases": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        tok = build_modernbert_tokenizer(Path(tmp) / "tok")
        for size in args.sizes:
            for arch in args.archs:
                export, _ = commands.init_model(size, arch, Path(tmp) / f"{size}-{arch}", tokenizer=tok)
                for dtype in args.dtypes:
                    n = per_size[size] if dtype == "fp32" else min(args.bf16_texts, per_size[size])
                    onnx = not why_no_onnx and dtype == "fp32"
                    work = Path(tmp) / f"{size}-{arch}-{dtype}"
                    work.mkdir()
                    r = bench_case(export, texts[:n], dtype, args.repeat, args.batch_size, args.threads, onnx, work)
                    r |= {"size": size, "arch": arch, "dtype": dtype, "load_average_after": list(os.getloadavg())}
                    report["cases"].append(r)
                    ort = f", onnxruntime {r['ort_s']:.2f} s ({r['ort_over_ettin']:.2f}x ettin)" if "ort_s" in r else ""
                    print(
                        f"{size} {arch} {dtype}: {r['texts']} texts ({r['tokens']:,} tokens): ettin {r['ettin_s']:.2f} s, "
                        f"sentence-transformers {r['st_s']:.2f} s, ratio {r['ratio']:.2f}{ort}, "
                        f"max |diff| {r['max_abs_diff']:.1e}",
                        file=sys.stderr,
                        flush=True,
                    )
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
