from __future__ import annotations

import math

import pytest

from tunery.training.schedules import evenly_spaced, lr_at, warmup_steps


def test_cosine_without_warmup_falls_from_base_to_min() -> None:
    # total 10, progress = s/10: factor = 0.5 * (1 + cos(pi * s / 10))
    assert lr_at(0, 10, base_lr=1.0) == pytest.approx(1.0)
    assert lr_at(5, 10, base_lr=1.0) == pytest.approx(0.5)
    assert lr_at(9, 10, base_lr=1.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.9)))  # 0.0244717


def test_cosine_with_min_lr_ratio_and_warmup() -> None:
    kw = {"base_lr": 2e-4, "warmup": 2, "min_lr_ratio": 0.1}
    assert lr_at(0, 12, **kw) == pytest.approx(2e-4 / 3)  # (0 + 1) / (2 + 1)
    assert lr_at(1, 12, **kw) == pytest.approx(2e-4 * 2 / 3)
    assert lr_at(2, 12, **kw) == pytest.approx(2e-4)  # decay starts at full rate
    # step 7: progress (7 - 2) / 10 = 0.5 -> factor 0.1 + 0.9 * 0.5 = 0.55
    assert lr_at(7, 12, **kw) == pytest.approx(1.1e-4)


def test_cosine_full_cycle_returns_to_base() -> None:
    # num_cycles = 1: down and back up; at progress 0.5 it is at the bottom.
    assert lr_at(5, 10, base_lr=1.0, num_cycles=1.0) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(10, 10, base_lr=1.0, num_cycles=1.0) == pytest.approx(1.0)


def test_linear_with_min_lr_ratio() -> None:
    kw = {"base_lr": 1.0, "scheduler": "linear", "min_lr_ratio": 0.2}
    assert lr_at(0, 4, **kw) == pytest.approx(1.0)
    assert lr_at(2, 4, **kw) == pytest.approx(0.6)  # 1 - 0.8 * 0.5
    assert lr_at(3, 4, **kw) == pytest.approx(0.4)  # 1 - 0.8 * 0.75
    assert lr_at(4, 4, **kw) == pytest.approx(0.2)


def test_warmup_steps_rounds_the_ratio() -> None:
    assert warmup_steps(100, 0.0) == 0
    assert warmup_steps(100, 0.05) == 5
    assert warmup_steps(7, 0.1) == 1
    assert warmup_steps(3, 1.0) == 3


def test_evenly_spaced_steps() -> None:
    assert evenly_spaced(10, 1) == [10]
    assert evenly_spaced(10, 2) == [5, 10]
    assert evenly_spaced(10, 3) == [3, 7, 10]
    assert evenly_spaced(2, 5) == [1, 2]  # fewer steps than requested
    assert evenly_spaced(10, 0) == []
