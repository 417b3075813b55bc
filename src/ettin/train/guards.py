"""The checks that stop a run before anything of a bad step is kept: non-finite losses and weights,
updates skipped too often (exploding gradients), and a pair whose data orders differ.

Policy and exit codes: docs/reliability.md.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from ettin.errors import EttinError
from ettin.recipe import Phase
from ettin.runs import latest_full_state
from ettin.train.distributed import DistContext

if TYPE_CHECKING:
    from ettin.train.context import Member


class NonFiniteLoss(EttinError):
    exit_code = 3


class UnstableUpdate(EttinError):
    exit_code = 3


class DataOrderMismatch(EttinError):
    exit_code = 4


def _last_good(m: Member) -> str:
    last = latest_full_state(m.dir)
    return f"last good checkpoint: {last if last else 'none yet'}"


def check_finite_losses(losses: dict[str, float], step: int, phase: Phase, members: list[Member]) -> None:
    bad = {a: v for a, v in losses.items() if not math.isfinite(v)}
    if not bad:
        return
    parts = [f"{m.arch} loss is {bad[m.arch]}; {_last_good(m)}" for m in members if m.arch in bad]
    raise NonFiniteLoss(
        f"stopped at step {step} ({phase.name}): " + "; ".join(parts),
        fix="nothing was written for this step; lower the learning rate (--set optimizer.lr=...) "
        "and continue with --resume --force, or inspect the data",
    )


def check_finite_weights(m: Member, step: int, phase: Phase, ctx: DistContext) -> None:
    """An update can make weights non-finite while the loss that produced it was finite: never save them.

    Every rank checks its own shard and all ranks agree on the verdict, so they stop together.
    """
    local = (p.to_local() if hasattr(p, "to_local") else p for p in m.model.parameters())
    bad = 0.0 if all(bool(torch.isfinite(t).all()) for t in local) else 1.0
    if ctx.all_reduce_sum([bad])[0] == 0.0:
        return
    raise NonFiniteLoss(
        f"stopped at step {step} ({phase.name}): the {m.arch}'s weights hold NaN or inf, so checkpoint was not "
        f"written; {_last_good(m)}",
        fix="lower the learning rate (--set optimizer.lr=...) and continue with --resume --force",
    )


def skip_reason(norm: float, max_grad_norm: float | None) -> str | None:
    """Why an update with this gradient norm is skipped, or None to apply it."""
    if not math.isfinite(norm):
        return f"gradient norm is {norm}"
    if max_grad_norm is not None and norm > max_grad_norm:
        return f"gradient norm {norm:.4g} exceeds guards.max_grad_norm {max_grad_norm:g}"
    return None


def count_skips(members: list[Member], max_skips: int, step: int, phase: Phase) -> None:
    """Count skipped updates; too many in a row stop the run before anything of the step is kept."""
    for m in members:
        m.skips = m.skips + 1 if m.skipped else 0
        if m.skips > max_skips:
            raise UnstableUpdate(
                f"stopped at step {step} ({phase.name}): the {m.arch}'s update was skipped {m.skips} time(s) "
                f"in a row ({m.skipped}; guards.max_skips is {max_skips}); {_last_good(m)}",
                fix="lower the learning rate or raise guards.max_grad_norm / guards.max_skips "
                "(--set ...), then continue with --resume --force",
            )


def check_same_batch(hashes: dict[str, str], step: int, out) -> None:
    """Both models of a pair must have recorded the same batch."""
    if len(set(hashes.values())) > 1:
        raise DataOrderMismatch(
            f"step {step}: the data orders of the pair differ ({', '.join(f'{a} {h}' for a, h in hashes.items())})",
            path=out,
            fix="this is a bug; the last checkpoints are intact; report it with the run's data_order folders",
        )
