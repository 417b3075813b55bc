"""Learning-rate and batch-size schedules at their boundaries."""

from __future__ import annotations

import math

import pytest
import torch

from ettin.errors import EttinError
from ettin.recipe import LRSection, load_recipe
from ettin.train.schedule import batch_size_at, batch_warmup_steps, lr_fraction


def test_warmup_then_constant():
    lr = LRSection(schedule="constant", start=1.0, warmup_tokens=100)
    assert lr_fraction(lr, 0, 1000) == 0.0
    assert lr_fraction(lr, 50, 1000) == 0.5
    assert lr_fraction(lr, 100, 1000) == 1.0
    assert lr_fraction(lr, 1000, 1000) == 1.0


def test_one_minus_sqrt_from_peak_to_half():
    lr = LRSection(schedule="1-sqrt", start=1.0, end=0.5)
    assert lr_fraction(lr, 0, 400) == 1.0
    assert lr_fraction(lr, 100, 400) == pytest.approx(0.5 + 0.5 * (1 - math.sqrt(0.25)))
    assert lr_fraction(lr, 400, 400) == 0.5
    assert lr_fraction(lr, 500, 400) == 0.5


def test_one_minus_sqrt_decay_phase():
    lr = LRSection(schedule="1-sqrt", start=0.5, end=0.02)
    assert lr_fraction(lr, 0, 100) == 0.5
    assert lr_fraction(lr, 100, 100) == pytest.approx(0.02)
    t = 36
    assert lr_fraction(lr, t, 100) == pytest.approx(0.02 + 0.48 * (1 - 0.6))


def test_cross_objective_schedule_warmup_constant_linear_tail():
    # the released cross-train config: lr = 0.5 x peak, 3B warmup, constant, linear decay over the last
    # 10B of 50B to alpha_f 0.02 x that lr; in the recipe, optimizer.lr is the config's lr and start 1.0
    lr = LRSection(schedule="linear", start=1.0, end=0.02, warmup_tokens=3, decay_tokens=10)
    assert lr_fraction(lr, 0, 50) == 0.0
    assert lr_fraction(lr, 3, 50) == 1.0
    assert lr_fraction(lr, 40, 50) == 1.0
    assert lr_fraction(lr, 45, 50) == pytest.approx(0.51)
    assert lr_fraction(lr, 50, 50) == pytest.approx(0.02)  # x the config lr = 0.01 x peak
    r = load_recipe("cross-enc2dec-17m")
    peak = load_recipe("ettin-17m").optimizer.lr
    assert r.optimizer.lr == 0.5 * peak
    assert r.optimizer.lr * lr_fraction(r.phases[0].lr, r.phases[0].tokens, r.phases[0].tokens) == pytest.approx(
        0.01 * peak
    )


