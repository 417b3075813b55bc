"""Benchmarks: ettin against transformers on the same machine, weights, inputs and numerics.

`run(Spec(task="train", size="demo", arch="encoder"))` times one training step of each, interleaved,
and reports medians, their ratio (above 1 when ettin is faster), tokens/s, the fraction of the
machine's measured matmul peak reached, and peak memory. See docs/performance.md.
"""

from ettin.bench.run import run
from ettin.bench.workloads import Spec

__all__ = ["Spec", "run"]
