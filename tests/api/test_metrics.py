"""``GET /metrics`` in Prometheus text format, and structured JSON logs with one line per request."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import LiveServer, start_server
from tests.job_rows import job_row
from tunery.store.db import Database
from tunery.store.models import User, Worker, utcnow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    s = start_server(tmp_path_factory.mktemp("metrics"), TUNERY_WORKERS="0", TUNERY_LOG_FORMAT="json")
    yield s
    s.stop()


def samples(text: str) -> dict[str, float]:
    return {line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
            for line in text.splitlines() if line and not line.startswith("#")}


def test_metrics_report_the_queue_workers_and_request_latency(server: LiveServer) -> None:
    db = Database(server.database_url)
    with db.session() as s:
        s.add(User(id="u-m", name="metrics-user"))
    with db.session() as s:
        for i, status in enumerate(["queued", "queued", "running", "completed", "error"]):
            s.add(job_row(f"ft-m{i}", "u-m", status, heartbeat_at=utcnow() if status == "running" else None))
        s.add(Worker(id="gpu-1-123-abc", host="gpu-1", heartbeat_at=utcnow()))
    db.dispose()
    headers = {"Authorization": f"Bearer {server.api_key}"}
    assert httpx.get(f"{server.base_url}/v1/fine-tunes/ft-nope", headers=headers).status_code == 404
    r = httpx.get(f"{server.base_url}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    got = samples(r.text)
    assert got['tunery_jobs{status="queued"}'] == 2 and got['tunery_jobs{status="running"}'] == 1
    assert got['tunery_jobs_finished_total{status="completed"}'] == 1 and got["tunery_jobs_failed_total"] == 1
    assert got["tunery_workers"] == 1
    assert 'tunery_worker_last_heartbeat_timestamp_seconds{worker="gpu-1-123-abc",host="gpu-1"}' in got
    assert got['tunery_http_requests_total{method="GET",route="/v1/fine-tunes/{job_id}",status="404"}'] == 1
    inf = 'tunery_http_request_duration_seconds_bucket{method="GET",route="/v1/fine-tunes/{job_id}",le="+Inf"}'
    assert got[inf] == 1
    assert "# TYPE tunery_http_request_duration_seconds histogram" in r.text


def test_json_logs_have_one_line_per_request(server: LiveServer) -> None:
    httpx.get(f"{server.base_url}/healthz")
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    requests = [line for line in lines if line["logger"] == "tunery.access" and line["path"] == "/healthz"]
    assert requests, server.log()[-2000:]
    last = requests[-1]
    assert last["status"] == 200 and last["route"] == "/healthz" and last["duration_ms"] >= 0
    assert {"ts", "level", "message"} <= set(last)
