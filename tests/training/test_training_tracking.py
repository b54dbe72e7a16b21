"""The W&B reporter against a fake run, and a refused key against the real client (it is refused
before any network use). The offline end-to-end run is in ``test_training_sft.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tunery.errors import TrainingFailed
from tunery.training import tracking
from tunery.training.config import TrainConfig
from tunery.training.reporter import ListReporter
from tunery.training.tracking import run_id, wandb_reporting


class FakeRun:
    def __init__(self) -> None:
        self.id, self.name, self.url = "ft-x", "my-run", "https://wandb.example/e/p/runs/ft-x"
        self.config: Any = self
        self.logged: list[tuple[int, dict[str, float]]] = []
        self.updates: list[dict[str, Any]] = []
        self.exit_code: int | None = None

    def update(self, values: dict[str, Any], allow_val_change: bool = False) -> None:
        self.updates.append(values)

    def log(self, values: dict[str, float], step: int) -> None:
        self.logged.append((step, values))

    def finish(self, exit_code: int = 0) -> None:
        self.exit_code = exit_code


def config(tmp_path: Path, **overrides: Any) -> TrainConfig:
    values: dict[str, Any] = {"job_id": "ft-x", "base_model_dir": str(tmp_path), "train_file": "t.jsonl",
                              "output_dir": str(tmp_path), "wandb_api_key": "k" * 40}
    values.update(overrides)
    return TrainConfig(**values)


def test_the_run_starts_with_training_and_gets_every_metric(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = FakeRun()
    monkeypatch.setattr(tracking, "_start_run", lambda cfg: run)
    inner = ListReporter()
    with wandb_reporting(config(tmp_path), inner) as reporter:
        reporter.event("warning", "3 samples were truncated", level="warning")
        reporter.metrics(1, {"train/loss": 2.0})  # before training starts: no run yet
        reporter.event("training_start", "Training started", total_steps=4, batch_size=8, max_seq_length=64)
        reporter.metrics(2, {"train/loss": 1.5})
        reporter.checkpoint(2, "/out/final", final=True)
    assert [r.get("type") for r in inner.records] == ["warning", None, "wandb_init", "training_start", None, None]
    assert inner.events("wandb_init")[0]["wandb_url"] == run.url
    assert run.updates == [{"batch_size": 8, "max_seq_length": 64, "total_steps": 4}]
    assert run.logged == [(2, {"train/loss": 1.5})] and run.exit_code == 0


def test_a_failing_run_is_finished_as_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = FakeRun()
    monkeypatch.setattr(tracking, "_start_run", lambda cfg: run)
    with pytest.raises(TrainingFailed), wandb_reporting(config(tmp_path), ListReporter()) as reporter:
        reporter.event("training_start", "Training started")
        raise TrainingFailed("the loss became nan")
    assert run.exit_code == 1


def test_no_key_no_wandb(tmp_path: Path) -> None:
    inner = ListReporter()
    with wandb_reporting(config(tmp_path, wandb_api_key=None), inner) as reporter:
        assert reporter is inner


def test_a_refused_key_is_a_user_error_that_never_shows_the_key(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DIR", "CACHE_DIR", "CONFIG_DIR", "DATA_DIR"):
        monkeypatch.setenv(f"WANDB_{name}", str(tmp_path / name.lower()))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    key = "short-key"  # W&B refuses keys under 40 characters before calling its server
    cfg = config(tmp_path, wandb_api_key=key, wandb_base_url="http://127.0.0.1:9")
    with pytest.raises(TrainingFailed) as caught, wandb_reporting(cfg, ListReporter()) as reporter:
        reporter.event("training_start", "Training started")
    assert caught.value.user_error and "re-pass wandb_api_key" in caught.value.message
    assert key not in caught.value.message


def test_run_ids_are_what_wandb_accepts() -> None:
    assert run_id("ft-3f2a:7/x") == "ft-3f2a-7-x"
