"""The API on PostgreSQL: what a request wrote is committed before its response is sent (read
your writes), and values PostgreSQL refuses but SQLite takes (NUL characters, integers beyond 64
bits) are a 400 in Together's error shape, never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, start_server
from tests.sample_data import conversation_file


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, postgres_url: str) -> Iterator[LiveServer]:
    s = start_server(tmp_path_factory.mktemp("pgvalues"), TUNERY_WORKERS="0", TUNERY_DATABASE_URL=postgres_url)
    yield s
    s.stop()


def test_nul_characters_and_huge_integers_are_400(server: LiveServer) -> None:
    headers = {"Authorization": f"Bearer {server.api_key}"}
    nul = httpx.get(f"{server.base_url}/v1/fine-tunes/ft-%00x", headers=headers)
    assert nul.status_code == 400 and nul.json()["error"]["type"] == "invalid_request_error"
    body = {"upload_id": "up-\u0000", "file_id": "file-x", "parts": [{"part_number": 2**70, "etag": "e"}]}
    r = httpx.post(f"{server.base_url}/v1/files/multipart/complete", headers=headers, json=body)
    assert r.status_code in (400, 404, 422) and "error" in r.json()


def test_a_created_job_is_visible_as_soon_as_the_create_returns(server: LiveServer, tmp_path: Path) -> None:
    from together import Together

    client = Together(base_url=server.base_url, api_key=server.api_key, max_retries=0)
    train = client.files.upload(conversation_file(tmp_path / "t.jsonl", n=8)).id
    # The SDK's timeout: the first create renders the file with the model's template in a fresh child.
    http = httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {server.api_key}"}, timeout=60)
    for _ in range(10):
        created = http.post("/v1/fine-tunes", json={"training_file": train, "model": "tunery/tiny-llama"})
        assert created.status_code == 200, created.text
        assert http.get(f"/v1/fine-tunes/{created.json()['id']}").status_code == 200
