"""StableAdamW as the paper ran it (ettin-spec.md section 5).

Fully decoupled weight decay: each step shrinks weights by `weight_decay * lr / peak`, so the decay
is set in absolute terms and follows the schedule's shape, not its scale. Norm weights and biases are
not decayed. No gradient clipping: StableAdamW's per-tensor update clipping takes its place.
"""

from __future__ import annotations

import torch
from torch import nn

from ettin.recipe import OptimizerSection


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed matrices, and undecayed norm weights and biases (every 1-d parameter).

    The vocabulary projection is tied to the embedding and appears once, as the embedding.
    """
    decay, no_decay = [], []
    decay_names, no_decay_names = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias"):
            no_decay.append(p)
            no_decay_names.append(name)
        else:
            decay.append(p)
            decay_names.append(name)
    return [
        {"params": decay, "weight_decay": weight_decay, "names": decay_names},
        {"params": no_decay, "weight_decay": 0.0, "names": no_decay_names},
    ]


def build_optimizer(model: nn.Module, cfg: OptimizerSection) -> torch.optim.Optimizer:
    from optimi import StableAdamW

    groups = [{k: v for k, v in g.items() if k != "names"} for g in param_groups(model, cfg.weight_decay)]
    return StableAdamW(
        groups,
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        decouple_lr=True,
        max_lr=cfg.lr,
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
