"""Jobs survive cancel, a SIGKILLed worker and a server restart, each ending in a correct, explained
state; killed jobs resume from their checkpoint."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from tests.conftest import LiveServer, sdk_client, start_server
from tests.e2e.test_jobs_sdk import MODEL, wait_for
from tests.sample_data import conversation_file
from tunery.store.db import Database
from tunery.store.models import Job

pytestmark = pytest.mark.slow
DONE = {"completed", "error", "user_error", "cancelled"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    s = start_server(tmp_path_factory.mktemp("robust"), TUNERY_WORKERS="1", TUNERY_HEARTBEAT_INTERVAL_S="0.3",
                     TUNERY_HEARTBEAT_TIMEOUT_S="3")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server: LiveServer):  # type: ignore[no-untyped-def]
    return sdk_client(server)


@pytest.fixture(scope="module")
def train_id(client, tmp_path_factory: pytest.TempPathFactory) -> str:  # type: ignore[no-untyped-def]
    path = conversation_file(tmp_path_factory.mktemp("data") / "train.jsonl", n=64)
    return str(client.files.upload(path).id)


def long_job(client, train_id: str, n_checkpoints: int = 1, n_epochs: int = 40):  # type: ignore[no-untyped-def]
    return client.fine_tuning.create(training_file=train_id, model=MODEL, lora=True, n_epochs=n_epochs,
                                     n_checkpoints=n_checkpoints, learning_rate=1e-3, batch_size=4,
                                     max_seq_length=128)


def wait_until(predicate, timeout: float = 120, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def event_types(client, job_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [e.type for e in client.fine_tuning.list_events(job_id).data]


def worker_pid(server: LiveServer, job_id: str) -> int:
    db = Database(server.database_url)
    with db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.worker_id is not None
        worker_id = job.worker_id
    db.dispose()
    return int(worker_id.split("-")[-2])


def test_cancel_a_running_job(client, train_id: str) -> None:  # type: ignore[no-untyped-def]
    job = long_job(client, train_id)
    wait_until(lambda: client.fine_tuning.retrieve(job.id).steps_completed > 2, what="training steps")
    client.fine_tuning.cancel(job.id)
    done = wait_for(client, job.id, DONE, timeout=60)
    assert done.status == "cancelled"
    types = event_types(client, job.id)
    assert types.index("cancel_requested") < types.index("job_stopped")
    # Nothing to download from a cancelled job.
    with pytest.raises(Exception, match="404"):
        client.fine_tuning.content(ft_id=job.id, checkpoint="merged").read()


def test_sigkilled_worker_job_restarts_from_its_checkpoint(client, server: LiveServer, train_id: str) -> None:  # type: ignore[no-untyped-def]
    job = long_job(client, train_id, n_checkpoints=4, n_epochs=6)
    wait_until(lambda: any(c.checkpoint_type == "Intermediate"
                           for c in client.fine_tuning.list_checkpoints(job.id).data), what="a checkpoint")
    os.kill(worker_pid(server, job.id), signal.SIGKILL)
    done = wait_for(client, job.id, DONE, timeout=400)
    assert done.status == "completed", [e.message for e in client.fine_tuning.list_events(job.id).data]
    events = client.fine_tuning.list_events(job.id).data
    assert "job_restarted" in [e.type for e in events]
    assert any(e.message.startswith("Resuming from the checkpoint at step") for e in events)


def test_server_restart_mid_job_loses_nothing(client, server: LiveServer, train_id: str) -> None:  # type: ignore[no-untyped-def]
    job = long_job(client, train_id, n_checkpoints=4, n_epochs=6)
    wait_until(lambda: client.fine_tuning.retrieve(job.id).steps_completed > 2, what="training steps")
    server.restart()
    done = wait_for(client, job.id, DONE, timeout=400)
    assert done.status == "completed", [e.message for e in client.fine_tuning.list_events(job.id).data]
    messages = [e.message for e in client.fine_tuning.list_events(job.id).data]
    assert any("shut down" in m and "requeued" in m for m in messages), messages
    assert any(m.startswith("Resuming from the checkpoint at step") for m in messages), messages


def test_other_users_cannot_see_or_touch_a_job(client, server: LiveServer, train_id: str) -> None:  # type: ignore[no-untyped-def]
    from together import NotFoundError, Together

    job = client.fine_tuning.list().data[0]
    bob = Together(base_url=server.base_url, api_key=server.create_key("bob"), max_retries=0)
    for call in (lambda: bob.fine_tuning.retrieve(job.id), lambda: bob.fine_tuning.cancel(job.id),
                 lambda: bob.fine_tuning.list_events(job.id), lambda: bob.fine_tuning.list_checkpoints(job.id),
                 lambda: bob.fine_tuning.list_metrics(job.id), lambda: bob.fine_tuning.delete(job.id),
                 lambda: bob.fine_tuning.content(ft_id=job.id).read()):
        with pytest.raises(NotFoundError):
            call()
    assert bob.fine_tuning.list().data == []
