"""What the machine can do and how much memory a workload takes.

The matmul peak is measured, not looked up: the fraction of it a model reaches (its "MFU") is only
meaningful against what this machine's BLAS actually delivers for the dtype at hand.
"""

from __future__ import annotations

import functools
import gc
import os
import time

import torch


@functools.cache
def matmul_peak(dtype: str = "fp32", device: str = "cpu", n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a square n x n matmul: the best of `repeats` after warm-up (a busy machine only slows it)."""
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    a = torch.randn(n, n, device=device, dtype=dt)
    b = torch.randn(n, n, device=device, dtype=dt)
    inner = 20 if torch.device(device).type == "cuda" else 1  # one GPU matmul is too short to time alone
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        for _ in range(inner):
            a @ b
        sync(device)
        times.append((time.perf_counter() - t) / inner)
    return 2 * n**3 / min(times)


def sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median(xs: list[float]) -> float:
    s = sorted(xs)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else 0.5 * (s[mid - 1] + s[mid])


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def rss_mb() -> float:
    """Resident memory of this process now."""
    return _status_kb("VmRSS") / 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of resident memory to what is resident now (Linux >= 4.0).

    This is what makes a CPU peak measurable for a single step: `resource.getrusage`'s maxrss never
    goes down, so model building and earlier steps would hide the step's own peak.
    """
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    return _status_kb("VmHWM") / 1024


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def describe(device: str = "cpu") -> dict:
    """Machine facts that belong next to every number measured on it."""
    info = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "cpu": cpu_name(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info
