"""Finding 1: one tenant's slow request held SQLite's write lock (every transaction was BEGIN
IMMEDIATE, and the estimate tokenized inside its transaction), so the other tenant's requests
waited or failed with "database is locked", the worker loop crashed on the error, and a running
job ended in ``error`` for it."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import QueuePool

from tests.abuse.conftest import MODEL, shared_server
from tests.sample_data import conversation_file, text_file
from tunery.app import create_app
from tunery.models.catalog import ModelCatalog
from tunery.models.registry import ResolvedModel
from tunery.settings import Settings
from tunery.store.db import Database
from tunery.store.models import Job, JobMetric
from tunery.store.users import create_key
from tunery.worker import loop, relay

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_long_estimate_holds_no_lock_and_delays_no_other_tenant(tmp_path: Path) -> None:
    server, alice, bob = shared_server(tmp_path, TUNERY_WORKERS="0")
    try:
        # Just under the size an estimate renders whole (dataset_checks.EXACT_MAX_BYTES): the longest
        # estimate there is, so bob's requests (his file uploaded beforehand) land while it runs.
        big = alice.sdk.files.upload(conversation_file(tmp_path / "big.jsonl", n=5500)).id  # type: ignore[attr-defined]
        train = bob.sdk.files.upload(text_file(tmp_path / "small.jsonl", n=16)).id  # type: ignore[attr-defined]
        answer: dict[str, httpx.Response] = {}

        def estimate() -> None:  # tokenizes 5500 chat samples: seconds of work
            answer["r"] = alice.http.post("/v1/fine-tunes/estimate-price",
                                          json={"training_file": big, "model": MODEL, "n_epochs": 2})

        running = threading.Thread(target=estimate)
        running.start()
        time.sleep(1.0)
        # Meanwhile bob lists and creates a job, and an outside writer takes the write lock with a
        # short timeout: none of them waits for alice's estimate.
        assert bob.http.get("/v1/files").status_code == 200
        job = bob.sdk.fine_tuning.create(training_file=train, model=MODEL, lora=True)  # type: ignore[attr-defined]
        if server.database_url.startswith("sqlite"):
            outside = sqlite3.connect(server.database_url.removeprefix("sqlite:///"), timeout=2, isolation_level=None)
            outside.execute("BEGIN IMMEDIATE")
            outside.execute("ROLLBACK")
            outside.close()
        assert running.is_alive(), "alice's estimate ended before bob's requests were served"
        running.join(300)
        r = answer["r"]
        assert r.status_code == 200, r.text
        assert r.json()["estimated_train_token_count"] > 5500
        assert bob.sdk.fine_tuning.retrieve(job.id).status == "queued"  # type: ignore[attr-defined]
    finally:
        server.stop()


def test_the_worker_survives_database_errors_and_fails_no_job_for_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A locked or unreachable database while claiming, recovering and relaying: the worker loop
    backs off and carries on, and the job completes with every report recorded."""
    server, alice, _ = shared_server(tmp_path, TUNERY_WORKERS="0")
    try:
        train = alice.sdk.files.upload(text_file(tmp_path / "t.jsonl", n=16)).id  # type: ignore[attr-defined]
        job = alice.sdk.fine_tuning.create(training_file=train, model=MODEL, lora=True)  # type: ignore[attr-defined]
    finally:
        server.stop()
    locked = OperationalError("UPDATE jobs ...", {}, Exception("database is locked"))
    failures = {"claim": 3, "requeue": 2, "metrics": 2}

    def flaky(name: str, real):  # type: ignore[no-untyped-def]
        def call(*args, **kwargs):  # type: ignore[no-untyped-def]
            if failures[name] > 0:
                failures[name] -= 1
                raise locked
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(loop, "claim_next", flaky("claim", loop.claim_next))
    monkeypatch.setattr(loop, "requeue_stale", flaky("requeue", loop.requeue_stale))
    monkeypatch.setattr(relay.job_store, "add_metrics", flaky("metrics", relay.job_store.add_metrics))
    # The stand-in trainer of bench/fleet.py: the real queue, relay and packaging, no training.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    settings = Settings(data_dir=server.data_dir, database_url=server.env.get("TUNERY_DATABASE_URL", ""),
                        recipe_module="bench.stub_trainer", heartbeat_interval_s=0.2)
    worker = threading.Thread(target=loop.run_worker, args=(settings,),
                              kwargs={"max_jobs": 1, "handle_signals": False})
    worker.start()
    worker.join(120)
    assert not worker.is_alive()
    assert failures == {"claim": 0, "requeue": 0, "metrics": 0}
    db = Database(server.database_url)
    try:
        with db.read() as s:
            row = s.get(Job, job.id)
            assert row is not None and row.status == "completed", (row.status if row else None, row and row.error)
            steps = s.scalar(select(func.count()).select_from(JobMetric).where(JobMetric.job_id == job.id))
        assert steps == 6  # the stub's six steps: none lost to the errors
    finally:
        db.dispose()


class PoolWatchingCatalog(ModelCatalog):
    """The catalog at the hub seam: every model look-up (limits, vision, ``from_hf_model`` — where a
    hub model's config and tokenizer come over the network) records how many database connections
    are checked out of the pool at that moment."""

    def __init__(self, real: ModelCatalog, pool: QueuePool):
        super().__init__(real.cache_dir, real.allow_network)
        self.pool = pool
        self.held: list[int] = []

    def resolve(self, name: str, registered: Mapping[str, str], revision: str | None = None,
                token: str | None = None, weights: bool = True) -> ResolvedModel:
        self.held.append(self.pool.checkedout())
        return super().resolve(name, registered, revision, token, weights)


def test_model_look_ups_at_create_hold_no_database_connection(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path / "data", secret_key="test-secret"))
    ctx = app.state.ctx
    assert isinstance(ctx.db.engine.pool, QueuePool)
    catalog = ctx.catalog = PoolWatchingCatalog(ctx.catalog, ctx.db.engine.pool)
    with ctx.db.session() as s:
        key = create_key(s, "alice")
    with TestClient(app, headers={"Authorization": f"Bearer {key}"}) as c:
        # A missing file is reported with the model's checks, so each request looks the model up.
        together = c.post("/v1/fine-tunes", json={"model": MODEL, "from_hf_model": MODEL, "training_file": "file-x"})
        assert together.status_code == 400, together.text
        assert 'training_file "file-x" does not exist' in together.json()["error"]["message"]
        openai = c.post("/v1/fine_tuning/jobs", json={"model": MODEL, "training_file": "file-x"})
        assert openai.status_code == 400, openai.text
        assert 'training_file "file-x" does not exist' in openai.json()["error"]["message"]
        assert c.get("/v1/fine-tunes/models/limits", params={"model_name": MODEL}).status_code == 200
    assert len(catalog.held) >= 4 and set(catalog.held) == {0}, catalog.held
