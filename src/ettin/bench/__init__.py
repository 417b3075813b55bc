"""Benchmarks: ettin against transformers on the same machine, weights, inputs and numerics.

`run(Spec(task="train", size="demo", arch="encoder"))` times one training step of each, interleaved,
and reports medians, their ratio (above 1 when ettin is faster), tokens/s, the fraction of the
machine's measured matmul peak reached, and peak memory. See docs/performance.md.

Importing this package does not load torch (`ettin.omp` must run before torch starts OpenMP).
"""

__all__ = ["Spec", "run"]


def __getattr__(name: str):
    if name == "Spec":
        from ettin.bench.workloads import Spec

        return Spec
    if name == "run":
        from ettin.bench.timing import run

        return run
    raise AttributeError(f"module 'ettin.bench' has no attribute {name!r}")
