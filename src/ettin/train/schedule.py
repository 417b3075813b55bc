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