def test_schedule_is_monotone_in_decay():
    lr = LRSection(schedule="1-sqrt", start=1.0, end=0.5)
    values = [lr_fraction(lr, t, 1000) for t in range(0, 1001, 10)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def modernbert_thresholds(min_units: int, max_units: int, warmup_tokens: int) -> list[int]:
    """ModernBERT's BatchSizeWarmupScheduler thresholds, written out from its definition (in units)."""
    total = sum(range(min_units, max_units))
    out, cum = [], 0
    for b in range(min_units, max_units):
        cum += b
        out.append(math.ceil(warmup_tokens / total * cum))
    return out


def test_steps_shape_is_modernberts_scheduler():
    # 17m: 576 of 4608 is the unit (the device micro-batch x 4 GPUs): sizes 576 x 1..7, then 4608
    warmup = 125_000_000_000
    thresholds = modernbert_thresholds(1, 8, warmup)
    assert batch_size_at(0, warmup, 576, 4608) == 576
    for k, t in enumerate(thresholds, start=1):
        assert batch_size_at(t - 1, warmup, 576, 4608) == 576 * k
        assert batch_size_at(t, warmup, 576, 4608) == (576 * (k + 1) if k < 7 else 4608)
    assert batch_size_at(warmup, warmup, 576, 4608) == 4608
    assert batch_size_at(10, 0, 576, 4608) == 4608  # no warmup
    assert batch_size_at(0, warmup, 4608, 4608) == 4608


def test_steps_shape_gives_each_size_the_same_number_of_steps():
    warmup, seq = 1_000_000, 100  # every sequence 100 tokens
    sizes, tokens = [], 0
    while (size := batch_size_at(tokens, warmup, 8, 64)) < 64:
        sizes.append(size)
        tokens += size * seq
    per_size = [sizes.count(b) for b in range(8, 64, 8)]
    assert sizes == sorted(sizes) and set(sizes) == set(range(8, 64, 8))
    assert max(per_size) - min(per_size) <= 1, per_size  # equal up to the rounding of a step
    assert batch_warmup_steps(warmup, 8, 64, seq) == len(sizes)


def test_linear_shape():
    assert batch_size_at(0, 1000, 4, 64, "linear") == 4
    assert batch_size_at(500, 1000, 4, 64, "linear") == 32  # 4 + 60 * 0.5 = 34 -> multiple of 4
    assert batch_size_at(999, 1000, 4, 64, "linear") == 60
    assert batch_size_at(1000, 1000, 4, 64, "linear") == 64
    sizes = [batch_size_at(t, 1000, 4, 64, "linear") for t in range(0, 1100, 7)]
    assert sizes == sorted(sizes) and all(s % 4 == 0 for s in sizes)


def test_batch_size_bad_input():
    with pytest.raises(EttinError, match="batch sizes must be positive"):
        batch_size_at(0, 10, 0, 8)
    with pytest.raises(EttinError, match="unknown batch-size warmup shape 'sqrt'"):
        batch_size_at(0, 10, 2, 8, "sqrt")


@pytest.mark.parametrize(
    "size,minimum,steps",
    [
        ("17m", 576, 52983),
        ("32m", 512, 42387),
        ("68m", 384, 31790),
        ("150m", 288, 21194),
        ("400m", 192, 4240),
        ("1b", 96, 1274),
    ],
)
def test_shipped_warmups_in_steps(size, minimum, steps):
    """The pretraining warmup of each shipped recipe, in optimizer steps of full 1,024-token sequences."""
    p = load_recipe(f"ettin-{size}").phases[0]
    assert (p.batch_warmup_min, p.batch_warmup_shape) == (minimum, "steps")
    assert batch_warmup_steps(p.batch_warmup_tokens, p.batch_warmup_min, p.batch_size, p.seq_len) == steps


def test_micro_batch_size_does_not_change_the_trajectory(tmp_path, write_recipe):
    """The same recipe with micro-batches of 1 and of 3 sequences: the same batch sizes through the
    warmup (from batch_warmup_min, not the micro-batch), the same losses and the same final weights."""
    from safetensors.torch import load_file

    from ettin.train import checkpoint as ck
    from ettin.train.metrics import read_metrics
    from ettin.train.trainer import TrainOptions, train

    changes = {
        "phases.0.tokens": 400,
        "phases.0.batch_size": 6,
        "phases.0.batch_warmup_tokens": 250,
        "phases.0.batch_warmup_min": 2,
        "phases.1.tokens": 100,
        "phases.2.tokens": 100,
        "eval": {"every_tokens": None, "sequences": 4},
    }
    runs = {}
    for micro in (1, 3):
        path = write_recipe(tmp_path / f"r{micro}", {**changes, "micro_batch_size": micro})
        result = train(
            load_recipe(path, ["arch=encoder"]),
            TrainOptions(out=tmp_path / f"run{micro}", progress=False, tensorboard=False),
        )
        rows = [r for r in read_metrics(result.out / "encoder") if r["kind"] == "train"]
        last = ck.list_tags(result.out / "encoder")[-1].tag
        runs[micro] = (rows, load_file(str(result.out / "encoder" / "checkpoints" / last / "model.safetensors")))
    (a, wa), (b, wb) = runs[1], runs[3]
    sizes = [r["batch_size"] for r in a if r["phase"] == "pretrain"]
    assert sizes[0] == 2 and 4 in sizes and sizes[-1] == 6  # 2, 4, then 6: the steps shape
    assert [r["batch_size"] for r in a] == [r["batch_size"] for r in b]
    assert [r["batch_tokens"] for r in a] == [r["batch_tokens"] for r in b]
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], rel=1e-4)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
