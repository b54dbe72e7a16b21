from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from tunery.training.checkpoint import TrainState, atomic_dir, load_state, save_state


def test_atomic_dir_appears_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "checkpoints" / "step-3"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("disk full")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # no temporary left behind
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
        assert not target.exists()
    assert (target / "a").read_text() == "1"
    with atomic_dir(target) as tmp:  # written again (after a resume): replaced whole
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert [p.name for p in target.parent.iterdir()] == ["step-3"]


def test_state_round_trip_restores_optimizer_rngs_and_best_weights(tmp_path: Path) -> None:
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([param], lr=0.1)
    param.grad = torch.full((3,), 0.5)
    optimizer.step()
    state = TrainState(step=5, epoch=1, step_in_epoch=2, tokens_seen=99, evals_done=1, best_eval_loss=1.25,
                       best_step=4)
    best = {"w": torch.arange(3.0)}
    save_state(tmp_path / "state", state, optimizer, best, {"ref": torch.ones(2)})
    expected = (torch.rand(2), random.random())

    fresh = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))], lr=0.1)
    torch.rand(7)
    random.random()
    loaded, loaded_best, extra = load_state(tmp_path / "state", fresh)
    assert extra is not None and torch.equal(extra["ref"], torch.ones(2))
    assert loaded == state
    assert loaded_best is not None and torch.equal(loaded_best["w"], best["w"])
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    assert torch.equal(torch.rand(2), expected[0]) and random.random() == expected[1]
