from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from tunery.training.checkpoint import TrainState, atomic_dir, load_state, optimizer_state, save_state


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


def _stepped() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    optimizer = torch.optim.AdamW([{"params": [m.weight for m in model]}, {"params": [m.bias for m in model]}],
                                  lr=0.1)
    model(torch.ones(4, 3)).sum().backward()
    optimizer.step()
    return model, optimizer


def _fresh() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    return model, torch.optim.AdamW([{"params": [m.weight for m in model]}, {"params": [m.bias for m in model]}],
                                    lr=0.1)


def _same_optimizer_state(got: torch.optim.Optimizer, expected: torch.optim.Optimizer) -> bool:
    a, b = got.state_dict()["state"], expected.state_dict()["state"]
    return a.keys() == b.keys() and all(torch.equal(a[k][s], b[k][s]) for k in b for s in ("exp_avg", "exp_avg_sq"))


def test_state_round_trip_restores_optimizer_rngs_and_best_weights(tmp_path: Path) -> None:
    model, optimizer = _stepped()
    state = TrainState(step=5, epoch=1, step_in_epoch=2, tokens_seen=99, evals_done=1, best_eval_loss=1.25,
                       best_step=4)
    best = {"w": torch.arange(3.0)}
    save_state(tmp_path / "state", state, optimizer_state(model, optimizer), best, {"ref": torch.ones(2)})
    saved = torch.load(tmp_path / "state" / "optimizer.pt", weights_only=True)
    assert set(saved["state"]) == {"0.weight", "1.weight", "0.bias", "1.bias"}  # by name, not position
    expected = (torch.rand(2), random.random())

    fresh_model, fresh = _fresh()
    torch.rand(7)
    random.random()
    loaded, loaded_best, extra = load_state(tmp_path / "state", fresh_model, fresh)
    assert extra is not None and torch.equal(extra["ref"], torch.ones(2))
    assert loaded == state
    assert loaded_best is not None and torch.equal(loaded_best["w"], best["w"])
    assert _same_optimizer_state(fresh, optimizer)
    assert torch.equal(torch.rand(2), expected[0]) and random.random() == expected[1]


def test_a_checkpoint_from_before_names_were_kept_still_resumes(tmp_path: Path) -> None:
    """Earlier checkpoints saved ``optimizer.state_dict()``, which numbers the parameters."""
    model, optimizer = _stepped()
    save_state(tmp_path / "state", TrainState(step=1), optimizer.state_dict())
    fresh_model, fresh = _fresh()
    load_state(tmp_path / "state", fresh_model, fresh)
    assert _same_optimizer_state(fresh, optimizer)
