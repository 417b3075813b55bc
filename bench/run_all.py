"""The measurements behind bench/README.md: every target of the performance issue, one run each.

    .venv/bin/python bench/run_all.py [--quick] [--threads N] [--only train,infer,generate]

Writes bench/results/<name>.json (full reports) and prints a markdown table of medians. Each entry
times ettin and transformers interleaved in one process, so the ratio holds even when the shared
machine is busy; absolute times are only as steady as the machine was (the load average is recorded).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (name, task, size, arch, dtype, target ratio)
CASES = [
    ("train-demo-encoder-bf16", "train", "demo", "encoder", "bf16", 1.5),
    ("train-demo-decoder-bf16", "train", "demo", "decoder", "bf16", 1.5),
    ("train-17m-encoder-bf16", "train", "17m", "encoder", "bf16", 1.5),
    ("train-17m-decoder-bf16", "train", "17m", "decoder", "bf16", 1.5),
    ("train-demo-encoder-fp32", "train", "demo", "encoder", "fp32", 1.5),
    ("train-demo-decoder-fp32", "train", "demo", "decoder", "fp32", 1.5),
    ("train-17m-encoder-fp32", "train", "17m", "encoder", "fp32", 1.5),
    ("train-17m-decoder-fp32", "train", "17m", "decoder", "fp32", 1.5),
    ("infer-demo-encoder-bf16", "infer", "demo", "encoder", "bf16", 2.0),
    ("infer-demo-encoder-fp32", "infer", "demo", "encoder", "fp32", 2.0),
    ("infer-17m-encoder-bf16", "infer", "17m", "encoder", "bf16", 2.0),
    ("generate-demo-decoder-bf16", "generate", "demo", "decoder", "bf16", 1.3),
    ("generate-demo-decoder-fp32", "generate", "demo", "decoder", "fp32", 1.3),
    ("generate-17m-decoder-fp32", "generate", "17m", "decoder", "fp32", 1.3),
]


def row(name: str, r: dict, target: float) -> str:
    e, h = r["ettin"], r["hf"]
    mem = lambda x: f"{x['memory']['step_peak_mb']:,.0f}" if "step_peak_mb" in x.get("memory", {}) else "-"  # noqa: E731
    c = r["check"]
    check = (
        f"loss Δ {c['abs_diff']:.0e}"
        if "abs_diff" in c
        else f"max Δ {c['max_abs_diff']:.0e}"
        if "max_abs_diff" in c
        else ("same tokens" if c.get("tokens_equal") else f"{c.get('agree', 0):.0%} same tokens")
    )
    ok = "yes" if r["ratio"] >= target else "NO"
    return (
        f"| {name} | {e['median_s']:.3f} | {h['median_s']:.3f} | **{r['ratio']:.2f}** | {target:.1f} {ok} | "
        f"{e['tokens_per_s']:,.0f} | {h['tokens_per_s']:,.0f} | {e['mfu']:.1%} | {h['mfu']:.1%} | {mem(e)} | {mem(h)} | "
        f"{check} | {r['load_average'][0]:.1f} |"
    )


HEADER = (
    "| case | ettin s | hf s | ratio | target | ettin tok/s | hf tok/s | ettin MFU | hf MFU | ettin MB | hf MB "
    "| numerics (fp32: parity) | load |\n|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---:|"
)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="3 repeats, no memory")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--only", default="", help="comma-separated tasks or case names")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out-dir", type=Path, default=HERE / "results")
    args = ap.parse_args()
    from ettin.omp import choose_wait_policy

    policy = str(choose_wait_policy())  # before torch loads
    from ettin.bench import Spec, run

    only = [x for x in args.only.split(",") if x]
    out_dir = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [HEADER]
    for name, task, size, arch, dtype, target in CASES:
        if only and task not in only and name not in only:
            continue
        t = time.perf_counter()
        spec = Spec(task=task, size=size, arch=arch, dtype=dtype, threads=args.threads)
        r = run(spec, repeats=3 if args.quick else args.repeats, warmup=2, memory=not args.quick)
        r["target_ratio"] = target
        r["machine"]["omp_wait_policy"] = policy
        (out_dir / f"{name}.json").write_text(json.dumps(r, indent=2) + "\n")
        lines.append(row(name, r, target))
        print(lines[-1] + f"  ({time.perf_counter() - t:.0f}s)", file=sys.stderr, flush=True)
    print("\n".join(lines))
    print(f"\nOpenMP waits: {policy}; threads: {args.threads or 'default'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
