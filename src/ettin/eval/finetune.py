"""The one fine-tuning loop of the evaluation: classification fine-tuning and contrastive retrieval
tuning differ only in their loss on a batch of example indices.

AdamW (weight decay on matrices only), warmup then linear decay (`ettin.train.schedule.
warmup_linear_decay`), seeded shuffles of the examples epoch after epoch until the planned steps
are taken.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from ettin.train.schedule import warmup_linear_decay


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


def update(opt: torch.optim.Optimizer, loss: torch.Tensor, lr: float) -> None:
    """One update at learning rate `lr`."""
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def tune(
    params: Iterable[torch.nn.Parameter],
    loss: Callable[[list[int]], torch.Tensor],
    n_examples: int,
    total_steps: int,
    *,
    lr: float,
    weight_decay: float,
    warmup: float,
    batch_size: int,
    seed: int,
    min_batch: int = 1,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Take `total_steps` updates of `loss(batch indices)` and return the number taken.

    Each epoch is a seeded permutation of range(n_examples) cut into batches of `batch_size`; a
    batch smaller than `min_batch` is skipped (in-batch negatives need two). `warmup` is the fraction
    of the steps spent warming up (at least one step). Stops early only when an epoch yields no batch.
    """
    opt = adamw(params, lr, weight_decay)
    warmup_steps = max(1, int(warmup * total_steps))
    g = torch.Generator().manual_seed(seed)
    step = 0
    while step < total_steps:
        before = step
        order = torch.randperm(n_examples, generator=g).tolist()
        for k in range(0, len(order), batch_size):
            if step >= total_steps:
                break
            idx = order[k : k + batch_size]
            if len(idx) < min_batch:
                continue
            update(opt, loss(idx), lr * warmup_linear_decay(step, total_steps, warmup_steps))
            step += 1
            if progress:
                progress(1)
        if step == before:
            break
    return step
