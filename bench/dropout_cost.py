"""What batch-split-independent dropout costs in a training step (ettin.dropout vs torch's nn.Dropout).

Three variants of the same ettin training step (same weights, same batch, StableAdamW), timed
interleaved: attention dropout 0.1 with hashed masks (what `ettin train` runs), 0.1 with torch's
generator (what it ran before), and no dropout. Prints medians and ratios.

    python bench/dropout_cost.py [--size demo] [--dtype bf16] [--repeats 7] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from ettin.bench.machine import median, sync
from ettin.bench.workloads import Spec, make_batch, optimizer
from ettin.dropout import dropout_seed, sequence_dropout_keys
from ettin.model import EttinModel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="demo")
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    spec = Spec(task="train", size=args.size, dtype=args.dtype, device=args.device, threads=args.threads)
    spec.apply_threads()
    cfg = spec.config().replace(attention_dropout=0.1)
    batch = make_batch(spec, cfg, with_labels=True)
    ids, cu, labels = (t.to(args.device) for t in (batch.ids, batch.cu_seqlens, batch.labels))
    n_seq = len(cu) - 1
    steps = {}
    for name in ("hashed", "torch", "none"):
        torch.manual_seed(0)
        model = EttinModel(cfg if name != "none" else cfg.replace(attention_dropout=0.0)).to(args.device).train()
        opt = optimizer(model)

        def step(model=model, opt=opt, name=name, counter=[0]):  # noqa: B006 - the step counter
            counter[0] += 1
            keys = sequence_dropout_keys(dropout_seed(0, "encoder"), counter[0], 0, n_seq) if name == "hashed" else None
            with spec.autocast():
                loss = model(
                    ids,
                    cu_seqlens=cu,
                    max_seqlen=batch.max_seqlen,
                    labels=labels,
                    return_logits=False,
                    dropout_keys=keys,
                ).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        steps[name] = step
    for step in steps.values():  # warm-up
        step()
    times = {k: [] for k in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            sync(args.device)
            t = time.perf_counter()
            step()
            sync(args.device)
            times[name].append(time.perf_counter() - t)
    med = {k: median(v) for k, v in times.items()}
    report = {
        "size": args.size,
        "dtype": args.dtype,
        "device": args.device,
        "tokens": int(ids.numel()),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "median_s": med,
        "hashed_vs_torch": med["hashed"] / med["torch"],
        "hashed_vs_none": med["hashed"] / med["none"],
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
