"""jobs: a typed spec instead of the params dict; outcomes in their own columns

Each job's ``params`` (the resolved request, plus what the worker wrote back into it) becomes
``spec`` (``tunery.jobspec.JobSpec`` version 1, which also takes over the ``suffix`` and
``from_checkpoint`` columns) and four columns: ``batch_size`` (the one used),
``total_price_nanodollars``, ``trainingfile_numlines`` and ``trainingfile_size``.

The conversion is written out here in plain dicts, not with JobSpec, so that this migration keeps
meaning the same thing when JobSpec changes later.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_jobs = sa.table(
    "jobs",
    sa.column("id", sa.String), sa.column("model", sa.String), sa.column("suffix", sa.String),
    sa.column("training_file", sa.String), sa.column("validation_file", sa.String),
    sa.column("from_checkpoint", sa.String), sa.column("params", sa.JSON), sa.column("spec", sa.JSON),
    sa.column("batch_size", sa.BigInteger), sa.column("total_price_nanodollars", sa.BigInteger),
    sa.column("trainingfile_numlines", sa.BigInteger), sa.column("trainingfile_size", sa.BigInteger),
)


def spec_from_params(row: Any) -> dict[str, Any]:
    """Version 1 of the spec from a job row of schema 0001."""
    p: dict[str, Any] = row.params or {}
    method = dict(p.get("training_method") or {"method": "sft", "train_on_inputs": "auto"})
    if method.get("method") == "sft" and method.get("train_on_inputs") is None:
        method["train_on_inputs"] = "auto"
    sched = p.get("lr_scheduler") or {"lr_scheduler_type": "cosine", "lr_scheduler_args": {"min_lr_ratio": 0.0}}
    return {
        "version": 1,
        "model": row.model,
        "training_file": row.training_file,
        "validation_file": row.validation_file or None,
        "from_checkpoint": row.from_checkpoint or None,
        "parent": {"job_id": p["parent_job_id"], "step": p.get("parent_step")} if p.get("parent_job_id") else None,
        "from_hf_model": p.get("from_hf_model"),
        "hf_model_revision": p.get("hf_model_revision"),
        "suffix": row.suffix,
        "hf_output_repo_name": p.get("hf_output_repo_name"),
        "wandb": {"project_name": p.get("wandb_project_name"), "name": p.get("wandb_name"),
                  "entity": p.get("wandb_entity"), "base_url": p.get("wandb_base_url")},
        "training_type": p.get("training_type") or {"type": "Full"},
        "training_method": method,
        "multimodal_params": p.get("multimodal_params"),
        "n_epochs": p.get("n_epochs", 1),
        "n_checkpoints": p.get("n_checkpoints", 1),
        "n_evals": p.get("n_evals", 0),
        "batch_size": p.get("batch_size", "max"),
        "gradient_accumulation_steps": p.get("gradient_accumulation_steps", 1),
        "learning_rate": p.get("learning_rate", 1e-5),
        "lr_scheduler": sched,
        "warmup_ratio": p.get("warmup_ratio", 0.0),
        "max_grad_norm": p.get("max_grad_norm", 1.0),
        "weight_decay": p.get("weight_decay", 0.0),
        "max_seq_length": p.get("max_seq_length", 2048),
        "packing": p.get("packing", True),
        "random_seed": p.get("random_seed", 42),
        "early_stopping": {"enabled": p.get("early_stopping_enabled", False),
                           "patience": p.get("early_stopping_patience", 2),
                           "min_delta": p.get("early_stopping_min_delta", 0.0),
                           "warmup_evals": p.get("early_stopping_warmup_evals", 1)},
    }


def upgrade() -> None:
    op.add_column("jobs", sa.Column("spec", sa.JSON(), nullable=True))
    for name in ("total_price_nanodollars", "trainingfile_numlines", "trainingfile_size"):
        op.add_column("jobs", sa.Column(name, sa.BigInteger(), nullable=False, server_default="0"))
    op.add_column("jobs", sa.Column("batch_size", sa.BigInteger(), nullable=True))
    conn = op.get_bind()
    for row in conn.execute(sa.select(_jobs)).all():
        p = row.params or {}
        conn.execute(_jobs.update().where(_jobs.c.id == row.id).values(
            spec=spec_from_params(row), batch_size=p.get("batch_size_resolved"),
            total_price_nanodollars=p.get("total_price_nanodollars", 0),
            trainingfile_numlines=p.get("trainingfile_numlines", 0), trainingfile_size=p.get("trainingfile_size", 0),
        ))
    # Plain ALTER TABLE … DROP COLUMN (SQLite >= 3.35, PostgreSQL): a batch rebuild of the table on
    # SQLite would drop the old table, and with foreign keys on that cascades into the job's events.
    for name in ("params", "suffix", "from_checkpoint"):
        op.execute(f"ALTER TABLE jobs DROP COLUMN {name}")
    if conn.dialect.name == "postgresql":  # SQLite cannot add NOT NULL to an existing column
        op.alter_column("jobs", "spec", nullable=False)


def downgrade() -> None:
    raise NotImplementedError("0003 rewrites each job's params as a spec; restore a backup to go back")
