"""Speaking Together's API to the letter. Every JSON response of the files and fine-tunes endpoints,
from a live server that ran a real job, validates against Together's published OpenAPI spec (read as
``tests/together_spec`` says) with a JSON Schema 2020-12 validator — on SQLite, and on PostgreSQL
where ``TUNERY_TEST_POSTGRES_URL`` is set. The tokenized training set the job trained on downloads
through the SDK's ``retrieve_tokenized_dataset`` and the CLI's ``download-tokenized-dataset``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest

from tests.backends import create_postgres_database, drop_postgres_database, require_postgres
from tests.conftest import LiveServer, cli_env, sdk_client, start_server
from tests.sample_data import conversation_file
from tests.together_spec import spec_errors, together_spec
from tunery.models.builtin import ensure_builtin
from tunery.training.data.dataset import load_examples
from tunery.training.data.render import Renderer
from tunery.training.model import load_tokenizer

pytestmark = pytest.mark.slow
MODEL = "tunery/tiny-llama"
TOGETHER = str(Path(sys.executable).parent / "together")


@dataclass
class Conformance:
    http: httpx.Client
    checked: set[str]

    def check(self, method: str, path: str, response: httpx.Response, status: int = 200) -> Any:
        """Validate ``response`` against the spec's ``status`` schema of ``method path``; return its body."""
        assert response.status_code == status, response.text
        body = response.json()
        assert spec_errors(method, path, body, status) == [], f"{method.upper()} {path}"
        if status == 200:
            self.checked.add(f"{method.upper()} {path}")
        return body


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    env = {"TUNERY_WORKERS": "1", "TUNERY_HEARTBEAT_INTERVAL_S": "0.5"}
    database = None
    if request.param == "postgresql":
        require_postgres()
        database = create_postgres_database("spec")
        env["TUNERY_DATABASE_URL"] = database
    s = start_server(tmp_path_factory.mktemp("spec"), **env)
    yield s
    s.stop()
    if database:
        drop_postgres_database(database)


@pytest.fixture(scope="module")
def conformance(server: LiveServer) -> Iterator[Conformance]:
    with httpx.Client(base_url=server.base_url + "/v1", headers={"Authorization": f"Bearer {server.api_key}"},
                      timeout=60) as http:
        yield Conformance(http, set())


