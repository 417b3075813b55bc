"""Training MFU of the 150m pair at sequence length 1024 on one CUDA GPU, ettin vs transformers.

Run from the repository root (no install needed; `src/` is put on the path):

    python bench/gpu_mfu.py                 # about 3-5 minutes on an H100/H200
    python bench/gpu_mfu.py --quick         # fewer steps, one batch shape

Prints one JSON object on stdout (progress goes to stderr). One training step = forward with labels,
backward, StableAdamW step (torch-optimi; plain AdamW when it is missing, said in the JSON), bf16
autocast, weights and optimizer state in fp32. ettin gets the batch as one flat varlen batch and uses
flash-attn's varlen kernel (sliding window on local layers) when `import flash_attn` works, SDPA
otherwise; transformers gets the same sequences padded, with flash_attention_2 when flash-attn is
there, else sdpa. MFU = useful model FLOPs per second / the measured bf16 matmul peak of this GPU
(docs/performance.md has the FLOP formula; padding is not useful work). Also reported against the
nominal dense bf16 peak when the GPU is one we know.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])

NOMINAL_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}


def log(msg: str) -> None:
    print(f"[gpu_mfu {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def environment() -> dict:
    info: dict = {"python": sys.version.split()[0]}
    import torch

    info["torch"] = torch.__version__
    info["cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    try:
        import flash_attn

        info["flash_attn"] = flash_attn.__version__
    except Exception as exc:  # noqa: BLE001 - missing or broken build: fall back to SDPA
        info["flash_attn"] = None
        info["flash_attn_error"] = f"{type(exc).__name__}: {exc}"[:300]
    for name in ("transformers", "optimi"):
        try:
            info[name] = __import__(name).__version__
        except Exception as exc:  # noqa: BLE001
            info[name] = None
            info[f"{name}_error"] = f"{type(exc).__name__}: {exc}"[:300]
    return info


def patch_optimizer_if_missing(env: dict) -> None:
    """Without torch-optimi both sides use torch's fused AdamW instead (the same for both)."""
    if env.get("optimi"):
        return
    import torch

    import ettin.bench.workloads as w

    def adamw(model):
        return torch.optim.AdamW(
            model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=1e-5, fused=True
        )

    w.optimizer = adamw


def summarize(r: dict, peak_nominal: float | None) -> dict:
    s = r["spec"]
    out = {
        "arch": s["arch"],
        "lengths": f"{s['min_len']}..{s['max_len']}",
        "batch": s["batch"],
        "tokens_per_step": r["tokens_per_step"],
        "padded_fraction": round(r["lengths"]["padded_fraction"], 3),
        "flops_per_step": r["flops_per_step"],
        "check": r["check"],
    }
    for side in ("ettin", "hf"):
        if side not in r:
            continue
        x = r[side]
        out[side] = {
            "median_s": round(x["median_s"], 4),
            "tokens_per_s": round(x["tokens_per_s"]),
            "tflops": round(x["flops_per_s"] / 1e12, 1),
            "mfu_measured_peak": round(x["mfu"], 4),
            "step_peak_mb": x.get("memory", {}).get("step_peak_mb"),
        }
        if peak_nominal:
            out[side]["mfu_nominal_peak"] = round(x["flops_per_s"] / (peak_nominal * 1e12), 4)
    if "ratio" in r:
        out["ratio"] = round(r["ratio"], 3)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description="150m training MFU at sequence length 1024, ettin vs transformers")
    ap.add_argument("--size", default="150m")
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--tokens", type=int, default=65536, help="tokens per step (batch = tokens // seq)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--arch", default="both", choices=("encoder", "decoder", "both"))
    ap.add_argument("--quick", action="store_true", help="5 repeats, fixed lengths only")
    ap.add_argument("--no-hf", action="store_true", help="ettin only")
    ap.add_argument("--device", default="cuda", help="cuda; cpu only to check the script itself on a tiny size")
    args = ap.parse_args()
    report: dict = {"script": "bench/gpu_mfu.py", "size": args.size, "seq": args.seq, "results": []}
    try:
        import torch

        report["env"] = env = environment()
        if args.device == "cuda" and not torch.cuda.is_available():
            report["error"] = "no CUDA device visible to torch"
            print(json.dumps(report, indent=2))
            return 1
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        from ettin.attention import backend_for
        from ettin.bench.machine import matmul_peak
        from ettin.bench.timing import run
        from ettin.bench.workloads import Spec

        report["ettin_attention"] = backend_for("cuda", torch.bfloat16)
        hf = env.get("transformers") is not None and not args.no_hf
        hf_attn = "flash_attention_2" if env.get("flash_attn") else "sdpa"
        report["hf_attention"] = hf_attn if hf else None
        report["optimizer"] = (
            "optimi.StableAdamW" if env.get("optimi") else "torch.optim.AdamW(fused=True) (torch-optimi missing)"
        )
        patch_optimizer_if_missing(env)
        peak = matmul_peak("bf16", args.device, 8192 if args.device == "cuda" else 1024)
        report["matmul_peak_bf16_tflops"] = round(peak / 1e12, 1)
        nominal = next((v for k, v in NOMINAL_BF16_TFLOPS.items() if k in env.get("gpu", "")), None)
        report["nominal_peak_bf16_tflops"] = nominal
        log(
            f"{env.get('gpu')}: measured bf16 matmul peak {peak / 1e12:.0f} TFLOP/s; ettin attention: {report['ettin_attention']}"
        )
        archs = ("encoder", "decoder") if args.arch == "both" else (args.arch,)
        shapes = [(args.seq, args.seq)] if args.quick else [(args.seq, args.seq), (args.seq // 8, args.seq)]
        repeats = 5 if args.quick else args.repeats
        for arch in archs:
            for lo, hi in shapes:
                batch = max(1, args.tokens // hi) if lo == hi else max(1, 2 * args.tokens // (lo + hi))
                while True:
                    spec = Spec(
                        task="train",
                        size=args.size,
                        arch=arch,
                        dtype="bf16",
                        batch=batch,
                        min_len=lo,
                        max_len=hi,
                        device=args.device,
                        hf_attn=hf_attn,
                    )
                    log(f"{arch} lengths {lo}..{hi} batch {batch}")
                    try:
                        r = run(spec, vs="hf" if hf else None, repeats=repeats, warmup=args.warmup, memory=True)
                        break
                    except torch.OutOfMemoryError:
                        torch.cuda.empty_cache()
                        if batch <= 1:
                            raise
                        batch //= 2
                        log(f"out of memory; retrying with batch {batch}")
                    except Exception as exc:  # noqa: BLE001 - transformers refusing flash_attention_2: use sdpa
                        if hf_attn != "flash_attention_2":
                            raise
                        report["hf_attention"] = hf_attn = "sdpa"
                        report["hf_flash_attention_2_error"] = f"{type(exc).__name__}: {exc}"[:500]
                        log(f"transformers with flash_attention_2 failed ({exc}); retrying with sdpa")
                row = summarize(r, nominal)
                report["results"].append(row)
                log(json.dumps(row))
                if args.device == "cuda":
                    torch.cuda.empty_cache()
    except Exception as exc:  # noqa: BLE001 - always print what was measured, and why it stopped
        report["error"] = f"{type(exc).__name__}: {exc}"
        report["traceback"] = traceback.format_exc()[-3000:]
    print(json.dumps(report, indent=2))
    return 0 if "error" not in report else 1


if __name__ == "__main__":
    sys.exit(main())
