"""OpenAI's fine-tuning lifecycle through the official `openai` SDK against a live server with one
worker, and the same jobs through the `together` SDK: create (supervised, DPO), list with metadata,
retrieve, pause (the worker is freed: the next job runs meanwhile) and resume from the checkpoint,
events and checkpoints paged by cursor, the results CSV, models by id, cancel, and errors."""

from __future__ import annotations

import csv
import io
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.conftest import TUNERY, LiveServer, sdk_client, start_server
from tests.e2e.test_jobs_sdk import MODEL, extract
from tests.sample_data import conversation_file, preference_file

pytestmark = pytest.mark.slow
ENDED = {"succeeded", "failed", "cancelled"}
EPOCHS, STEPS = 4, 32  # 16 examples in batches of 2: no packing for OpenAI's jobs, so 8 steps an epoch


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    s = start_server(tmp_path_factory.mktemp("openai-jobs"), TUNERY_WORKERS="1", TUNERY_HEARTBEAT_INTERVAL_S="0.5",
                     TUNERY_INFERENCE_THREADS="1")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=server.api_key, max_retries=0)


@pytest.fixture(scope="module")
def files(client: openai.OpenAI, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("data")
    pref = client.uploads.upload_file_chunked(file=preference_file(d / "pref.jsonl", n=8), mime_type="text/jsonl",
                                              purpose="fine-tune", part_size=512)
    assert pref.file is not None
    return {"train": client.files.create(file=conversation_file(d / "train.jsonl", n=16), purpose="fine-tune").id,
            "val": client.files.create(file=conversation_file(d / "val.jsonl", n=4, seed=1), purpose="fine-tune").id,
            "pref": pref.file.id}


def wait_for(client: openai.OpenAI, job_id: str, statuses: set[str], timeout: float = 300) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} stuck in {job.status}")


def messages(client: openai.OpenAI, job_id: str) -> list[str]:
    return [e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=100)]


def test_lifecycle_pause_resume_events_checkpoints_results(client: openai.OpenAI, server: LiveServer,
                                                           files: dict[str, str], tmp_path: Path) -> None:
    job = client.fine_tuning.jobs.create(
        model=MODEL, training_file=files["train"], validation_file=files["val"], suffix="life", seed=7,
        metadata={"team": "search", "run": "1"},
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": EPOCHS, "batch_size": 2, "learning_rate_multiplier": 3}}})
    assert (job.object, job.model, job.seed, job.metadata) == ("fine_tuning.job", MODEL, 7, {"team": "search",
                                                                                              "run": "1"})
    assert job.status in ("validating_files", "queued", "running")
    assert job.hyperparameters.n_epochs == EPOCHS and job.hyperparameters.batch_size == 2
    assert job.method is not None and job.method.type == "supervised"

    # Pause once training has stepped: the worker stops at a checkpoint and takes the next job.
    deadline = time.monotonic() + 120
    while sdk_client(server).fine_tuning.retrieve(job.id).steps_completed < 2:
        assert time.monotonic() < deadline, messages(client, job.id)
        time.sleep(0.2)
    assert client.fine_tuning.jobs.pause(job.id).status == "paused"
    paused = wait_for(client, job.id, {"paused"})
    dpo = client.fine_tuning.jobs.create(model=MODEL, training_file=files["pref"], method={
        "type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 1, "batch_size": 2}}})
    done_dpo = wait_for(client, dpo.id, ENDED)
    assert done_dpo.status == "succeeded", messages(client, dpo.id)
    assert done_dpo.hyperparameters.beta == 0.2  # type: ignore[attr-defined]
    assert client.fine_tuning.jobs.retrieve(job.id).status == "paused", paused
    together_view = sdk_client(server).fine_tuning.retrieve(job.id)
    paused_at = together_view.steps_completed
    # The together SDK's statuses have no "paused": its wire shows the nearest, a job waiting to run.
    assert together_view.status == "pending" and paused_at >= 2

    assert client.fine_tuning.jobs.resume(job.id).status in ("queued", "running")
    done = wait_for(client, job.id, ENDED)
    assert done.status == "succeeded", messages(client, job.id)
    assert f"Resuming from the checkpoint at step {paused_at}" in messages(client, job.id)
    assert done.fine_tuned_model == f"ft:{MODEL}:default:life:{job.id}"
    assert done.trained_tokens and done.trained_tokens > 0 and done.finished_at

    listed = client.fine_tuning.jobs.list(metadata={"team": "search"})
    assert [j.id for j in listed.data] == [job.id]
    assert {j.id for j in client.fine_tuning.jobs.list(limit=1)} >= {job.id, dpo.id}  # pages on with `after`

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=7))  # every page, newest first
    assert len({e.id for e in events}) == len(events) > 7
    assert [e.created_at for e in events] == sorted((e.created_at for e in events), reverse=True)
    metrics = [e.data for e in events if e.type == "metrics"]
    assert {"step", "train_loss", "total_steps"} <= set(metrics[-1])  # type: ignore[arg-type]
    assert any("full_valid_loss" in m for m in metrics)  # type: ignore[operator]

    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id, limit=2))
    assert checkpoints[0].step_number == STEPS
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-{STEPS}"
    assert [c.step_number for c in checkpoints] == sorted((c.step_number for c in checkpoints), reverse=True)
    assert checkpoints[0].metrics.train_loss is not None and checkpoints[0].metrics.full_valid_loss is not None
    assert checkpoints[0].metrics.train_mean_token_accuracy is not None

    (results,) = done.result_files
    rows = list(csv.DictReader(io.StringIO(client.files.content(results).text)))
    assert list(rows[0])[:5] == ["step", "train_loss", "train_accuracy", "train_mean_token_accuracy", "valid_loss"]
    losses = [float(r["train_loss"]) for r in rows if r["train_loss"]]
    assert len(losses) == STEPS and sum(losses[-8:]) < sum(losses[:8])
    assert sum(bool(r["valid_loss"]) for r in rows) == EPOCHS  # one full validation pass per epoch
    assert all(0 <= float(r["train_mean_token_accuracy"]) <= 1 for r in rows if r["train_loss"])
    assert all(r["valid_mean_token_accuracy"] and r["full_valid_loss"] == r["valid_loss"] for r in rows
               if r["valid_loss"])

    # The pipeline's last step: chat with the fine-tuned model, and with one of its checkpoints.
    question = [{"role": "user", "content": "What color is the sky0?"}]
    for name in (done.fine_tuned_model, checkpoints[1].fine_tuned_model_checkpoint):
        reply = client.chat.completions.create(model=name, messages=question, max_tokens=6, temperature=0)  # type: ignore[arg-type]
        assert reply.choices[0].message.content

    # The same model through the Together API: downloadable, and named in /v1/models both ways.
    archive = tmp_path / "m.tar.zst"
    sdk_client(server).fine_tuning.content(ft_id=job.id, checkpoint="adapter").write_to_file(archive)
    assert (extract(archive, tmp_path / "m") / "adapter_config.json").exists()
    model = client.models.retrieve(done.fine_tuned_model)  # type: ignore[arg-type]
    assert model.owned_by == "default"
    assert client.models.delete(done.fine_tuned_model).deleted is True  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve(job.id)


