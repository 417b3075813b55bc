"""Counter-based hashing: random-looking numbers that are a pure function of what they are for.

splitmix64's mixer over (seed, step, a sequence's index in the global batch, position). The MLM masking
(`ettin.data.masking`) and training dropout (`ettin.dropout`) draw from it, so neither depends on how a
batch is split into micro-batches or across ranks.
"""

from __future__ import annotations

import numpy as np

_M64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    x = (x ^ (x >> np.uint64(30))) * _C1
    x = (x ^ (x >> np.uint64(27))) * _C2
    return x ^ (x >> np.uint64(31))


def sequence_keys(seed: int, step: int, indices: np.ndarray) -> np.ndarray:
    """One 64-bit key per sequence from (seed, step, index in the global batch)."""
    with np.errstate(over="ignore"):
        k = _mix(np.full(len(indices), seed & _M64, np.uint64) + _GOLDEN)
        k = _mix(k + np.full(len(indices), step & _M64, np.uint64) * _GOLDEN)
        return _mix(k + np.asarray(indices, np.uint64) * _GOLDEN)


def uniform(keys: np.ndarray, positions: np.ndarray, stream: int) -> np.ndarray:
    """Uniform [0, 1) floats, one per (key, position), independent across `stream` numbers."""
    with np.errstate(over="ignore"):
        x = _mix(keys ^ ((positions.astype(np.uint64) * np.uint64(4) + np.uint64(stream + 1)) * _C2))
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
