"""``tunery serve --api-workers N`` (finding 9: the API used one core): N API processes accept on one
port and answer as one server — a key, an upload and its signed URL made through any of them are good
at all of them — and stopping the server stops every one of them."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from together import Together

from tests.conftest import start_server
from tests.processes import live_children
from tests.sample_data import text_file


def api_processes(server_pid: int) -> set[int]:
    """The server's children that uvicorn spawned to serve requests (its multiprocessing children)."""
    return {pid for pid, argv in live_children(server_pid).items() if any(b"spawn_main" in arg for arg in argv)}


@pytest.mark.slow
def test_api_processes_share_the_port_and_answer_as_one_server(tmp_path: Path) -> None:
    # No embedded worker or engine: this is the API node alone (engines elsewhere, never called here).
    server = start_server(tmp_path, "--api-workers", "2", TUNERY_WORKERS="0",
                          TUNERY_INFERENCE_URLS="http://127.0.0.1:9")
    assert server.proc is not None
    try:
        serving = api_processes(server.proc.pid)
        assert len(serving) == 2, serving
        key = server.api_key  # the key `tunery serve` made for its default user
        path = text_file(tmp_path / "t.jsonl", n=5)
        uploaded = Together(base_url=server.base_url, api_key=key, max_retries=0).files.upload(path)
        for _ in range(6):  # a new connection each time: the kernel gives each to either process
            headers = {"Authorization": f"Bearer {key}", "Connection": "close"}
            meta = httpx.get(f"{server.base_url}/v1/files/{uploaded.id}", headers=headers, timeout=60)
            assert meta.status_code == 200 and meta.json()["bytes"] == path.stat().st_size, meta.text
            content = httpx.get(f"{server.base_url}/v1/files/{uploaded.id}/content", headers=headers, timeout=60)
            assert content.content == path.read_bytes()
            other = httpx.get(f"{server.base_url}/v1/files/{uploaded.id}", timeout=60,
                              headers={"Authorization": "Bearer not-a-key", "Connection": "close"})
            assert other.status_code == 401
    finally:
        server.stop()
    deadline = time.monotonic() + 30  # stop() waited for the server; its children go with it
    while any(Path(f"/proc/{pid}").exists() for pid in serving):
        assert time.monotonic() < deadline, "API processes outlived the server"
        time.sleep(0.2)