def test_jobs_cross_both_apis(client: openai.OpenAI, server: LiveServer, files: dict[str, str]) -> None:
    together = sdk_client(server)
    subprocess.run([TUNERY, "models", "alias", "gpt-4o-mini-2024-07-18", MODEL, "--data-dir", str(server.data_dir)],
                   env=server.env, check=True, capture_output=True)
    assert client.models.retrieve("gpt-4o-mini-2024-07-18").alias_for == MODEL  # type: ignore[attr-defined]
    aliased = client.fine_tuning.jobs.create(model="gpt-4o-mini-2024-07-18", training_file=files["train"])
    assert aliased.model == "gpt-4o-mini-2024-07-18" and together.fine_tuning.retrieve(aliased.id).model == MODEL
    assert client.fine_tuning.jobs.pause(aliased.id).status == "paused"
    assert client.fine_tuning.jobs.cancel(aliased.id).status == "cancelled"

    made_there = together.fine_tuning.create(training_file=files["train"], model=MODEL, lora=True, n_epochs=1,
                                             batch_size=8, learning_rate=1e-3)
    seen_here = client.fine_tuning.jobs.retrieve(made_there.id)
    assert seen_here.training_file == files["train"] and seen_here.model == MODEL
    made_here = client.fine_tuning.jobs.create(model=MODEL, training_file=files["train"],
                                               hyperparameters={"n_epochs": 1})
    assert together.fine_tuning.retrieve(made_here.id).training_file == files["train"]
    assert together.fine_tuning.cancel(made_here.id).status in ("cancelled", "cancel_requested")
    assert client.fine_tuning.jobs.retrieve(made_here.id).status == "cancelled"
    cancelled = client.fine_tuning.jobs.cancel(made_there.id)
    assert cancelled.status == "cancelled"
    assert wait_for(client, made_there.id, ENDED).status == "cancelled"


def test_request_errors_raise_the_sdks_exception_classes(client: openai.OpenAI, files: dict[str, str]) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.fine_tuning.jobs.create(model=MODEL, training_file=files["train"],
                                       hyperparameters={"n_epochs": 0})
    assert bad.value.param and "n_epochs" in bad.value.param
    with pytest.raises(openai.BadRequestError) as missing:
        client.fine_tuning.jobs.create(model=MODEL, training_file="file-missing")
    assert missing.value.param == "training_file"
    with pytest.raises(openai.BadRequestError) as dpo_on_chat:
        client.fine_tuning.jobs.create(model=MODEL, training_file=files["train"], method={"type": "dpo"})
    assert "preference" in dpo_on_chat.value.message
    with pytest.raises(openai.BadRequestError) as unknown_model:
        client.fine_tuning.jobs.create(model="gpt-3.5-turbo-0125", training_file=files["train"])
    assert unknown_model.value.param == "model"
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.create(model=MODEL, training_file=files["train"], suffix="has:colon")
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ft-missing")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("ft:nothing:here::ft-missing")
    with pytest.raises(openai.PermissionDeniedError):
        client.models.delete(MODEL)
