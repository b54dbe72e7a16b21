"""A claimed job through the worker with real parts — the database (SQLite, and PostgreSQL where
available), a local blob store, a training child process — to each way it can end: completed, user
error, crashed, killed, stopped for a cancel or a shutdown, and cancelled or taken over while its
model is being packaged. The child is ``tests/worker/scripted_recipe.py``, which speaks the recipe
protocol without training; the real recipes run through the same worker in tests/e2e."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.job_rows import claimed_job, job_spec
from tunery.jobs import lifecycle
from tunery.jobs.results import results_file_id
from tunery.models.catalog import ModelCatalog
from tunery.settings import Settings
from tunery.storage import LocalBlobStore
from tunery.storage.archives import unpack
from tunery.store import jobs as job_store
from tunery.store.db import Database
from tunery.store.models import BaseModelEntry, File, Job
from tunery.store.secrets import SecretBox
from tunery.store.status import JobStatus
from tunery.worker.run_job import WorkerContext, run_job

REPO = Path(__file__).resolve().parents[2]
JOB = "ft-1"


@dataclass
class World:
    db: Database
    blobs: LocalBlobStore
    ctx: WorkerContext
    tmp: Path

    def run(self, script: str, monkeypatch: pytest.MonkeyPatch) -> Job:
        monkeypatch.setenv("SCRIPTED_RECIPE", script)
        run_job(self.ctx, JOB)
        return self.job()

    def job(self) -> Job:
        with self.db.session() as s:
            return job_store.get_job(s, JOB)

    def events(self) -> list[str]:
        with self.db.session() as s:
            return [e.type for e in job_store.list_events(s, JOB)]

    def listed(self) -> list[tuple[int, str, bool]]:
        with self.db.session() as s:
            return [(c.step, c.variant, c.final) for c in job_store.list_checkpoints(s, JOB)]

    def stored_keys(self) -> set[str]:
        root = self.blobs.root
        return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".staging" not in p.parts}


@pytest.fixture()
def world(database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    # The training child runs `python -m tests.worker.scripted_recipe`: it needs the repo root.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    blobs = LocalBlobStore(tmp_path / "blobs")
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "hello"}\n')
    blobs.put("files/file-t", data)
    with database.session() as s:
        s.add(BaseModelEntry(name="test/base", path=str(base)))
    claimed_job(database, JOB, "w1", job_spec(model="test/base", training_file="file-t"))
    with database.session() as s:
        s.add(File(id="file-t", user_id="u1", filename="train.jsonl", purpose="fine-tune", file_type="jsonl",
                   blob_key="files/file-t", processing_status="COMPLETED", upload_state="uploaded"))
    settings = Settings(data_dir=tmp_path / "data", heartbeat_interval_s=0.05, price_per_million_tokens=2.0,
                        recipe_module="tests.worker.scripted_recipe")
    ctx = WorkerContext(settings=settings, db=database, blobs=blobs, catalog=ModelCatalog(tmp_path / "models"),
                        worker_id="w1", scratch=tmp_path / "scratch", stopping=threading.Event(),
                        secrets=SecretBox(b"test"))
    return World(database, blobs, ctx, tmp_path)


def _in_background(world: World, script: str, monkeypatch: pytest.MonkeyPatch) -> threading.Thread:
    monkeypatch.setenv("SCRIPTED_RECIPE", script)
    thread = threading.Thread(target=run_job, args=(world.ctx, JOB))
    thread.start()
    return thread


def _wait_for(condition: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _cancel(world: World) -> None:
    with world.db.session() as s:
        lifecycle.cancel(s, job_store.get_job(s, JOB), by="the test")


def test_completed_lists_the_model_and_records_what_training_reported(world: World,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    job = world.run("complete", monkeypatch)
    assert job.status == JobStatus.COMPLETED, job.error
    assert (job.total_steps, job.token_count, job.param_count, job.batch_size) == (4, 1000, 50, 8)
    assert job.steps_completed == 2 and job.worker_id is None and job.secrets is None
    assert job.total_price_nanodollars == 1000 * 2.0 * 1000  # 1000 tokens at $2 per million
    assert world.listed() == [(1, "adapter", False), (1, "model", False), (1, "state", False),
                              (4, "adapter", True), (4, "model", True)]
    events = world.events()
    packaging = ["model_compressing", "model_compression_complete", "model_uploading", "model_upload_complete",
                 "job_complete"]
    assert [e for e in events if e in packaging] == packaging and events[-1] == "job_complete"
    with world.db.session() as s:
        final = job_store.find_checkpoint(s, JOB, "model", None)
        assert final is not None
        with world.blobs.local_copy(final.blob_key) as archive:
            model = unpack(archive, world.tmp / "unpacked")
    assert (model / "weights.txt").read_text() == "merged model"
    # Every stored blob is listed (plus the training file and the job's results file): nothing was left behind.
    with world.db.session() as s:
        listed = {c.blob_key for c in job_store.list_checkpoints(s, JOB)}
        results = s.get(File, results_file_id(JOB))
        assert results is not None and results.purpose == "fine-tune-results"
    assert world.stored_keys() == listed | {"files/file-t", results.blob_key}
    assert list(world.blobs.staging_dir().iterdir()) == []


def test_a_user_error_ends_the_job_as_the_users_with_the_childs_message(world: World,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    job = world.run("user_error", monkeypatch)
    assert job.status == JobStatus.USER_ERROR
    assert job.error == "line 3: the assistant message is empty"
    assert "error" not in world.events()  # the child's error event became the job's error, not an event
    assert world.events()[-1] == "job_error"


def test_a_crash_is_an_error_that_shows_the_end_of_the_childs_log(world: World,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    job = world.run("crash", monkeypatch)
    assert job.status == JobStatus.ERROR
    assert job.error is not None and "RuntimeError: boom in the kernel" in job.error


def test_a_killed_child_is_an_error(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    job = world.run("killed", monkeypatch)
    assert job.status == JobStatus.ERROR
    assert job.error is not None and job.error.startswith("training process failed")
    assert (1, "state", False) in world.listed()  # its checkpoint stays, for a later from_checkpoint


def test_a_cancel_stops_training_and_ends_the_job_as_cancelled(world: World,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    thread = _in_background(world, "until_stopped", monkeypatch)
    _wait_for(lambda: (1, "state", False) in world.listed())
    _cancel(world)
    thread.join(60)
    job = world.job()
    assert job.status == JobStatus.CANCELLED and job.worker_id is None
    with world.db.session() as s:
        assert job_store.list_events(s, JOB)[-1].message == "Job cancelled at step 1"
    assert (2, "state", False) in world.listed() and not any(final for _, _, final in world.listed())


def test_a_pause_saves_a_checkpoint_frees_the_worker_and_resume_queues_the_job(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    thread = _in_background(world, "until_stopped", monkeypatch)
    _wait_for(lambda: (1, "state", False) in world.listed())
    with world.db.session() as s:
        lifecycle.pause(s, job_store.get_job(s, JOB), by="the test")
    thread.join(60)
    assert not thread.is_alive()  # the worker's slot is free
    job = world.job()
    assert job.status == JobStatus.PAUSED and job.worker_id is None and job.heartbeat_at is None
    with world.db.session() as s:
        assert job_store.list_events(s, JOB)[-1].message.startswith("Job paused at step 1;")
        latest = job_store.latest_state_checkpoint(s, JOB)
        assert latest is not None and latest.step == 2  # what the resumed run starts from
        lifecycle.resume(s, job_store.get_job(s, JOB), by="the test")
    assert world.job().status == JobStatus.QUEUED and world.events()[-1] == "job_resumed"


def test_a_shutdown_requeues_the_job_to_resume_from_its_last_checkpoint(world: World,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    thread = _in_background(world, "until_stopped", monkeypatch)
    _wait_for(lambda: (1, "state", False) in world.listed())
    world.ctx.stopping.set()
    thread.join(60)
    job = world.job()
    assert job.status == JobStatus.QUEUED and job.worker_id is None and job.heartbeat_at is None
    assert world.events()[-1] == "job_restarted"
    with world.db.session() as s:
        latest = job_store.latest_state_checkpoint(s, JOB)
    assert latest is not None and latest.step == 2


@pytest.mark.parametrize("phase", ["compressing", "uploading"])
def test_a_cancel_while_the_model_is_packaged_cancels_and_keeps_nothing_of_it(
        world: World, monkeypatch: pytest.MonkeyPatch, phase: str) -> None:
    cancelled = []

    def cancel_at(at: str) -> None:  # the worker's pause seam, called as each part is packed/stored
        if at == phase and not cancelled:
            cancelled.append(at)
            _cancel(world)

    world.ctx.pause = cancel_at
    job = world.run("complete", monkeypatch)
    assert cancelled == [phase]
    assert job.status == JobStatus.CANCELLED
    assert not any(final for _, _, final in world.listed())
    assert not any(key.startswith(f"jobs/{JOB}/final/") for key in world.stored_keys())
    assert list(world.blobs.staging_dir().iterdir()) == []
    assert "job_complete" not in world.events()


def test_a_job_taken_over_while_uploading_is_left_to_its_new_worker(world: World,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def taken_over(at: str) -> None:
        if at == "uploading":
            with world.db.session() as s:  # presumed dead: requeued and claimed by another worker
                job_store.get_job(s, JOB).worker_id = "w2"

    world.ctx.pause = taken_over
    job = world.run("complete", monkeypatch)
    assert job.status == JobStatus.UPLOADING and job.worker_id == "w2"  # untouched by w1
    assert not any(final for _, _, final in world.listed())
    assert not any(key.startswith(f"jobs/{JOB}/final/") for key in world.stored_keys())
