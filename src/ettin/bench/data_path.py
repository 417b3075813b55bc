"""Benchmark of the data path (not a test; numbers go into docs/data.md).

1. Prepare throughput: MB of text per second through `ettin.data.prepare.prepare` (read, tokenize,
   write shards, hash) against calling the tokenizers library's batch encoder directly on the same
   texts already in memory. Target: prepare >= 70% of the direct encoder, on 2 cores.
2. Batch cost: producing one training batch (stream.next_batch + make_inputs, and recording it in the
   data order) against one training step (forward, backward, optimizer) of the smallest CPU models.
   Target: under 5% of a step.

    .venv/bin/python -m ettin.bench.data_path [--quick] [--json OUT]   (or bench/bench_data.py)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_prepare(tmp: Path, tokenizer_dir: Path, sources: list[str], repeat: int) -> dict:
    from tokenizers import Tokenizer

    from ettin.data.prepare import DEFAULT_BATCH_CHARS, prepare
    from ettin.data.sources import iter_texts

    texts = [t for s in sources for t in iter_texts(s)]
    nbytes = sum(len(t.encode("utf-8")) for t in texts)

    def direct_all():
        tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
        tok.encode_batch_fast(texts, add_special_tokens=False)

    def direct_batched():
        tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
        batch, chars = [], 0
        for t in texts:
            batch.append(t)
            chars += len(t)
            if chars >= DEFAULT_BATCH_CHARS:
                tok.encode_batch_fast(batch, add_special_tokens=False)
                batch, chars = [], 0
        if batch:
            tok.encode_batch_fast(batch, add_special_tokens=False)

    processing: dict[int, list[float]] = {1: [], 2: []}

    def run_prepare(workers: int):
        def go():
            results = prepare(sources, tokenizer_dir, tempfile.mkdtemp(dir=tmp), workers=workers)
            processing[workers].append(sum(r.seconds for r in results))

        return go

    prepare(
        sources[:1], tokenizer_dir, tmp / f"warm-{tokenizer_dir.name}"
    )  # imports and tokenizer loading out of the timings
    out = {"text_mb": nbytes / 1e6, "documents": len(texts)}
    # interleave so that load from other processes on the machine hits both alike
    t_all, t_batched, t_prep1, t_prep2 = [], [], [], []
    for _ in range(repeat):
        t_all.append(best_of(direct_all, 1))
        t_batched.append(best_of(direct_batched, 1))
        t_prep1.append(best_of(run_prepare(1), 1))
        t_prep2.append(best_of(run_prepare(2), 1))
    direct = min(min(t_all), min(t_batched))
    # "call" includes loading and fingerprinting the tokenizer (a fixed cost per command); "sources" is
    # the time spent on the sources themselves (hash inputs, read, tokenize, write and hash shards).
    out |= {
        "direct_all_mb_s": nbytes / 1e6 / min(t_all),
        "direct_batched_mb_s": nbytes / 1e6 / min(t_batched),
        "prepare_sources_mb_s": nbytes / 1e6 / min(processing[1]),
        "prepare_call_mb_s": nbytes / 1e6 / min(t_prep1),
        "prepare_workers2_sources_mb_s": nbytes / 1e6 / min(processing[2]),
        "tokenizer_load_s": min(t_prep1) - min(processing[1]),
        "prepare_sources_vs_direct": direct / min(processing[1]),
        "prepare_call_vs_direct": direct / min(t_prep1),
        "prepare_workers2_sources_vs_direct": direct / min(processing[2]),
    }
    return out


def bench_batches(tmp: Path, data_dir: Path, size: str, seq_len: int, batch_size: int, steps: int) -> dict:
    import torch

    from ettin.config import config_for_size
    from ettin.data.masking import make_inputs
    from ettin.data.order import OrderWriter
    from ettin.data.stream import TokenStream
    from ettin.model import EttinModel

    stream = TokenStream({"dir": str(data_dir), "mixture": {"wiki": 0.7, "shakespeare": 0.3}}, seed=21, seq_len=seq_len)
    vocab = stream.vocab_size
    special = stream.special_ids
    writer = OrderWriter(tmp / f"order-{size}-{seq_len}", flush_rows=10**9)

    def produce(step: int, objective: str):
        samples = stream.next_batch(batch_size_sequences=batch_size)
        return samples, make_inputs(
            samples, objective, special_ids=special, vocab_size=vocab, mask_rate=0.3, seed=21, step=step
        )

    for i in range(5):
        produce(i, "mlm")
    t_batch, t_record = [], []
    for i in range(steps * 4):
        t = time.perf_counter()
        samples, _ = produce(i, "mlm")
        t_batch.append(time.perf_counter() - t)
        t = time.perf_counter()
        writer.record(i + 1, "pretrain", samples)
        t_record.append(time.perf_counter() - t)
    t = time.perf_counter()
    writer.flush()
    flush = time.perf_counter() - t

    torch.manual_seed(0)
    results = {
        "size": size,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "batch_ms": 1e3 * statistics.median(t_batch),
        "record_ms": 1e3 * statistics.median(t_record),
        "flush_ms_per_step": 1e3 * flush / len(t_record),
    }
    for arch, objective in (("encoder", "mlm"), ("decoder", "clm")):
        model = EttinModel(config_for_size(size, arch, vocab_size=vocab))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        times = []
        for i in range(steps + 2):
            _, batch = produce(i, objective)
            t = time.perf_counter()
            out = model(batch.input_ids, cu_seqlens=batch.cu_seqlens, max_seqlen=batch.max_seqlen, labels=batch.labels)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i >= 2:
                times.append(time.perf_counter() - t)
        results[f"{arch}_step_ms"] = 1e3 * statistics.median(times)
    step_ms = min(results["encoder_step_ms"], results["decoder_step_ms"])
    results["batch_vs_step"] = results["batch_ms"] / step_ms
    results["batch_and_record_vs_step"] = (
        results["batch_ms"] + results["record_ms"] + results["flush_ms_per_step"]
    ) / step_ms
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shakespeare only, fewer repeats")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    ap.add_argument("--only", choices=("prepare", "batches"), help="run one half")
    ap.add_argument(
        "--threads",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="torch threads for the training step (1 is steadier on a busy machine)",
    )
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from ettin.data.prepare import prepare
    from ettin.data.sources import iter_texts
    from ettin.tokenizer import build_modernbert_tokenizer, train_tokenizer

    report: dict = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        sources = ["shakespeare"] if args.quick else ["wiki", "shakespeare"]
        repeat = 2 if args.quick else 3
        mb = build_modernbert_tokenizer(tmp / "modernbert") if args.only != "batches" else None
        small = train_tokenizer(list(iter_texts("shakespeare")), 4096, tmp / "small")
        if args.only != "batches":
            report["prepare_modernbert"] = bench_prepare(tmp, mb, sources, repeat)
            print(json.dumps({"prepare_modernbert": report["prepare_modernbert"]}, indent=2), flush=True)
            report["prepare_small_bpe"] = bench_prepare(tmp, small, sources, repeat)
            print(json.dumps({"prepare_small_bpe": report["prepare_small_bpe"]}, indent=2), flush=True)
        if args.only != "prepare":
            prepare(["wiki", "shakespeare"], small, tmp / "data-small")
            cases = (
                [("tiny", 128, 32), ("demo", 256, 32)]
                if args.quick
                else [("tiny", 128, 32), ("tiny", 512, 32), ("demo", 256, 32), ("demo", 512, 96)]
            )
            report["batches"] = []
            for size, seq_len, bs in cases:
                r = bench_batches(tmp, tmp / "data-small", size, seq_len, bs, steps=5 if args.quick else 10)
                report["batches"].append(r)
                print(json.dumps(r), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
