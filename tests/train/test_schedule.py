"""Learning-rate schedules at their boundaries."""

from __future__ import annotations

import math

import pytest

from ettin.recipe import LRSection
from ettin.train.schedule import lr_fraction


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
    # 0.5 x peak, 3B warmup, constant, linear decay over the last 10B of 50B to 0.02 x
    lr = LRSection(schedule="linear", start=0.5, end=0.02, warmup_tokens=3, decay_tokens=10)
    assert lr_fraction(lr, 0, 50) == 0.0
    assert lr_fraction(lr, 3, 50) == 0.5
    assert lr_fraction(lr, 40, 50) == 0.5
    assert lr_fraction(lr, 45, 50) == pytest.approx(0.26)
    assert lr_fraction(lr, 50, 50) == pytest.approx(0.02)


def test_schedule_is_monotone_in_decay():
    lr = LRSection(schedule="1-sqrt", start=1.0, end=0.5)
    values = [lr_fraction(lr, t, 1000) for t in range(0, 1001, 10)]
    assert all(a >= b for a, b in zip(values, values[1:]))
