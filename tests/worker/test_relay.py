"""The relay against a real database and a local blob store: records become events, metrics and
progress columns as they are written (a half-written line waits), and a checkpoint is listed only
once all its parts are stored, and only while the job is still this worker's."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from tests.job_rows import claimed_job
from tunery.storage import LocalBlobStore
from tunery.store import jobs as job_store
from tunery.store.db import Database
from tunery.worker.fate import JobEnded, Outcome
from tunery.worker.relay import Relay


@pytest.fixture()
def relay(database: Database, tmp_path: Path) -> Relay:
    claimed_job(database, "ft-1", "w1")
    return Relay(database, LocalBlobStore(tmp_path / "blobs"), "ft-1", "w1", tmp_path / "report.jsonl")


def _write(relay: Relay, *records: dict[str, Any], tail: str = "") -> None:
    with open(relay.report_path, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records) + tail)


def _checkpoint_dir(root: Path, parts: tuple[str, ...]) -> Path:
    for part in parts:
        (root / part).mkdir(parents=True)
        (root / part / "weights.txt").write_text(part)
    return root


def test_records_become_events_metrics_and_progress(relay: Relay) -> None:
    start = {"kind": "event", "type": "training_start", "message": "go", "total_steps": 10, "token_count": 500,
             "param_count": 7, "batch_size": 16}
    half = json.dumps({"kind": "metrics", "step": 1, "values": {"train/loss": 2.5}})
    _write(relay, start, tail=half[:20])
    relay.pump()
    with relay.db.session() as s:
        job = job_store.get_job(s, "ft-1")
        assert (job.total_steps, job.token_count, job.param_count, job.batch_size) == (10, 500, 7, 16)
        assert job_store.list_metrics(s, "ft-1") == []  # the half-written line waits
    _write(relay, tail=half[20:] + "\n")
    _write(relay, {"kind": "event", "type": "eval_complete", "message": "e", "step": 1},
           {"kind": "event", "type": "epoch_complete", "message": "ep", "epoch": 1},
           {"kind": "event", "type": "early_stopped", "message": "s", "best_step": 1, "best_metric": 0.5},
           {"kind": "event", "type": "error", "message": "line 2: bad", "level": "error", "user_error": True})
    relay.pump()
    with relay.db.session() as s:
        job = job_store.get_job(s, "ft-1")
        assert [m.values for m in job_store.list_metrics(s, "ft-1")] == [{"train/loss": 2.5}]
        assert (job.steps_completed, job.evals_completed, job.epochs_completed) == (1, 1, 1)
        assert (job.early_stopped, job.early_stopping_best_step, job.early_stopping_best_metric) == (True, 1, 0.5)
        events = job_store.list_events(s, "ft-1")
    assert [e.type for e in events][-4:] == ["training_start", "eval_complete", "epoch_complete", "early_stopped"]
    # Each event carries what the job knew by then (Together's event fields).
    assert events[-1].fields == {"step": 1, "total_steps": 10, "token_count": 500, "param_count": 7,
                                 "early_stopping_best_step": 1, "early_stopping_best_metric_value": 0.5}
    assert (relay.error_message, relay.error_is_users) == ("line 2: bad", True)


def test_a_checkpoint_is_listed_after_its_parts_are_stored(relay: Relay, tmp_path: Path) -> None:
    step = _checkpoint_dir(tmp_path / "out" / "step-3", ("model", "adapter", "state"))
    final = _checkpoint_dir(tmp_path / "out" / "final", ("model", "adapter"))
    saved = {"kind": "event", "type": "checkpoint_save", "message": "saved", "step": 3, "checkpoint_path": str(step)}
    _write(relay, saved, tail=json.dumps({"kind": "checkpoint", "step": 3, "path": str(step), "final": False})[:9])
    relay.pump()
    with relay.db.session() as s:  # held until its checkpoint is stored
        assert [e.type for e in job_store.list_events(s, "ft-1")] == ["job_start"]
    _write(relay, tail=json.dumps({"kind": "checkpoint", "step": 3, "path": str(step), "final": False})[9:] + "\n")
    _write(relay, {**saved, "message": "final saved", "step": 6, "checkpoint_path": str(final)},
           {"kind": "checkpoint", "step": 6, "path": str(final), "final": True})
    relay.pump()
    with relay.db.session() as s:
        listed = job_store.list_checkpoints(s, "ft-1")
        event = job_store.list_events(s, "ft-1")[-1]
    model = next(c for c in listed if c.variant == "model")
    with relay.blobs.local_copy(model.blob_key) as archive:
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    # It says where the checkpoint is stored (never the child's local path) and its archive's hash.
    assert (event.type, event.fields) == ("checkpoint_save", {"step": 3, "checkpoint_path": "jobs/ft-1/step-3/model",
                                                              "hash": digest})
    assert relay.final_event is not None and relay.final_event.message == "final saved"
    assert [(c.step, c.variant, c.final) for c in listed] == [(3, "adapter", False), (3, "model", False),
                                                              (3, "state", False)]
    assert all(relay.blobs.exists(c.blob_key) and relay.blobs.size(c.blob_key) == c.size for c in listed)
    # The final model is only remembered: the worker packages it once the child has exited.
    assert (relay.final_path, relay.final_step, relay.listed_steps) == (final, 6, [3])


def test_a_checkpoint_of_a_job_taken_over_is_not_listed_and_not_kept(relay: Relay, tmp_path: Path) -> None:
    with relay.db.session() as s:
        job_store.get_job(s, "ft-1").worker_id = "w2"
    step = _checkpoint_dir(tmp_path / "out" / "step-3", ("model", "state"))
    _write(relay, {"kind": "checkpoint", "step": 3, "path": str(step), "final": False})
    with pytest.raises(JobEnded) as ended:
        relay.pump()
    assert ended.value.outcome == Outcome.LOST
    with relay.db.session() as s:
        assert job_store.list_checkpoints(s, "ft-1") == []
    assert [p for p in relay.blobs.root.rglob("*") if p.is_file()] == []
