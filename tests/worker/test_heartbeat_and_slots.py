"""The worker's small parts: the per-job heartbeat thread, the pause seam and device slots."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from tests.job_rows import job_row
from tunery.queue.claim import claim_next
from tunery.queue.states import transition
from tunery.settings import Settings
from tunery.store.db import Database
from tunery.store.models import Job, User, utcnow
from tunery.store.status import JobStatus
from tunery.worker.fate import JobEnded, Outcome
from tunery.worker.heartbeat import JobHeartbeat
from tunery.worker.loop import Slots
from tunery.worker.pause import PausePoints


@pytest.fixture()
def db(database: Database) -> Database:
    with database.session() as s:
        s.add(User(id="u1", name="u1"))
    with database.session() as s:
        s.add(job_row("ft-1", "u1", "queued", created_at=utcnow()))
    with database.session() as s:
        claim_next(s, "w1")
    return database


def test_the_heartbeat_keeps_the_job_fresh_and_sees_cancel_and_loss(db: Database) -> None:
    with JobHeartbeat(db, "ft-1", "w1", interval_s=0.05) as beat:
        with db.session() as s:
            first = s.get(Job, "ft-1").heartbeat_at  # type: ignore[union-attr]
        time.sleep(0.3)
        with db.session() as s:
            assert s.get(Job, "ft-1").heartbeat_at > first  # type: ignore[union-attr, operator]
            transition(s, "ft-1", JobStatus.CANCEL_REQUESTED, event_type="cancel_requested", message="c")
        deadline = time.monotonic() + 5
        while not beat.cancel_requested.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert beat.cancel_requested.is_set() and not beat.lost.is_set()
        beat.check()
        with db.session() as s:  # the job is handed to another worker
            s.get(Job, "ft-1").worker_id = "w2"  # type: ignore[union-attr]
        while not beat.lost.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(JobEnded) as ended:
            beat.check()
        assert ended.value.outcome == Outcome.LOST


def test_only_the_first_worker_pauses_at_a_phase(tmp_path: Path) -> None:
    first = PausePoints("uploading", tmp_path)
    threading.Thread(target=first, args=("uploading",), daemon=True).start()
    deadline = time.monotonic() + 5
    while not (tmp_path / "uploading").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (tmp_path / "uploading").read_text() == str(os.getpid())
    PausePoints("uploading", tmp_path)("uploading")  # returns: someone paused here already
    PausePoints("uploading", tmp_path)("staging")  # other phases pass
    PausePoints()("uploading")  # unset, as in production


def test_device_slots() -> None:
    slots = Slots(Settings(worker_devices="0,1,2,3", processes_per_job=2))
    assert slots.count == 2 and slots.free == [["0", "1"], ["2", "3"]]
    assert Slots(Settings()).free == [[]]
    assert Slots(Settings(worker_jobs=3)).count == 3
    with pytest.raises(ValueError, match="need 6"):
        Slots(Settings(worker_devices="0,1", processes_per_job=2, worker_jobs=3))
