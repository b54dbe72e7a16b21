"""A fleet of workers on PostgreSQL and S3 (moto): every job is claimed once and completed, and a
worker SIGKILLed at any phase — staging, training, checkpoint upload, compression, final upload —
loses nothing: the job is requeued when its heartbeat lapses and finishes on another worker from
its last listed checkpoint, and no partial checkpoint is ever listed.

Workers are stopped at a precise phase by the ``TUNERY_TEST_PAUSE_AT`` seam (worker/pause.py);
the kill itself is a real SIGKILL.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from together import Together

from tests.backends import S3Server
from tests.conftest import LiveServer, start_server
from tests.fleet.fleet import DONE, SECRET_KEY, TIMING, Fleet, alive, wait_until, worker_pid
from tests.sample_data import conversation_file

pytestmark = pytest.mark.slow
MODEL = "tunery/tiny-llama"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, postgres_url: str, moto_server: S3Server) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("fleet")
    bucket = moto_server.new_bucket("fleet")
    server: LiveServer = start_server(root / "api", TUNERY_WORKERS="0", TUNERY_DATABASE_URL=postgres_url,
                                      TUNERY_SECRET_KEY=SECRET_KEY, **moto_server.env(bucket, "fleet"), **TIMING)
    f = Fleet(root=root, server=server, s3=moto_server, bucket=bucket, prefix="fleet", database_url=postgres_url)
    yield f
    f.stop_workers()
    server.stop()


@pytest.fixture(scope="module")
def client(fleet: Fleet) -> Together:
    return Together(base_url=fleet.server.base_url, api_key=fleet.server.api_key, max_retries=0)


@pytest.fixture(scope="module")
def train_id(client: Together, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = conversation_file(tmp_path_factory.mktemp("data") / "train.jsonl", n=32)
    return str(client.files.upload(path).id)


@pytest.fixture()
def workers(fleet: Fleet) -> Iterator[Fleet]:
    """The fleet, its workers stopped after the test (each test starts the ones it needs)."""
    yield fleet
    fleet.stop_workers()
    fleet.workers.clear()


def create(client: Together, train_id: str, n_epochs: int = 1, n_checkpoints: int = 1) -> str:
    job = client.fine_tuning.create(training_file=train_id, model=MODEL, lora=True, n_epochs=n_epochs,
                                    n_checkpoints=n_checkpoints, learning_rate=1e-3, batch_size=4,
                                    max_seq_length=128)
    return str(job.id)


def finished(client: Together, fleet: Fleet, job_id: str, timeout: float = 600) -> str:
    status = wait_until(lambda: (s := client.fine_tuning.retrieve(job_id).status) in DONE and s, timeout,
                        f"job {job_id} to finish", fleet)
    return str(status)


@pytest.mark.parametrize("n_workers", [2, 4])
def test_each_job_is_claimed_once_and_completed(client: Together, workers: Fleet, train_id: str,
                                                tmp_path: Path, n_workers: int) -> None:
    jobs = [create(client, train_id) for _ in range(n_workers + 1)]
    for _ in range(n_workers):
        workers.start_worker()
    for job_id in jobs:
        assert finished(client, workers, job_id) == "completed", [e.message for e in workers.events(job_id)]
    claims = {job_id: workers.claims(job_id) for job_id in jobs}
    assert all(len(c) == 1 for c in claims.values()), claims
    assert len({c[0] for c in claims.values()}) >= 2, f"the jobs were not spread over the fleet: {claims}"
    for job_id in jobs:
        assert "job_restarted" not in [e.type for e in workers.events(job_id)]
        rows = workers.assert_listed_checkpoints_complete(job_id, tmp_path)
        assert {r.variant for r in rows if r.final} == {"model", "adapter"}
    model = client.fine_tuning.content(ft_id=jobs[0], checkpoint="adapter").read()
    assert len(model) > 1000


# phase → whether a checkpoint was listed before the kill (so the rerun resumes from it).
PHASES = {"staging": False, "training": True, "checkpoint": True, "compressing": True, "uploading": True}


@pytest.mark.parametrize("phase", list(PHASES))
def test_a_worker_killed_at_any_phase_loses_nothing(client: Together, workers: Fleet, train_id: str,
                                                     tmp_path: Path, phase: str) -> None:
    pause_dir = tmp_path / "pause"
    pause_dir.mkdir()
    seam = {"TUNERY_TEST_PAUSE_AT": phase, "TUNERY_TEST_PAUSE_DIR": str(pause_dir)}
    job_id = create(client, train_id, n_epochs=2, n_checkpoints=4)
    # Two workers that would both pause there; whichever claims the job pauses, and is killed.
    workers.start_worker(**seam)
    workers.start_worker(**seam)
    marker = pause_dir / phase
    wait_until(marker.exists, 300, f"a worker to pause at {phase}", workers)
    pid = worker_pid(marker)
    before = workers.checkpoints(job_id)
    stored_before = workers.objects(f"jobs/{job_id}/")
    if phase in ("checkpoint", "uploading"):
        # A part is in the store but not listed: nothing half-uploaded is ever visible.
        assert set(stored_before) - {c.blob_key for c in before}, stored_before
    if phase in ("compressing", "uploading"):
        assert not [c for c in before if c.final]
    workers.assert_listed_checkpoints_complete(job_id, tmp_path)
    assert bool([c for c in before if not c.final]) == PHASES[phase], before

    killed = next(w for w in workers.workers if w.proc.pid == pid)
    killed.kill()
    assert not alive(pid)
    assert finished(client, workers, job_id) == "completed", [e.message for e in workers.events(job_id)]

    events = workers.events(job_id)
    messages = [e.message for e in events]
    claims = workers.claims(job_id)
    assert len(claims) == 2 and claims[0] != claims[1] and str(pid) in claims[0].split("-"), claims
    assert "job_restarted" in [e.type for e in events], messages
    resumed = [m for m in messages if m.startswith("Resuming from the checkpoint at step")]
    assert bool(resumed) == PHASES[phase], messages
    rows = workers.assert_listed_checkpoints_complete(job_id, tmp_path)
    assert {r.variant for r in rows if r.final} == {"model", "adapter"}
    assert len([r for r in rows if r.final]) == 2  # the killed run's final upload was never listed
