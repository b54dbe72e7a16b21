"""Job rows for tests that need jobs in the database without going through the API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunery.jobspec import SFT, JobSpec, LoraTraining, LrScheduler, LrSchedulerArgs
from tunery.queue.claim import claim_next
from tunery.store.db import Database
from tunery.store.models import Job, User
from tunery.store.status import JobStatus


def job_spec(**fields: Any) -> JobSpec:
    """A resolved spec like the API makes for a small LoRA SFT job; ``fields`` override it."""
    defaults: dict[str, Any] = dict(
        model="m", training_file="f", training_type=LoraTraining(lora_r=8, lora_alpha=16),
        training_method=SFT(), n_epochs=1, n_checkpoints=1, n_evals=0, batch_size="max",
        gradient_accumulation_steps=1, learning_rate=1e-3,
        lr_scheduler=LrScheduler(lr_scheduler_type="cosine", lr_scheduler_args=LrSchedulerArgs(num_cycles=0.5)),
        warmup_ratio=0.0, max_grad_norm=1.0, weight_decay=0.0, max_seq_length=256, packing=True, random_seed=42,
    )
    return JobSpec(**{**defaults, **fields})


def job_row(job_id: str, user_id: str, status: str, spec: JobSpec | None = None, **columns: Any) -> Job:
    """A job row (not yet added to a session) of ``spec`` (default: ``job_spec()``)."""
    return Job(id=job_id, user_id=user_id, status=status, spec=spec or job_spec(), model_output_name="o", **columns)


def claimed_job(db: Database, job_id: str = "ft-1", worker_id: str = "w1", spec: JobSpec | None = None) -> None:
    """A user ``u1`` and a queued job ``job_id`` of ``spec``, claimed by ``worker_id`` (``running``)."""
    with db.session() as s:
        if s.get(User, "u1") is None:
            s.add(User(id="u1", name="u1"))
    with db.session() as s:
        s.add(job_row(job_id, "u1", JobStatus.QUEUED, spec))
    with db.session() as s:
        assert claim_next(s, worker_id) == job_id


def sqlite_database(path: Path) -> Database:
    """A migrated SQLite database at ``path`` (for tests that need one database, not both backends)."""
    db = Database(f"sqlite:///{path}")
    db.migrate()
    return db
