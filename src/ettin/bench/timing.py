"""Timing ettin against transformers: interleaved repeats, medians, ratio, FLOP/s, memory.

The two sides run turn about in the same process (ettin, hf, hf, ettin, ...) so that a noisy,
shared machine slows both alike and the ratio stays meaningful even when absolute times drift.
Peak memory is measured separately, one fresh process per side, because a process that has run
both sides keeps freed memory around and would hide the second side's peak.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from ettin.attention import backend_for
from ettin.bench.machine import describe, matmul_peak, median, peak_rss_mb, reset_peak_rss, rss_mb, sync
from ettin.bench.workloads import Spec, Workload, workloads


def compare(a, b) -> dict:
    """How far ettin's output is from transformers' for the same input (first step, same weights)."""
    if isinstance(a, float):
        return {"loss_ettin": a, "loss_hf": b, "abs_diff": abs(a - b)}
    if a.dtype in (torch.long, torch.int):
        return {"tokens_equal": bool(torch.equal(a, b)), "agree": float((a == b).float().mean())}
    return {"max_abs_diff": float((a - b).abs().max())}


def time_interleaved(
    sides: dict[str, Workload],
    repeats: int,
    warmup: int,
    device: str = "cpu",
    on_step: Callable[[], None] | None = None,
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict]:
    """Wall and CPU seconds per step for each side, interleaved; also checks that the sides agree on step 1."""
    names = list(sides)
    first = {}
    for name in names:
        for i in range(warmup):
            result = sides[name].step()
            if i == 0 and sides[name].check is not None:
                first[name] = sides[name].check(result)
    check = compare(first["ettin"], first["hf"]) if len(first) == 2 else {}
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            sync(device)
            c, t = time.process_time(), time.perf_counter()
            sides[name].step()
            sync(device)
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
            if on_step:
                on_step()
    return times, cpu, check


def measure_memory(spec: Spec, side: str, steps: int = 2) -> dict:
    """Peak resident memory of one side's step, in a fresh process (see module docstring)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    code = "import sys; from ettin.bench.timing import _memory_child; _memory_child(sys.argv[1], sys.argv[2], int(sys.argv[3]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(spec.to_dict()), side, str(steps)],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cuda_step_memory(step: Callable[[], object]) -> dict:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return {
        "method": "torch.cuda.max_memory_allocated",
        "step_peak_mb": round((peak - base) / 2**20, 1),
        "peak_mb": round(peak / 2**20, 1),
    }


def _memory_child(spec_json: str, side: str, steps: int) -> None:
    import ctypes

    spec = Spec(**json.loads(spec_json))
    spec.apply_threads()
    if side == "hf":
        import transformers  # noqa: F401 - imported in both children so library code counts alike
    work = workloads(spec, sides=(side,))[side]
    work.step()  # warm-up: optimizer state, caches, compiled code
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    before = rss_mb()
    ok = reset_peak_rss()
    for _ in range(steps):
        work.step()
    print(
        json.dumps(
            {
                "method": "VmHWM after reset" if ok else "VmHWM (not reset)",
                "rss_before_mb": round(before, 1),
                "peak_rss_mb": round(peak_rss_mb(), 1),
                "step_peak_mb": round(peak_rss_mb() - before, 1),
            }
        )
    )


def run(
    spec: Spec,
    *,
    vs: str | None = "hf",
    repeats: int = 5,
    warmup: int = 2,
    memory: bool = True,
    on_step: Callable[[], None] | None = None,
    matmul_n: int = 2048,
) -> dict:
    """One benchmark: both sides timed interleaved; returns the JSON-ready report."""
    spec.apply_threads()
    load_before = os.getloadavg()[0]
    peak = matmul_peak(spec.dtype, spec.device, 8192 if spec.device.startswith("cuda") else matmul_n)
    sides = workloads(spec, ("ettin", "hf") if vs == "hf" else ("ettin",))
    times, cpu, check = time_interleaved(sides, repeats, warmup, spec.device, on_step)
    report = {
        "spec": spec.to_dict(),
        "machine": describe(spec.device) | {f"matmul_peak_{spec.dtype}_gflops": peak / 1e9},
        "load_average": [load_before, os.getloadavg()[0]],
        "repeats": repeats,
        "warmup": warmup,
        "check": check,
        "ettin_attention": backend_for(spec.device, torch.bfloat16 if spec.dtype == "bf16" else torch.float32),
    }
    lengths = spec.lengths()
    report["tokens_per_step"] = next(iter(sides.values())).tokens
    report["lengths"] = {
        "min": min(lengths),
        "max": max(lengths),
        "mean": sum(lengths) / len(lengths),
        "padded_fraction": 1 - sum(lengths) / (len(lengths) * max(lengths)),
    }
    report["flops_per_step"] = next(iter(sides.values())).flops
    for name, work in sides.items():
        t = median(times[name])
        report[name] = {
            "median_s": t,
            "min_s": min(times[name]),
            "times_s": times[name],
            "cpu_median_s": median(cpu[name]),
            "tokens_per_s": work.tokens / t,
            "flops_per_s": work.flops / t,
            "mfu": work.flops / t / peak,
        }
    if memory and spec.device.startswith("cuda"):  # the CUDA allocator counts exactly, in-process
        for name, work in sides.items():
            report[name]["memory"] = cuda_step_memory(work.step)
    del sides
    if memory and not spec.device.startswith("cuda"):
        for name in times:
            report[name]["memory"] = measure_memory(spec, name)
    if "hf" in times:
        report["ratio"] = report["hf"]["median_s"] / report["ettin"]["median_s"]
        report["ratio_cpu"] = report["hf"]["cpu_median_s"] / report["ettin"]["cpu_median_s"]
    return report
