"""Finding 8's worker half: a training child stuck in a step was never killed (SIGTERM without
SIGKILL escalation), so a cancelled job never ended and held its worker; and no job had a
wall-clock limit. Now the worker kills a child that ignores SIGTERM after TUNERY_STOP_GRACE_S, and
stops a run that outlasts TUNERY_JOB_TIMEOUT_S (the job ends user_error, saying so)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.abuse.conftest import MODEL, Tenant, shared_server
from tests.conftest import LiveServer
from tests.sample_data import text_file

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
DONE = {"completed", "cancelled", "error"}


@pytest.fixture(scope="module")
def stuck(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, Tenant, Path]]:
    pids = tmp_path_factory.mktemp("pids")
    server, alice, _ = shared_server(
        tmp_path_factory.mktemp("stuck"), TUNERY_WORKERS="1", TUNERY_RECIPE_MODULE="tests.abuse.stuck_trainer",
        TUNERY_STOP_GRACE_S="2", TUNERY_JOB_TIMEOUT_S="8", STUCK_PID_DIR=str(pids),
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    yield server, alice, pids
    server.stop()


def running_child(alice: Tenant, job_id: str, pids: Path) -> int:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        events = [e.type for e in alice.sdk.fine_tuning.list_events(job_id).data]  # type: ignore[attr-defined]
        if "training_start" in events and (found := [int(p.name) for p in pids.iterdir()]):
            (pids / str(found[0])).unlink()
            return found[0]
        time.sleep(0.3)
    raise AssertionError("the stuck trainer never started")


def ended(alice: Tenant, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = alice.http.get(f"/v1/fine-tunes/{job_id}").json()
        if job["status"] in DONE:
            return job  # type: ignore[no-any-return]
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not end")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_a_child_that_ignores_sigterm_is_killed_and_the_cancel_ends_the_job(
    stuck: tuple[LiveServer, Tenant, Path], tmp_path: Path,
) -> None:
    _, alice, pids = stuck
    train = alice.sdk.files.upload(text_file(tmp_path / "t.jsonl", n=8)).id  # type: ignore[attr-defined]
    job = alice.sdk.fine_tuning.create(training_file=train, model=MODEL, lora=True)  # type: ignore[attr-defined]
    pid = running_child(alice, job.id, pids)
    alice.sdk.fine_tuning.cancel(job.id)  # type: ignore[attr-defined]
    assert ended(alice, job.id)["status"] == "cancelled"
    assert not alive(pid)


def test_a_run_past_the_wall_clock_limit_is_stopped(stuck: tuple[LiveServer, Tenant, Path], tmp_path: Path) -> None:
    _, alice, pids = stuck
    train = alice.sdk.files.upload(text_file(tmp_path / "t.jsonl", n=8)).id  # type: ignore[attr-defined]
    job = alice.sdk.fine_tuning.create(training_file=train, model=MODEL, lora=True)  # type: ignore[attr-defined]
    pid = running_child(alice, job.id, pids)
    done = ended(alice, job.id)
    # Together's wire has no user_error status; OpenAI's dialect names whose fault it was.
    assert done["status"] == "error" and "TUNERY_JOB_TIMEOUT_S" in done["error"], done["error"]
    assert alice.http.get(f"/v1/fine_tuning/jobs/{job.id}").json()["error"]["code"] == "user_error"
    assert not alive(pid)
