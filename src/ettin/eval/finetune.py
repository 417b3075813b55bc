"""The optimiser plumbing shared by classification fine-tuning and contrastive retrieval tuning."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def adamw(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms and biases)."""
    params = list(params)
    return torch.optim.AdamW(
        [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=lr,
    )


def warmup_linear(step: int, total: int, warmup: int) -> float:
    """Linear warmup over `warmup` steps, then linear decay to 0 at `total` (a factor of the peak LR)."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def update(opt: torch.optim.Optimizer, loss: torch.Tensor, lr: float) -> None:
    """One update at learning rate `lr`."""
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
