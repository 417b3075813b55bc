"""The evaluation's one fine-tuning loop: its batches, its step count and its schedule."""

import torch

from ettin.eval.finetune import tune
from ettin.train.schedule import warmup_linear_decay


def test_warmup_then_linear_decay_in_steps():
    got = [warmup_linear_decay(s, 10, 2) for s in range(10)]
    assert got == [0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125]


def record_tune(n, total, batch_size, min_batch=1):
    w = torch.nn.Parameter(torch.zeros(2, 2))
    seen, ticks = [], []

    def loss(idx):
        seen.append(list(idx))
        return (w * float(len(idx))).sum() ** 2 + w.sum()

    steps = tune(
        [w],
        loss,
        n,
        total,
        lr=1.0,
        weight_decay=0.0,
        warmup=0.2,
        batch_size=batch_size,
        seed=0,
        min_batch=min_batch,
        progress=ticks.append,
    )
    return steps, seen, ticks


def test_epochs_of_seeded_shuffles_until_the_planned_steps():
    steps, seen, progress = record_tune(5, 6, 2)
    assert steps == 6 and len(progress) == 6 and [len(b) for b in seen] == [2, 2, 1, 2, 2, 1]
    assert sorted(i for b in seen[:3] for i in b) == list(range(5))  # each epoch a permutation
    assert record_tune(5, 6, 2)[1] == seen  # seeded


def test_batches_too_small_are_skipped_and_an_epoch_without_one_ends():
    steps, seen, _ = record_tune(5, 4, 2, min_batch=2)
    assert steps == 4 and all(len(b) == 2 for b in seen)
    assert record_tune(1, 3, 2, min_batch=2)[:2] == (0, [])  # one pair has no in-batch negative
