"""Every shape of job and event that tunery stores, as the Together dialect shows it, validates
against Together's published spec (``tests/together_spec``): each training type and method the
spec knows, each optional part set and unset, in every status, in the full and the truncated form;
and every event type the worker, the queue and the recipes write. The live end-to-end check
(``tests/e2e/test_together_spec.py``) runs one real job; this covers the shapes one job cannot.

GRPO jobs are left out: Together's spec has no reinforcement method (its ``training_method`` is
SFT or DPO), so no Together-typed client can read one.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.job_rows import job_row, job_spec, sqlite_database
from tests.together_spec import spec_errors
from tunery.api.schemas.fine_tunes import wire_event, wire_job
from tunery.jobspec import (
    DPO,
    EarlyStopping,
    FullTraining,
    JobSpec,
    LrScheduler,
    LrSchedulerArgs,
    MultimodalParams,
    Parent,
    Wandb,
)
from tunery.store.jobs import Event
from tunery.store.models import User
from tunery.store.status import JobStatus

SPECS: dict[str, JobSpec] = {
    "lora-sft": job_spec(),
    "dpo": job_spec(training_method=DPO(dpo_beta=0.2, rpo_alpha=0.1)),
    "full": job_spec(training_type=FullTraining()),
    "linear-schedule": job_spec(lr_scheduler=LrScheduler(lr_scheduler_type="linear",
                                                         lr_scheduler_args=LrSchedulerArgs(min_lr_ratio=0.1))),
    "everything-set": job_spec(
        batch_size=8, validation_file="file-v", n_evals=2, suffix="s", from_checkpoint="ft-0:3",
        parent=Parent(job_id="ft-0", step=3), wandb=Wandb(project_name="p", name="n", base_url="https://api.wandb.ai"),
        multimodal_params=MultimodalParams(train_vision=True), hf_output_repo_name="org/out",
        early_stopping=EarlyStopping(enabled=True)),
    "from-hf": job_spec(from_hf_model="org/m", hf_model_revision="main"),
}
# What the worker learns, as a running or finished job has it.
LEARNED = {"batch_size": 16, "total_steps": 12, "steps_completed": 12, "epochs_completed": 1,
           "evals_completed": 2, "token_count": 4096, "param_count": 1000, "wandb_url": "https://wandb.ai/x",
           "started_at": datetime(2026, 1, 1, tzinfo=UTC), "seconds_remaining": 0.0}
# Every event type tunery writes: the queue's and the worker's, and the training child's.
EVENT_TYPES = ["job_pending", "job_start", "job_stopped", "job_restarted", "job_complete", "job_error",
               "cancel_requested", "pause_requested", "job_paused", "job_resumed", "model_downloading",
               "model_download_complete", "training_data_downloading", "training_data_download_complete",
               "validation_data_downloading", "validation_data_download_complete", "wandb_init", "training_start",
               "checkpoint_save", "epoch_complete", "eval_complete", "early_stopped", "training_complete",
               "model_compressing", "model_compression_complete", "model_uploading", "model_upload_complete",
               "model_uploading_to_hf", "model_upload_to_hf_complete", "tokenized_dataset_upload_complete", "warning"]


@pytest.fixture(scope="module")
def users(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    db = sqlite_database(tmp_path_factory.mktemp("wire") / "t.db")
    with db.session() as s:
        s.add(User(id="u1", name="u1"))
    yield db
    db.dispose()


@pytest.mark.parametrize("name", list(SPECS))
def test_every_job_shape_in_every_status_matches_the_spec(users, name: str) -> None:  # type: ignore[no-untyped-def]
    events = [wire_event(Event(datetime.now(UTC), "job_pending", "info", "queued", None))]
    for status in JobStatus:
        for learned in ({}, LEARNED):
            job_id = f"ft-{name}-{status.value}-{len(learned)}"
            with users.session() as s:
                job = job_row(job_id, "u1", status, SPECS[name], **learned)
                s.add(job)
                s.flush()
                s.refresh(job)
                full = wire_job(job, events=events, queue_depth=0)
                truncated = wire_job(job, events=[], queue_depth=0, truncated=True)
            assert None not in full.values()
            assert spec_errors("get", "/fine-tunes/{id}", full) == [], (status, learned)
            assert spec_errors("post", "/fine-tunes", truncated) == [], (status, learned)


def test_every_event_type_tunery_writes_matches_the_spec() -> None:
    level = {"job_error": "error", "warning": "warning", "job_restarted": "warning"}
    data = [wire_event(Event(datetime.now(UTC), t, level.get(t, "info"), t, {"step": 3, "user_error": None}))
            for t in EVENT_TYPES]
    assert spec_errors("get", "/fine-tunes/{id}/events", {"object": "list", "data": data}) == []
    assert all(e["step"] == 3 and "user_error" not in e for e in data)


def test_a_field_the_spec_does_not_allow_is_caught() -> None:
    """The check itself can fail: a null, a wrong type and an unknown status are each found."""
    event = wire_event(Event(datetime.now(UTC), "job_start", "info", "started", None))
    assert spec_errors("get", "/fine-tunes/{id}/events", {"object": "list", "data": [{**event, "step": None}]})
    assert spec_errors("get", "/fine-tunes/{id}/events", {"object": "list", "data": [{**event, "type": "nope"}]})
    assert spec_errors("get", "/files/{id}", {"id": "f", "object": "file", "Processed": "yes"})
