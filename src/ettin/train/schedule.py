"""Learning-rate and batch-size schedules: pure functions of the tokens seen within a phase.

Tokens, not steps, because the paper's batches are unpadded and vary in tokens per step, and because
a schedule in tokens survives a change of batch size or of the number of processes unchanged.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ettin.errors import EttinError
from ettin.recipe import LRSection, Phase

BATCH_WARMUP_SHAPES = ("steps", "linear")


def lr_fraction(lr: LRSection, tokens: int, phase_tokens: int) -> float:
    """Fraction of the peak learning rate after `tokens` of a phase of `phase_tokens`.

    Linear warmup 0 -> start over warmup_tokens; constant start; then the decay shape from start to
    end over the last decay_tokens (default: all tokens after the warmup). Past the end, `end`.
    """
    start = lr.start
    end = start if lr.end is None else lr.end
    t = max(0, tokens)
    if lr.warmup_tokens and t < lr.warmup_tokens:
        return start * t / lr.warmup_tokens
    if lr.schedule == "constant":
        return start
    decay = lr.decay_tokens if lr.decay_tokens is not None else phase_tokens - lr.warmup_tokens
    begin = phase_tokens - decay
    if t <= begin:
        return start
    x = 1.0 if decay <= 0 else min(1.0, (t - begin) / decay)
    if lr.schedule == "1-sqrt":
        return end + (start - end) * (1.0 - math.sqrt(x))
    if lr.schedule == "linear":
        return start + (end - start) * x
    raise ValueError(f"unknown schedule {lr.schedule!r}")


def lr_at(phase: Phase, peak: float, tokens: int) -> float:
    """Learning rate for an optimizer step that ends with `tokens` seen in the phase."""
    return peak * lr_fraction(phase.lr, tokens, phase.tokens)


def warmup_linear_decay(step: int, total: int, warmup: int) -> float:
    """Fraction of the peak for optimizer step `step` (0-based) of `total`, counted in steps: linear
    warmup reaching the peak at step `warmup - 1`, then linear decay from the peak to 0 at `total`.
    The evaluation's fine-tuning schedule (the paper's GLUE recipe: 6% warmup, then linear decay)."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


# ----------------------------------------------------------------------------------------- batch size


@functools.lru_cache(maxsize=64)
def _step_thresholds(warmup_tokens: int, minimum: int, full: int) -> tuple[np.ndarray, np.ndarray]:
    """(sizes, token thresholds) of the `steps` shape: the multiples k * minimum below `full`, size k
    lasting until ceil(warmup_tokens * (1 + ... + k) / (1 + ... + K)) tokens."""
    sizes = np.arange(minimum, full, minimum, dtype=np.int64)
    weights = sizes // minimum
    cums = np.cumsum(weights)
    # float64 as ModernBERT's scheduler (steps_per_unit = warmup / sum(sizes)); exact for these ranges
    thresholds = np.ceil(warmup_tokens / float(cums[-1]) * cums).astype(np.int64)
    return sizes, thresholds


def batch_size_at(tokens_seen: int, warmup_tokens: int, minimum: int, full: int, shape: str = "steps") -> int:
    """Global batch (sequences) of the next step, after `tokens_seen` tokens of the phase.

    `steps` (ModernBERT's BatchSizeWarmupScheduler, bert24 `src/sequence_packer.py`): the batch goes
    through minimum, 2 x minimum, ... (the multiples of `minimum` below `full`; the original's unit is
    the per-device micro-batch times the devices), each size for a share of the warmup tokens
    proportional to the size, so that each size lasts the same number of optimizer steps; then
    `full`. `linear`: the size grows linearly in tokens from `minimum` to `full`, rounded down to a
    multiple of `minimum`. Neither depends on the micro-batch size.
    """
    if full < 1 or minimum < 1:
        raise EttinError(f"batch sizes must be positive (minimum {minimum}, full {full})", field="batch_size")
    if shape not in BATCH_WARMUP_SHAPES:
        raise EttinError(
            f"unknown batch-size warmup shape {shape!r}",
            field="batch_warmup_shape",
            fix=f"use one of: {', '.join(BATCH_WARMUP_SHAPES)}",
        )
    minimum = min(minimum, full)
    if warmup_tokens <= 0 or tokens_seen >= warmup_tokens or minimum == full:
        return full
    t = max(int(tokens_seen), 0)
    if shape == "linear":
        size = minimum + (full - minimum) * t / warmup_tokens
        return max(minimum, min(full, int(size // minimum) * minimum))
    sizes, thresholds = _step_thresholds(int(warmup_tokens), int(minimum), int(full))
    i = int(np.searchsorted(thresholds, t, side="right"))
    return int(sizes[i]) if i < len(sizes) else full


def batch_warmup_steps(warmup_tokens: int, minimum: int, full: int, tokens_per_sequence: int, shape: str = "steps"):
    """Optimizer steps the warmup takes when every sequence holds `tokens_per_sequence` tokens (the
    planning number the docs quote: full-length chunks, [CLS] and [SEP] included)."""
    steps = tokens = 0
    while tokens < warmup_tokens:
        size = batch_size_at(tokens, warmup_tokens, minimum, full, shape)
        if size == full:
            break
        if shape == "steps":  # jump to the end of this size in one go
            sizes, thresholds = _step_thresholds(int(warmup_tokens), int(min(minimum, full)), int(full))
            end = int(thresholds[int(np.searchsorted(sizes, size))])
            n = max(1, -(-(end - tokens) // (size * tokens_per_sequence)))
        else:
            n = 1
        steps += n
        tokens += n * size * tokens_per_sequence
    return steps


# ----------------------------------------------------------------------------------------- checkpoints


def checkpoint_due(before: int, after: int, every: int, phase_tokens: int) -> bool:
    """A checkpoint after the step that took the phase from `before` to `after` tokens: each time the
    count *within the phase* passes a multiple of `every` (it restarts in each phase, as the released
    runs' `reset_time`), and at the phase's end."""
    return after >= phase_tokens or after // every > before // every


def planned_checkpoints(recipe, tokens_per_sequence: int | None = None) -> list[tuple[str, int, int]]:
    """(phase, step within the phase, tokens within the phase) of every checkpoint of a full run, when
    every sequence holds `tokens_per_sequence` tokens (default: the phase's seq_len), with the
    recipe's batch-size warmup; the trainer decides with the same `checkpoint_due`."""
    out = []
    every = recipe.checkpoint.every_tokens
    for p in recipe.phases:
        per_seq = tokens_per_sequence or p.seq_len
        tokens = step = 0
        while tokens < p.tokens:
            size = p.batch_size
            if tokens < p.batch_warmup_tokens:
                size = batch_size_at(
                    tokens,
                    p.batch_warmup_tokens,
                    p.batch_warmup_min or p.batch_size,
                    p.batch_size,
                    p.batch_warmup_shape,
                )
            before, tokens, step = tokens, tokens + size * per_seq, step + 1
            if checkpoint_due(before, tokens, every, p.tokens):
                out.append((p.name, step, tokens))
    return out
