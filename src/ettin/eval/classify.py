"""Classification with either arch: a quick linear probe, or fine-tuning as in the paper.

Both archs see the same input (`[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]`) and differ only in
pooling: encoders mean (or CLS), decoders the last token with their causal mask kept.

`linear_probe`: frozen features, standardised on the train set, multinomial logistic regression
(L2) fitted by full-batch L-BFGS: deterministic, seconds on CPU.
`finetune`: a linear head on the pooled output, AdamW with 6% warmup then linear decay (the paper's
GLUE recipe); with several learning rates, the one with the best accuracy on a dev slice of the
train set (seeded) is kept, as the paper picks from a grid.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ettin.eval.finetune import tune
from ettin.eval.handle import EvalModel, token_batches
from ettin.eval.pooling import default_pooling, embed_ids, pooled
from ettin.eval.tasks import Example


def example_ids(em: EvalModel, examples: Sequence[Example], max_length: int | None = None) -> list[list[int]]:
    """Token ids with specials for each example (pairs trimmed longest-first)."""
    a = em.encode_batch([e.text_a for e in examples])
    b = iter(em.encode_batch([e.text_b for e in examples if e.text_b is not None]))
    return [
        em.pair_with_specials(x, next(b) if e.text_b is not None else None, max_length) for x, e in zip(a, examples)
    ]


def features(
    em: EvalModel, examples: Sequence[Example], pooling: str | None = None, max_length: int | None = None
) -> torch.Tensor:
    return embed_ids(em, example_ids(em, examples, max_length), pooling)


def linear_probe(
    train_x: torch.Tensor,
    train_y: Sequence[int],
    eval_x: torch.Tensor,
    num_classes: int,
    *,
    l2: float = 1e-3,
    max_iter: int = 200,
    seed: int = 0,
) -> torch.Tensor:
    """Eval-set class probabilities [n_eval, num_classes] of an L2 logistic regression on frozen features."""
    x = train_x.double()
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    x = (x - mean) / std
    xe = (eval_x.double() - mean) / std
    y = torch.as_tensor(list(train_y), dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(x.shape[1], num_classes, generator=g, dtype=torch.float64) * 0.01).requires_grad_()
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
    )

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return torch.softmax(xe @ w + b, dim=-1).float()


@dataclass
class FinetuneConfig:
    lrs: tuple[float, ...] = (1e-4,)
    epochs: int = 2
    batch_size: int = 16
    warmup: float = 0.06
    weight_decay: float = 0.01
    max_length: int = 256
    dev_fraction: float = 0.1  # only used when there is more than one learning rate
    pooling: str | None = None


def _train_one(
    em: EvalModel,
    train_ids: list[list[int]],
    train_y: list[int],
    num_classes: int,
    lr: float,
    cfg: FinetuneConfig,
    seed: int,
    progress: Callable[[int], None] | None,
):
    """A fine-tuned copy of the model and its head."""
    torch.manual_seed(seed)
    model = copy.deepcopy(em.model)
    model.train()
    device = next(model.parameters()).device
    head = torch.nn.Linear(model.config.hidden_size, num_classes).to(device)
    how = cfg.pooling or default_pooling(model.config.arch)
    y_all = torch.tensor(train_y, dtype=torch.long, device=device)

    def loss(idx: list[int]) -> torch.Tensor:
        return F.cross_entropy(head(pooled(model, [train_ids[i] for i in idx], how)), y_all[idx])

    tune(
        [*model.parameters(), *head.parameters()],
        loss,
        len(train_ids),
        math.ceil(len(train_ids) / cfg.batch_size) * cfg.epochs,
        lr=lr,
        weight_decay=cfg.weight_decay,
        warmup=cfg.warmup,
        batch_size=cfg.batch_size,
        seed=seed,
        progress=progress,
    )
    model.eval()
    return model, head


@torch.no_grad()
def _predict(model, head, ids: list[list[int]], how: str, batch_tokens: int) -> torch.Tensor:
    out = torch.zeros(len(ids), head.out_features)
    for batch in token_batches([len(s) for s in ids], batch_tokens):
        out[torch.tensor(batch)] = torch.softmax(head(pooled(model, [ids[i] for i in batch], how)), -1).float().cpu()
    return out


def finetune(
    em: EvalModel,
    train: Sequence[Example],
    eval_examples: Sequence[Example],
    num_classes: int,
    cfg: FinetuneConfig | None = None,
    *,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, dict]:
    """Eval-set probabilities after fine-tuning, and what was chosen (lr, dev accuracy per lr)."""
    cfg = cfg or FinetuneConfig()
    how = cfg.pooling or default_pooling(em.arch)
    train = list(train)
    dev: list[Example] = []
    if len(cfg.lrs) > 1:
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(train), generator=g).tolist()
        n_dev = max(1, int(cfg.dev_fraction * len(train)))
        dev = [train[i] for i in sorted(perm[:n_dev])]
        train = [train[i] for i in sorted(perm[n_dev:])]
    train_ids = example_ids(em, train, cfg.max_length)
    eval_ids = example_ids(em, eval_examples, cfg.max_length)
    dev_ids = example_ids(em, dev, cfg.max_length)
    best = None
    info: dict = {
        "pooling": how,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "dev_acc": {},
        "n_train": len(train),
        "n_dev": len(dev),
    }
    for lr in cfg.lrs:
        model, head = _train_one(em, train_ids, [e.label for e in train], num_classes, lr, cfg, seed, progress)
        dev_acc = None
        if dev:
            p = _predict(model, head, dev_ids, how, em.batch_tokens).argmax(-1)
            dev_acc = float((p == torch.tensor([e.label for e in dev])).float().mean())
            info["dev_acc"][str(lr)] = dev_acc
        if best is None or (dev_acc is not None and dev_acc > best[0]):
            probs = _predict(model, head, eval_ids, how, em.batch_tokens)
            best = (dev_acc if dev_acc is not None else 0.0, lr, probs)
        del model, head
    info["lr"] = best[1]
    return best[2], info


def finetune_steps(n_train: int, cfg: FinetuneConfig) -> int:
    """Optimizer steps `finetune` will report through `progress` (all learning rates)."""
    n = n_train - (max(1, int(cfg.dev_fraction * n_train)) if len(cfg.lrs) > 1 else 0)
    return math.ceil(n / cfg.batch_size) * cfg.epochs * len(cfg.lrs)
