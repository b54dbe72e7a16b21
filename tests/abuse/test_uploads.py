"""Finding 6 and the stalled body of finding 8: multipart uploads staged 8 MiB against a 1 MiB cap
(each part was bounded by the cap alone), abandoned uploads and parts were never removed, not
even across restarts, and an upload body that stopped sending held its upload URL forever."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.abuse.conftest import Tenant, shared_server
from tests.conftest import LiveServer

pytestmark = pytest.mark.slow  # live servers: a minute to start on a loaded machine
CAP = 1024 * 1024


def staged_bytes(server: LiveServer) -> int:
    staging = server.data_dir / "blobs" / ".staging"
    return sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())


def initiate(tenant: Tenant, file_size: int, num_parts: int, name: str = "big.jsonl") -> dict:
    r = tenant.http.post("/v1/files/multipart/initiate", json={
        "file_name": name, "file_size": file_size, "num_parts": num_parts, "purpose": "fine-tune",
        "file_type": "jsonl"})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, Tenant]]:
    server, alice, _ = shared_server(tmp_path_factory.mktemp("capped"), TUNERY_WORKERS="0",
                                     TUNERY_MAX_UPLOAD_BYTES=str(CAP), TUNERY_BODY_IDLE_TIMEOUT_S="2")
    yield server, alice
    server.stop()


def test_multipart_parts_are_bounded_by_the_announced_size(capped: tuple[LiveServer, Tenant]) -> None:
    server, alice = capped
    upload = initiate(alice, file_size=1000, num_parts=8)
    urls = [p["URL"] for p in upload["parts"]]
    # A part announcing more than the whole file is refused before a byte is read...
    r = httpx.put(urls[0], content=b"x" * CAP)
    assert r.status_code == 413 and "1000" in r.json()["error"]["message"], r.text
    # ...and one that does not announce its length is cut off once it passes the file's size.
    r = httpx.put(urls[1], content=iter([b"x" * 600, b"x" * 600]))
    assert r.status_code == 413, r.text
    # Parts that fit each on their own may not add up to more than the file either.
    assert httpx.put(urls[2], content=b"x" * 600).status_code == 200
    r = httpx.put(urls[3], content=b"x" * 600)
    assert r.status_code == 413 and "would hold 1200 bytes" in r.json()["error"]["message"], r.text
    for url in urls[4:]:
        assert httpx.put(url, content=b"x" * 600).status_code == 413
    assert staged_bytes(server) <= 1000  # 8 MiB before: every part up to the server's cap


def test_a_stalled_body_is_cut_off_and_its_upload_url_works_again(capped: tuple[LiveServer, Tenant]) -> None:
    server, alice = capped
    r = alice.http.post("/v1/files", data={"purpose": "fine-tune", "file_name": "slow.jsonl",
                                           "file_type": "jsonl"}, follow_redirects=False)
    url = r.headers["location"]
    parts = urlsplit(url)
    body = b'{"text": "hello"}\n' * 20
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(f"PUT {parts.path}?{parts.query} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:10])
        answer = sock.recv(4096)  # nothing more is sent: the server must give up on its own
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert httpx.put(url, content=body).status_code == 200  # the claim was released
    assert alice.http.post(f"/v1/files/{r.headers['x-together-file-id']}/preprocess").status_code == 200


def test_abandoned_uploads_are_swept_after_their_ttl_even_across_a_restart(tmp_path: Path) -> None:
    server, alice, _ = shared_server(tmp_path, TUNERY_WORKERS="0", TUNERY_ABANDONED_UPLOAD_TTL_S="3")
    try:
        never_sent = alice.http.post("/v1/files", data={"purpose": "fine-tune", "file_name": "a.jsonl",
                                                        "file_type": "jsonl"}, follow_redirects=False)
        upload = initiate(alice, file_size=2000, num_parts=2)
        assert httpx.put(upload["parts"][0]["URL"], content=b"x" * 1000).status_code == 200
        staging = server.data_dir / "blobs" / ".staging"
        leftover = staging / "upload-killed.part"  # what a killed API process leaves half-received
        leftover.write_bytes(b"x" * 5000)
        os.utime(leftover, (time.time() - 3600, time.time() - 3600))
        server.stop(signal.SIGKILL)  # no graceful shutdown: only the database and the disk remember
        server.start()
        ids = (never_sent.headers["x-together-file-id"], upload["file_id"])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(alice.http.get(f"/v1/files/{i}").status_code != 404 for i in ids):
            time.sleep(0.5)
        assert all(alice.http.get(f"/v1/files/{i}").status_code == 404 for i in ids)
        assert not leftover.exists() and not (staging / "parts" / upload["upload_id"]).exists()
        assert httpx.put(upload["parts"][1]["URL"], content=b"x" * 1000).status_code in (403, 404)
    finally:
        server.stop()
