"""Every training method through the official SDK: full fine-tuning with evals, early stopping, DPO,
and continuing from a checkpoint of an earlier job."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LiveServer, sdk_client, start_server
from tests.e2e.test_jobs_sdk import MODEL, extract, wait_for
from tests.sample_data import conversation_file, preference_file

pytestmark = pytest.mark.slow
DONE = {"completed", "error", "user_error", "cancelled"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    s = start_server(tmp_path_factory.mktemp("methods"), TUNERY_WORKERS="1", TUNERY_HEARTBEAT_INTERVAL_S="0.5")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server: LiveServer):  # type: ignore[no-untyped-def]
    return sdk_client(server)


@pytest.fixture(scope="module")
def files(client, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("data")
    return {
        "train": client.files.upload(conversation_file(d / "train.jsonl", n=32)).id,
        "val": client.files.upload(conversation_file(d / "val.jsonl", n=8, seed=1)).id,
        "pref": client.files.upload(preference_file(d / "pref.jsonl", n=16)).id,
    }


def completed(client, job_id: str):  # type: ignore[no-untyped-def]
    done = wait_for(client, job_id, DONE, timeout=400)
    assert done.status == "completed", [e.message for e in client.fine_tuning.list_events(job_id).data]
    return done


def test_full_fine_tune_with_evals(client, files: dict[str, str], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    job = client.fine_tuning.create(training_file=files["train"], validation_file=files["val"], model=MODEL,
                                    lora=False, n_epochs=2, n_evals=2, batch_size=4, learning_rate=1e-3,
                                    max_seq_length=128)
    done = completed(client, job.id)
    assert done.training_type.type == "Full"
    rows = client.fine_tuning.list_metrics(job.id).metrics
    assert sum("eval/loss" in r for r in rows) == 2
    # Together's event types have no eval_complete: evaluations show as epoch_complete, saying what they are.
    evals = [e for e in client.fine_tuning.list_events(job.id).data if e.message.startswith("Evaluation at step")]
    assert len(evals) == 2 and {e.type for e in evals} == {"epoch_complete"}
    kinds = {c.checkpoint_type for c in client.fine_tuning.list_checkpoints(job.id).data}
    assert "Final" in kinds and "Final Adapter" not in kinds
    archive = tmp_path / "full.tar.zst"
    client.fine_tuning.content(ft_id=job.id, checkpoint="model_output_path").write_to_file(archive)
    assert (extract(archive, tmp_path / "m") / "config.json").exists()


def test_early_stopping_promotes_the_best_checkpoint(client, files: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    job = client.fine_tuning.create(training_file=files["train"], validation_file=files["val"], model=MODEL,
                                    lora=True, n_epochs=6, n_evals=12, batch_size=8, learning_rate=3e-3,
                                    max_seq_length=128, early_stopping_enabled=True, early_stopping_patience=1,
                                    early_stopping_warmup_evals=0, early_stopping_min_delta=100.0)
    done = completed(client, job.id)
    assert done.early_stopped is True
    assert done.early_stopping_best_step is not None and done.early_stopping_best_metric is not None
    assert "early_stopped" in [e.type for e in client.fine_tuning.list_events(job.id).data]
    assert done.steps_completed < done.total_steps


def test_dpo_learns_the_preference(client, files: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    job = client.fine_tuning.create(training_file=files["pref"], model=MODEL, lora=True, training_method="dpo",
                                    dpo_beta=0.1, n_epochs=3, batch_size=4, learning_rate=3e-3, max_seq_length=128)
    completed(client, job.id)
    rows = [r for r in client.fine_tuning.list_metrics(job.id).metrics if "train/loss" in r]
    assert rows[0]["train/loss"] == pytest.approx(0.6931, abs=0.02)  # ln 2 before any update
    assert rows[-1]["train/loss"] < rows[0]["train/loss"]
    assert any("reward_accuracy" in k for k in rows[-1])


def test_continue_from_an_intermediate_checkpoint(client, files: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    parent = client.fine_tuning.create(training_file=files["train"], model=MODEL, lora=True, n_epochs=2,
                                       n_checkpoints=2, batch_size=4, learning_rate=3e-3, max_seq_length=128)
    completed(client, parent.id)
    step = next(c.step for c in client.fine_tuning.list_checkpoints(parent.id).data
                if c.checkpoint_type == "Intermediate")
    child = client.fine_tuning.create(training_file=files["train"], from_checkpoint=f"{parent.id}:{step}",
                                      n_epochs=1, batch_size=4, learning_rate=1e-3, max_seq_length=128)
    done = completed(client, child.id)
    assert done.model == MODEL and done.training_type.type == "Lora"
    assert done.from_checkpoint == f"{parent.id}:{step}"
    first = [r for r in client.fine_tuning.list_metrics(child.id).metrics if "train/loss" in r][0]["train/loss"]
    base_first = [r for r in client.fine_tuning.list_metrics(parent.id).metrics if "train/loss" in r][0]
    assert first < base_first["train/loss"]  # it starts from trained weights, not the base model
