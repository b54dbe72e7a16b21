"""Migrations carry existing rows forward: a job stored by schema 0001 (hyperparameters in a
``params`` dict) reads back after ``migrate()`` as the same job, with a typed spec."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory

from tests.backends import create_postgres_database, drop_postgres_database
from tunery.jobspec import DPO, SFT, LoraTraining
from tunery.store.db import Database, alembic_config
from tunery.store.models import Job

OLD_LORA_PARAMS = {
    "learning_rate": 0.001, "warmup_ratio": 0.1, "max_grad_norm": 1.0, "weight_decay": 0.01,
    "gradient_accumulation_steps": 2, "max_seq_length": 512,
    "lr_scheduler": {"lr_scheduler_type": "cosine", "lr_scheduler_args": {"min_lr_ratio": 0.1, "num_cycles": 0.5}},
    "n_epochs": 3, "n_checkpoints": 2, "n_evals": 4, "early_stopping_enabled": True, "early_stopping_patience": 2,
    "early_stopping_warmup_evals": 1, "early_stopping_min_delta": 0.01, "batch_size": "max", "packing": True,
    "training_type": {"type": "Lora", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
                      "lora_trainable_modules": "q_proj,v_proj"},
    "training_method": {"method": "sft", "train_on_inputs": "auto"}, "random_seed": 7,
    "from_hf_model": None, "hf_model_revision": None, "hf_output_repo_name": "me/out",
    "wandb_project_name": "proj", "wandb_name": "run", "wandb_entity": None, "wandb_base_url": None,
    "parent_job_id": "ft-parent", "parent_step": 10, "trainingfile_numlines": 123, "trainingfile_size": 4567,
    "batch_size_resolved": 16, "total_price_nanodollars": 890,
}
OLD_DPO_PARAMS = {
    **OLD_LORA_PARAMS, "training_type": {"type": "Full"}, "parent_job_id": None, "parent_step": None,
    "early_stopping_enabled": False, "batch_size": 4,
    "lr_scheduler": {"lr_scheduler_type": "linear", "lr_scheduler_args": {"min_lr_ratio": 0.0}},
    "training_method": {"method": "dpo", "dpo_beta": 0.2, "rpo_alpha": 0.0, "simpo_gamma": 0.0,
                        "dpo_normalize_logratios_by_length": False, "dpo_reference_free": False},
}
for key in ("batch_size_resolved", "total_price_nanodollars"):
    OLD_DPO_PARAMS.pop(key)


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    url = create_postgres_database("migrations")
    yield url
    drop_postgres_database(url)


def _old_job(conn: sa.Connection, job_id: str, params: dict, suffix: str | None, from_checkpoint: str,
             validation_file: str) -> None:
    conn.execute(sa.text(
        "INSERT INTO jobs (id, user_id, status, model, model_output_name, suffix, training_file, validation_file,"
        " from_checkpoint, params, priority, restarts, created_at, updated_at, total_steps, steps_completed,"
        " epochs_completed, evals_completed, token_count, param_count, early_stopped) VALUES (:id, 'u1', 'completed',"
        " 'tunery/tiny-llama', 'alice/out', :suffix, 'file-t', :val, :fc, :params, 0, 0, :now, :now, 10, 10, 3, 4,"
        " 100, 5, false)"), {"id": job_id, "suffix": suffix, "val": validation_file, "fc": from_checkpoint,
                             "params": json.dumps(params),
                             "now": "2025-01-01 00:00:00+00:00"})
    conn.execute(sa.text("INSERT INTO job_events (job_id, created_at, type, level, message) "
                         "VALUES (:id, :now, 'job_complete', 'info', 'done')"),
                 {"id": job_id, "now": "2025-01-01 00:00:00+00:00"})


def test_jobs_of_schema_0001_read_back_as_typed_specs(fresh_url: str) -> None:
    db = Database(fresh_url)
    with db.engine.begin() as conn:
        cfg = alembic_config(db.url)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.execute(sa.text("INSERT INTO users (id, name, created_at) VALUES ('u1', 'alice', :now)"),
                     {"now": "2025-01-01 00:00:00+00:00"})
        _old_job(conn, "ft-lora", OLD_LORA_PARAMS, "mine", "ft-parent:10", "file-v")
        _old_job(conn, "ft-dpo", OLD_DPO_PARAMS, None, "", "")
    db.migrate()
    with db.session() as s:
        lora, dpo = s.get(Job, "ft-lora"), s.get(Job, "ft-dpo")
        assert lora is not None and dpo is not None
        spec = lora.spec
        assert spec.training_type == LoraTraining(lora_r=16, lora_alpha=32, lora_dropout=0.05,
                                                  lora_trainable_modules="q_proj,v_proj")
        assert spec.training_method == SFT(train_on_inputs="auto")
        assert (spec.model, spec.training_file, spec.validation_file) == ("tunery/tiny-llama", "file-t", "file-v")
        assert (spec.suffix, spec.from_checkpoint) == ("mine", "ft-parent:10")
        assert spec.parent is not None and (spec.parent.job_id, spec.parent.step) == ("ft-parent", 10)
        assert (spec.n_epochs, spec.n_checkpoints, spec.n_evals, spec.batch_size) == (3, 2, 4, "max")
        assert spec.lr_scheduler.lr_scheduler_args.min_lr_ratio == 0.1
        assert spec.early_stopping.enabled and spec.early_stopping.min_delta == 0.01
        assert (spec.wandb.project_name, spec.wandb.name, spec.hf_output_repo_name) == ("proj", "run", "me/out")
        assert (lora.batch_size, lora.total_price_nanodollars) == (16, 890)
        assert (lora.trainingfile_numlines, lora.trainingfile_size) == (123, 4567)
        assert dpo.spec.training_method == DPO(dpo_beta=0.2)
        assert dpo.spec.training_type.type == "Full" and dpo.spec.batch_size == 4
        assert dpo.spec.validation_file is None and dpo.spec.from_checkpoint is None and dpo.spec.parent is None
        assert dpo.spec.lr_scheduler.lr_scheduler_args.num_cycles is None
        assert (dpo.batch_size, dpo.total_price_nanodollars) == (None, 0)
        # The job's events came through too (no table rebuild cascaded into them).
        assert s.scalar(sa.text("SELECT count(*) FROM job_events")) == 2
    db.dispose()


def test_the_migrations_have_one_head() -> None:
    """Two revisions on the same parent (two branches each adding one) stop every server from
    starting; re-point the later one's down_revision at the other."""
    heads = ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads()
    assert len(heads) == 1, f"several Alembic heads: {heads}"
