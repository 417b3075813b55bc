"""Learning-rate schedules: pure functions of the tokens seen within a phase.

Tokens, not steps, because the paper's batches are unpadded and vary in tokens per step, and because
a schedule in tokens survives a change of batch size or of the number of processes unchanged.
"""

from __future__ import annotations

import math

from ettin.recipe import LRSection, Phase


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
