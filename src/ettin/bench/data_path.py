"""Benchmark of the data path (not a test; numbers go into docs/data.md).

1. Prepare throughput: MB of text per second through `ettin.data.prepare.prepare` (read, tokenize,
   write shards, hash) against calling the tokenizers library's batch encoder directly on the same
   texts already in memory. Target: prepare >= 70% of the direct encoder, on 2 cores.
2. Batch cost: producing one training batch (stream.next_batch + make_inputs, and recording it in the
   data order) against one training step (forward, backward, optimizer) of the smallest CPU models.
   Target: under 5% of a step.
3. Pre-tokenized MDS (`--only mds --mds FOLDER`, a folder in Ettin's layout, e.g. written by
   tests/data/fixtures/mds/write_fixtures.py --bench): tokens/s decoding the MDS shards, preparing
   them (ids copied, checked, written as ettin shards), and streaming batches from the result in the
   bert24 order, against streaming ettin's own shards of tokenized text in ettin's order.
4. Engines (`--only engines`): tokens/s of `prepare --engine local` and `--engine ray` on the same JSONL
   folder (`--engines-mb`), Ray's start-up timed apart; target: Ray within 25% of local. From tokens/s per core, the
   cores needed to prepare 2T tokens in a day.

    .venv/bin/python -m ettin.bench.data_path [--quick] [--json OUT] [--only mds --mds FOLDER]   (or bench/bench_data.py)
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


def bench_engines(tmp: Path, tokenizer_dir: Path, target_mb: float, files: int, repeat: int) -> dict:
    """Local against Ray on one JSONL folder of `files` files (built from the built-in corpora, repeated)."""
    import itertools

    import ray

    from ettin.data.prepare import prepare
    from ettin.data.sources import iter_texts

    corpus = tmp / "engines-corpus"
    corpus.mkdir()
    texts = list(iter_texts("wiki")) + list(iter_texts("shakespeare"))
    handles = [open(corpus / f"part{i:03d}.jsonl", "w", encoding="utf-8") for i in range(files)]
    written = 0
    for i, t in enumerate(itertools.cycle(texts)):
        line = json.dumps({"text": t}) + "\n"
        handles[i % files].write(line)
        written += len(line)
        if written >= target_mb * 1e6:
            break
    for h in handles:
        h.close()
    source = [f"bench=jsonl:{corpus}"]
    cpus = os.cpu_count() or 1
    t = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    startup = time.perf_counter() - t
    seconds: dict[str, list[float]] = {"local": [], "local_workers": [], "ray": []}
    tokens = 0
    try:
        prepare(source, tokenizer_dir, tmp / "engines-warm", engine="ray")  # workers start, tokenizer loads
        for _ in range(repeat):  # interleaved, so load from other processes hits all alike
            for name, kw in (("local", {}), ("local_workers", {"workers": cpus}), ("ray", {"engine": "ray"})):
                t = time.perf_counter()
                (r,) = prepare(source, tokenizer_dir, tempfile.mkdtemp(dir=tmp), **kw)
                seconds[name].append(time.perf_counter() - t)
                tokens = r.tokens
    finally:
        ray.shutdown()
    tps = {k: tokens / min(v) for k, v in seconds.items()}
    best_local = max(tps["local"], tps["local_workers"])
    per_core = tps["ray"] / cpus
    return {
        "text_mb": written / 1e6,
        "files": files,
        "tokens": tokens,
        "cpus": cpus,
        "local_tokens_s": tps["local"],
        "local_workers_tokens_s": tps["local_workers"],
        "ray_tokens_s": tps["ray"],
        "ray_startup_s": startup,
        "ray_overhead": 1 - tps["ray"] / best_local,
        "ray_tokens_s_per_core": per_core,
        "cores_for_2T_tokens_a_day": 2e12 / (86400 * per_core),
    }


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


def bench_mds(tmp: Path, mds_dir: Path, tokenizer_dir: Path, text_data: Path, repeat: int) -> dict:
    """Tokens per second: MDS decode, MDS prepare, bert24-order stream over it, ettin stream over text shards."""
    from ettin.data.mds import MDSFolder
    from ettin.data.prepare import prepare
    from ettin.data.stream import TokenStream
    from ettin.tokenizer import load_tokenizer

    folder = MDSFolder.open(mds_dir)
    tok = load_tokenizer(tokenizer_dir)  # loaded once: the timings are of the data, not of importing transformers
    tokens = 0

    def decode():
        nonlocal tokens
        tokens = sum(int(v.size) for _, (vals,) in folder.iter_shards(["input_ids"]) for v in vals)

    t_decode = best_of(decode, repeat)
    n = 0

    def run_prepare():
        nonlocal n
        out = tmp / f"mds-prep-{n}"
        n += 1
        prepare([f"ettin_mds=mds:{mds_dir}"], tok, out)

    t_prepare = best_of(run_prepare, repeat)
    from ettin.data.prepare import DEFAULT_SHARD_TOKENS, _Tokenizer
    from ettin.data.pretokenized import prepare_mds_ids
    from ettin.data.sources import parse_source

    loaded = _Tokenizer.load(tok)  # its fingerprint (about a second for ModernBERT's) is taken once here

    def run_copy():
        nonlocal n
        out = tmp / f"mds-prep-{n}"
        n += 1
        out.mkdir()
        prepare_mds_ids(parse_source(f"ettin_mds=mds:{mds_dir}"), loaded, out, shard_tokens=DEFAULT_SHARD_TOKENS)

    t_copy = best_of(run_copy, repeat)
    data = tmp / "mds-prep-0"

    def stream_rate(spec: dict, seq_len: int, batch: int, batches: int) -> float:
        s = TokenStream(spec, seed=1, seq_len=seq_len)
        t = time.perf_counter()
        got = sum(len(x) for _ in range(batches) for x in s.next_batch(batch_size_sequences=batch))
        return got / (time.perf_counter() - t)

    steps = max(1, min(folder.num_samples // 96, 40))
    bert24 = {"dir": str(data), "mixture": {"ettin_mds": 1}, "order": {"sampler": "bert24", "world_size": 4}}
    ettin_text = {"dir": str(text_data), "mixture": {"wiki": 0.5, "shakespeare": 0.5}}
    return {
        "samples": folder.num_samples,
        "tokens": tokens,
        "shards": len(folder.shards),
        "compression": folder.shards[0].compression,
        "mds_decode_tokens_per_s": tokens / t_decode,
        "mds_prepare_tokens_per_s": tokens / t_prepare,
        "mds_prepare_without_tokenizer_load_tokens_per_s": tokens / t_copy,
        "stream_bert24_over_mds_tokens_per_s": stream_rate(bert24, 1024, 96, steps),
        "stream_ettin_over_mds_tokens_per_s": stream_rate(
            {**bert24, "order": None} | {"min_tokens": 1}, 1024, 96, steps
        ),
        "stream_ettin_over_text_shards_tokens_per_s": stream_rate(ettin_text, 1024, 96, steps),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shakespeare only, fewer repeats")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    ap.add_argument("--only", choices=("prepare", "batches", "mds", "engines"), help="run one part")
    ap.add_argument("--mds", type=Path, help="with --only mds: an MDS folder in Ettin's layout")
    ap.add_argument("--engines-mb", type=float, default=32, help="MB of JSONL text for --only engines")
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
        if args.only == "mds":
            if args.mds is None:
                ap.error("--only mds needs --mds FOLDER")
            mb = build_modernbert_tokenizer(tmp / "modernbert")
            prepare(["wiki", "shakespeare"], mb, tmp / "data-mb")
            report["mds"] = bench_mds(tmp, args.mds, mb, tmp / "data-mb", 2 if args.quick else 3)
            print(json.dumps({"mds": report["mds"]}, indent=2), flush=True)
            if args.json:
                args.json.write_text(json.dumps(report, indent=2) + "\n")
            return
        sources = ["shakespeare"] if args.quick else ["wiki", "shakespeare"]
        repeat = 2 if args.quick else 3
        mb = build_modernbert_tokenizer(tmp / "modernbert") if args.only != "batches" else None
        if args.only == "engines":
            small = None
        else:
            small = train_tokenizer(list(iter_texts("shakespeare")), 4096, tmp / "small")
        if args.only == "engines":
            report["engines"] = bench_engines(tmp, mb, args.engines_mb / (4 if args.quick else 1), 8, repeat)
            print(json.dumps({"engines": report["engines"]}, indent=2), flush=True)
        elif args.only != "batches":
            report["prepare_modernbert"] = bench_prepare(tmp, mb, sources, repeat)
            print(json.dumps({"prepare_modernbert": report["prepare_modernbert"]}, indent=2), flush=True)
            report["prepare_small_bpe"] = bench_prepare(tmp, small, sources, repeat)
            print(json.dumps({"prepare_small_bpe": report["prepare_small_bpe"]}, indent=2), flush=True)
        if args.only not in ("prepare", "engines"):
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
