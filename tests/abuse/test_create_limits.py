"""Findings 4, 5 and 8's numbers, at create: ``wandb_base_url=http://127.0.0.1:9999`` made the worker
send authenticated requests into the server's own network (SSRF); with TUNERY_TOKEN_QUOTA=1000 the
estimate said ``allowed_to_proceed: false`` but create still queued the job; ``priority`` 2**63 was
a 500 and 10**9 jumped the queue; ``random_seed`` 2**80, Infinity and NaN were accepted and came
back null. Now each is refused at create, naming the field (400), or the quota (429), and no
request leaves the server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.abuse.conftest import MODEL, Tenant, shared_server
from tests.conftest import LiveServer, free_port
from tests.sample_data import conversation_file, text_file

pytestmark = pytest.mark.slow  # live servers: a minute to start on a loaded machine
JOB = {"model": MODEL, "training_type": {"type": "Lora"}}


class Recorder(BaseHTTPRequestHandler):
    """An internal service: records whoever calls it, and answers with something secret."""

    calls: list[str] = []

    def _answer(self) -> None:
        Recorder.calls.append(f"{self.command} {self.path}")
        self.send_response(500)
        self.end_headers()
        self.wfile.write(b"INTERNAL-SECRET-BODY")

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture(scope="module")
def internal() -> Iterator[int]:
    port = free_port()
    httpd = ThreadingHTTPServer(("127.0.0.1", port), Recorder)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield port
    httpd.shutdown()


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, Tenant, Tenant]]:
    server, alice, bob = shared_server(tmp_path_factory.mktemp("limits"), TUNERY_WORKERS="1",
                                       TUNERY_TOKEN_QUOTA="1000", TUNERY_MAX_ACTIVE_JOBS_PER_USER="2",
                                       TUNERY_WORKER_MODELS="none-here")  # queued jobs stay queued
    yield server, alice, bob
    server.stop()


@pytest.fixture(scope="module")
def small_file(limited: tuple[LiveServer, Tenant, Tenant], tmp_path_factory: pytest.TempPathFactory) -> str:
    _, alice, _ = limited
    return str(alice.sdk.files.upload(text_file(tmp_path_factory.mktemp("d") / "small.jsonl", n=4)).id)  # type: ignore[attr-defined]


def error_of(tenant: Tenant, body: dict, status: int) -> dict:
    r = tenant.http.post("/v1/fine-tunes", json=body)
    assert r.status_code == status, r.text
    return r.json()["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("url", ["http://127.0.0.1:{port}", "http://169.254.169.254/latest/meta-data",
                                 "http://localhost:{port}", "http://api.wandb.ai", "file:///etc/passwd",
                                 "https://user:pw@api.wandb.ai"])
def test_a_wandb_url_the_operator_did_not_allow_is_refused_and_never_called(
    limited: tuple[LiveServer, Tenant, Tenant], small_file: str, internal: int, url: str,
) -> None:
    _, alice, _ = limited
    Recorder.calls.clear()
    err = error_of(alice, {**JOB, "training_file": small_file, "wandb_api_key": "k" * 40,
                           "wandb_base_url": url.format(port=internal)}, 400)
    assert err["param"] == "wandb_base_url" and "wandb_base_url" in err["message"], err
    assert Recorder.calls == []


def test_the_public_wandb_endpoint_is_allowed(limited: tuple[LiveServer, Tenant, Tenant], small_file: str) -> None:
    _, alice, _ = limited
    r = alice.http.post("/v1/fine-tunes", json={**JOB, "training_file": small_file, "wandb_api_key": "k" * 40,
                                                "wandb_base_url": "https://api.wandb.ai"})
    assert r.status_code == 200, r.text
    alice.http.post(f"/v1/fine-tunes/{r.json()['id']}/cancel")


@pytest.mark.parametrize("field,value", [("priority", 2**63), ("priority", 10**9), ("random_seed", 2**80),
                                         ("random_seed", -1), ("learning_rate", "Infinity"),
                                         ("learning_rate", "NaN"), ("weight_decay", "Infinity"),
                                         ("warmup_ratio", "-Infinity")])
def test_unbounded_and_non_finite_numbers_are_400_naming_the_field(
    limited: tuple[LiveServer, Tenant, Tenant], small_file: str, field: str, value: object,
) -> None:
    _, alice, _ = limited
    # JSON's non-standard Infinity and NaN, as Python's json (and so many clients) sends them.
    raw = json.dumps({**JOB, "training_file": small_file, field: 0}).replace(f'"{field}": 0', f'"{field}": {value}')
    r = alice.http.post("/v1/fine-tunes", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == field and field in err["message"], err


def test_create_enforces_the_token_quota_the_estimate_reports(
    limited: tuple[LiveServer, Tenant, Tenant], tmp_path: Path,
) -> None:
    _, alice, bob = limited
    big = alice.sdk.files.upload(conversation_file(tmp_path / "big.jsonl", n=64)).id  # type: ignore[attr-defined]
    estimate = alice.http.post("/v1/fine-tunes/estimate-price", json={"training_file": big, "model": MODEL}).json()
    assert estimate["estimated_train_token_count"] > 1000 and estimate["allowed_to_proceed"] is False
    err = error_of(alice, {**JOB, "training_file": big}, 429)
    assert err["type"] == "insufficient_quota" and "TUNERY_TOKEN_QUOTA" in err["message"], err
    # Queued jobs hold their estimate against the quota: bob cannot queue past it a little at a time.
    small = bob.sdk.files.upload(text_file(tmp_path / "s.jsonl", n=30)).id  # type: ignore[attr-defined]
    one = bob.http.post("/v1/fine-tunes/estimate-price", json={"training_file": small, "model": MODEL}).json()
    assert 500 < one["estimated_train_token_count"] <= 1000, one  # one such job fits, two do not
    created = []
    while (r := bob.http.post("/v1/fine-tunes", json={**JOB, "training_file": small})).status_code == 200:
        created.append(r.json()["id"])
        assert len(created) < 4
    assert r.status_code == 429 and "TUNERY_TOKEN_QUOTA" in r.json()["error"]["message"], r.text
    assert len(created) == 1000 // one["estimated_train_token_count"]
    for job_id in created:
        bob.http.post(f"/v1/fine-tunes/{job_id}/cancel")


def test_unfinished_jobs_per_user_are_capped(limited: tuple[LiveServer, Tenant, Tenant], small_file: str) -> None:
    _, alice, bob = limited
    first = [alice.http.post("/v1/fine-tunes", json={**JOB, "training_file": small_file}) for _ in range(2)]
    assert [r.status_code for r in first] == [200, 200]
    err = error_of(alice, {**JOB, "training_file": small_file}, 429)
    assert "TUNERY_MAX_ACTIVE_JOBS_PER_USER" in err["message"], err
    alice.http.post(f"/v1/fine-tunes/{first[0].json()['id']}/cancel")  # an ended job frees its place
    again = alice.http.post("/v1/fine-tunes", json={**JOB, "training_file": small_file})
    assert again.status_code == 200, again.text
    for job_id in (first[1].json()["id"], again.json()["id"]):
        alice.http.post(f"/v1/fine-tunes/{job_id}/cancel")


def test_what_a_remote_wandb_server_answers_is_never_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The W&B server the operator allowed answers with an error: the job's error names the server
    and the kind of failure, never the body (it could be anything the server's network holds)."""
    import wandb

    from tunery.errors import TrainingFailed
    from tunery.training.config import TrainConfig
    from tunery.training.reporter import ListReporter
    from tunery.training.tracking import wandb_reporting

    def refused(**_: object) -> None:
        raise wandb.errors.CommError("<html>INTERNAL-SECRET-BODY: db password hunter2</html>")

    monkeypatch.setattr(wandb, "init", refused)
    cfg = TrainConfig(job_id="ft-x", base_model_dir=str(tmp_path), train_file="t.jsonl", output_dir=str(tmp_path),
                      wandb_api_key="k" * 40, wandb_base_url="https://wandb.internal.example:8443")
    with pytest.raises(TrainingFailed) as caught, wandb_reporting(cfg, ListReporter()) as reporter:
        reporter.event("training_start", "Training started")
    message = caught.value.message
    assert "wandb.internal.example:8443" in message and "CommError" in message
    assert "SECRET" not in message and "hunter2" not in message
