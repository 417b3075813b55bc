"""How one training step and one inference batch grow with sequence length and model size.

Every point holds the tokens per step fixed (batch = tokens // length sequences of one length), so
that what changes along a row is the attention cost, not the amount of work. Encoder only: the
decoder's layers cost the same, its head differs (see the train benchmark for both archs).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from ettin.bench.timing import run
from ettin.bench.workloads import Spec
from ettin.io import atomic_write_json, atomic_write_text

TRAIN_TOKENS, INFER_TOKENS = 4096, 8192


def grid(quick: bool = False) -> list[tuple[str, str, int]]:
    """(task, size, sequence length) points a 2-core CPU measures in minutes."""
    if quick:
        return [("train", "tiny", 128), ("infer", "tiny", 256)]
    points = [("train", size, n) for size in ("demo", "17m") for n in (128, 256, 512, 1024, 2048)]
    points += [("train", size, 512) for size in ("32m", "68m", "150m")]
    points += [("infer", "demo", n) for n in (128, 512, 2048, 8192)]
    points += [("infer", size, 512) for size in ("17m", "32m", "68m", "150m")]
    return points


SKIPPED = (
    "training at 4k-8k tokens per sequence (minutes per step on 2 cores), training and inference above "
    "150m, decoders (their layers cost what the encoder's do), fp32 (bf16 only)"
)


def scaling(
    out: Path,
    *,
    quick: bool = False,
    repeats: int = 3,
    threads: int | None = None,
    memory: bool = True,
    on_point: Callable[[str], None] | None = None,
) -> Path:
    rows = []
    for task, size, n in grid(quick):
        tokens = TRAIN_TOKENS if task == "train" else INFER_TOKENS
        spec = Spec(
            task=task,
            size=size,
            arch="encoder",
            dtype="bf16",
            batch=max(1, tokens // n),
            min_len=n,
            max_len=n,
            threads=threads,
        )
        if on_point:
            on_point(f"{task} {size} seq {n}")
        t = time.perf_counter()
        r = run(spec, repeats=repeats, warmup=1, memory=memory, matmul_n=256 if quick else 2048)
        rows.append(
            {
                "task": task,
                "size": size,
                "seq": n,
                "batch": spec.batch,
                "tokens": r["tokens_per_step"],
                "ettin_s": r["ettin"]["median_s"],
                "hf_s": r["hf"]["median_s"],
                "ratio": r["ratio"],
                "ettin_mb": r["ettin"].get("memory", {}).get("step_peak_mb"),
                "hf_mb": r["hf"].get("memory", {}).get("step_peak_mb"),
                "ettin_mfu": r["ettin"]["mfu"],
                "hf_mfu": r["hf"]["mfu"],
                "load": r["load_average"],
                "seconds": time.perf_counter() - t,
            }
        )
    out = Path(out)
    atomic_write_json(out.with_suffix(".json"), rows)
    atomic_write_text(out, markdown(rows))
    return out


def markdown(rows: list[dict]) -> str:
    lines = [
        "| step | size | seq | batch | ettin s | hf s | ratio | ettin MB | hf MB | ettin MFU | hf MFU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mb = lambda v: "-" if v is None else f"{v:,.0f}"  # noqa: E731
        lines.append(
            f"| {r['task']} | {r['size']} | {r['seq']} | {r['batch']} | {r['ettin_s']:.3f} | {r['hf_s']:.3f} | "
            f"{r['ratio']:.2f} | {mb(r['ettin_mb'])} | {mb(r['hf_mb'])} | {r['ettin_mfu']:.1%} | {r['hf_mfu']:.1%} |"
        )
    lines += [
        "",
        f"Tokens per step fixed: {TRAIN_TOKENS} (train), {INFER_TOKENS} (infer). Encoder, bf16 autocast. "
        f"Skipped: {SKIPPED}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(json.dumps(grid(), indent=1))