def wait_until_done(http: httpx.Client, job_id: str, timeout: float = 300) -> list[httpx.Response]:
    """Poll the job to its end; every body seen on the way is returned (all of them get validated)."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = http.get(f"/fine-tunes/{job_id}")
        seen.append(r)
        if r.json()["status"] in ("completed", "error", "cancelled"):
            return seen
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not end")


@dataclass
class Trained:
    """A LoRA job with evaluations and an intermediate checkpoint, run to completion."""

    job_id: str
    train_path: Path
    train_id: str
    created: httpx.Response
    retrieved: list[httpx.Response]


@pytest.fixture(scope="module")
def trained(server: LiveServer, conformance: Conformance, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    tmp = tmp_path_factory.mktemp("data")
    client = sdk_client(server)
    train_path = conversation_file(tmp / "train.jsonl", n=24)
    train = client.files.upload(train_path, purpose="fine-tune")
    val = client.files.upload(conversation_file(tmp / "val.jsonl", n=8, seed=1), purpose="fine-tune")
    created = conformance.http.post("/fine-tunes", json={
        "model": MODEL, "training_file": train.id, "validation_file": val.id, "n_epochs": 2, "n_checkpoints": 2,
        "n_evals": 2, "learning_rate": 1e-3, "max_seq_length": 128, "suffix": "spec",
        "training_type": {"type": "Lora", "lora_r": 8, "lora_alpha": 16},
        "lr_scheduler": {"lr_scheduler_type": "cosine", "lr_scheduler_args": {"min_lr_ratio": 0.1, "num_cycles": 0.5}},
    })
    job_id = created.json()["id"]
    retrieved = wait_until_done(conformance.http, job_id)
    assert retrieved[-1].json()["status"] == "completed", retrieved[-1].text
    return Trained(job_id, train_path, train.id, created, retrieved)


def test_every_files_and_fine_tunes_response_matches_togethers_spec(
        conformance: Conformance, trained: Trained, tmp_path: Path) -> None:
    c, http, job_id = conformance, conformance.http, trained.job_id
    c.check("post", "/fine-tunes", trained.created)
    for r in trained.retrieved:  # queued, running, compressing …, completed
        c.check("get", "/fine-tunes/{id}", r)
    job = trained.retrieved[-1].json()
    assert isinstance(job["batch_size"], int) and job["requested_batch_size"] == "max"
    assert None not in job.values()
    c.check("get", "/fine-tunes", http.get("/fine-tunes"))
    events = c.check("get", "/fine-tunes/{id}/events", http.get(f"/fine-tunes/{job_id}/events"))["data"]
    by_type = {e["type"]: e for e in events}
    start = by_type["training_start"]
    assert start["total_steps"] > 0 and start["token_count"] > 0 and start["param_count"] > 0
    saves = [e for e in events if e["type"] == "checkpoint_save"]
    assert [e["checkpoint_path"] for e in saves] == [f"jobs/{job_id}/step-{saves[0]['step']}/model",
                                                     f"jobs/{job_id}/final/model"]
    assert all(len(e["hash"]) == 64 for e in saves)
    done = by_type["model_upload_complete"]
    assert done["model_path"] == f"jobs/{job_id}/final" and done["hash"] == saves[-1]["hash"]
    assert done["step"] == job["total_steps"]
    c.check("get", "/fine-tunes/{id}/checkpoints", http.get(f"/fine-tunes/{job_id}/checkpoints"))
    metrics = c.check("get", "/fine-tunes/{id}/metrics", http.get(f"/fine-tunes/{job_id}/metrics"))["metrics"]
    assert metrics and all(isinstance(m["timestamp"], float) for m in metrics)
    c.check("post", "/fine-tunes/estimate-price", http.post("/fine-tunes/estimate-price", json={
        "training_file": trained.train_id, "model": MODEL, "n_epochs": 1}))
    c.check("get", "/fine-tunes/models/supported", http.get("/fine-tunes/models/supported"))
    c.check("get", "/fine-tunes/models/limits", http.get("/fine-tunes/models/limits", params={"model_name": MODEL}))

    # A second job, cancelled, then deleted.
    second = c.check("post", "/fine-tunes", http.post("/fine-tunes", json={
        "model": MODEL, "training_file": trained.train_id, "batch_size": 8, "learning_rate": 1e-3}))
    c.check("post", "/fine-tunes/{id}/cancel", http.post(f"/fine-tunes/{second['id']}/cancel"))
    assert wait_until_done(http, second["id"])[-1].json()["status"] == "cancelled"
    c.check("delete", "/fine-tunes/{id}", http.delete(f"/fine-tunes/{second['id']}"))
    gone = c.check("delete", "/fine-tunes/{id}", http.delete(f"/fine-tunes/{second['id']}"), 404)
    assert second["id"] in gone["error"]["message"]

    # Files.
    c.check("get", "/files", http.get("/files"))
    file = c.check("get", "/files/{id}", http.get(f"/files/{trained.train_id}"))
    assert file["Processed"] is True
    extra = conversation_file(tmp_path / "extra.jsonl", n=4)
    uploaded = c.check("post", "/files/upload", http.post("/files/upload", files={"file": extra.open("rb")}, data={
        "purpose": "fine-tune", "file_name": "extra.jsonl", "file_type": "jsonl"}))
    c.check("delete", "/files/{id}", http.delete(f"/files/{uploaded['id']}"))
    # The error answers the spec documents for these endpoints have its ErrorData shape.
    bad = c.check("post", "/files/upload", http.post("/files/upload", files={"file": extra.open("rb")}, data={
        "purpose": "no-such-purpose", "file_name": "extra.jsonl"}), 400)
    assert bad["error"]["param"] == "purpose"
    anonymous = httpx.post(str(http.base_url).rstrip("/") + "/files/upload", files={"file": extra.open("rb")},
                           data={"purpose": "fine-tune", "file_name": "extra.jsonl"})
    c.check("post", "/files/upload", anonymous, 401)

    # Every JSON endpoint of both groups in the spec was checked.
    json_endpoints = {f"{m.upper()} {p}" for p, ops in together_spec()["paths"].items()
                      if p.startswith(("/files", "/fine-tunes")) for m, op in ops.items()
                      if isinstance(op, dict)
                      and "application/json" in op.get("responses", {}).get("200", {}).get("content", {})}
    assert json_endpoints - c.checked == set()


def test_the_sdk_and_the_cli_download_the_tokenized_training_set(
        server: LiveServer, trained: Trained, tmp_path: Path) -> None:
    client = sdk_client(server)
    meta = client.fine_tuning.retrieve_tokenized_dataset(trained.job_id)
    assert meta.filename == f"{trained.job_id}-tokenized-dataset.parquet" and meta.size > 0
    # A bare GET, as the CLI makes it: the URL is its own credential, and only for this job.
    data = httpx.get(meta.url).content
    assert len(data) == meta.size
    bad = meta.url[:-3] + ("AAA" if not meta.url.endswith("AAA") else "BBB")
    assert httpx.get(bad).status_code == 403 and httpx.get(meta.url.split("?")[0]).status_code == 403
    job = client.fine_tuning.retrieve(trained.job_id)
    assert job.tokenized_dataset_path and job.tokenized_dataset_uploaded_at is not None
    uploaded = [e for e in client.fine_tuning.list_events(trained.job_id).data
                if e.type == "tokenized_dataset_upload_complete"]
    assert len(uploaded) == 1 and uploaded[0].tokenized_dataset_path == job.tokenized_dataset_path

    # Exactly what training saw: the file rendered with the model's chat template and masking.
    (tmp_path / "t.parquet").write_bytes(data)
    table = pq.read_table(tmp_path / "t.parquet").to_pylist()
    tokenizer = load_tokenizer(ensure_builtin(MODEL, server.data_dir / "models"))
    expected = load_examples(trained.train_path, "jsonl", Renderer(tokenizer, "auto"), max_seq_length=128).examples
    assert [(r["input_ids"], r["labels"]) for r in table] == [(e.input_ids, e.labels) for e in expected]
    assert all(r["attention_mask"] == [1] * len(r["input_ids"]) for r in table)
    assert all(-100 in r["labels"] and any(x != -100 for x in r["labels"]) for r in table)  # prompts masked

    out = subprocess.run([TOGETHER, "--non-interactive", "fine-tuning", "download-tokenized-dataset", trained.job_id,
                          "--output-dir", str(tmp_path / "cli")], env=cli_env(server, tmp_path / "home"),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / "cli" / meta.filename).read_bytes() == data
