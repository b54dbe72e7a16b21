"""An API node killed in the middle of an upload to the local store loses that request only: the
client retries the same signed URL after the restart and it works."""

from __future__ import annotations

import contextlib
import hashlib
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, start_server

pytestmark = pytest.mark.slow


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[LiveServer]:
    s = start_server(tmp_path, TUNERY_WORKERS="0")
    yield s
    s.stop()


def test_a_put_cut_off_by_a_crash_can_be_retried(server: LiveServer, tmp_path: Path) -> None:
    body = b"".join(b'{"text": "line %d"}\n' % i for i in range(2000))
    headers = {"Authorization": f"Bearer {server.api_key}"}
    form = {"purpose": "fine-tune", "file_name": "r.jsonl", "file_type": "jsonl",
            "checksum": hashlib.sha256(body).hexdigest()}
    created = httpx.post(f"{server.base_url}/v1/files", data=form, headers=headers)
    url, file_id = created.headers["location"], created.headers["x-together-file-id"]
    sending = threading.Event()

    def slow() -> Iterator[bytes]:
        yield body[:1000]
        sending.set()
        time.sleep(30)  # the server dies while waiting for the rest
        yield body[1000:]

    def put() -> None:
        with contextlib.suppress(httpx.HTTPError):  # the server dies under it
            httpx.put(url, content=slow(), headers={"Content-Length": str(len(body))}, timeout=60)

    threading.Thread(target=put, daemon=True).start()
    assert sending.wait(30)
    time.sleep(1)  # the server has claimed the upload and is receiving
    server.stop(signal.SIGKILL)
    server.start()
    retry = httpx.put(url, content=body)
    assert retry.status_code == 200, retry.text
    done = httpx.post(f"{server.base_url}/v1/files/{file_id}/preprocess", headers=headers)
    assert done.status_code == 200 and done.json()["bytes"] == len(body)
