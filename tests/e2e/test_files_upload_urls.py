"""Signed upload URLs: tampered, foreign, expired and reused URLs are 403 and store nothing; two
concurrent PUTs cannot both win; a checksum mismatch is a 400 that can be retried; oversized
uploads are 413 on every upload path."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pytest
import together
from together import Together

from tests.conftest import LiveServer, start_server
from tunery.api.signing import FILE, UploadSigner

BODY = b'{"text": "hello"}\n{"text": "world"}\n'


def auth(server: LiveServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.api_key}"}


def new_upload(server: LiveServer, checksum: str = "", name: str = "t.jsonl") -> tuple[str, str]:
    form = {"purpose": "fine-tune", "file_name": name, "file_type": "jsonl", "checksum": checksum}
    r = httpx.post(f"{server.base_url}/v1/files", data=form, headers=auth(server))
    assert r.status_code == 302, r.text
    return r.headers["x-together-file-id"], r.headers["location"]


def with_token(url: str, token: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query=urlencode({"token": token})))


def token_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["token"][0]


def nothing_stored(server: LiveServer, file_id: str) -> bool:
    r = httpx.get(f"{server.base_url}/v1/files/{file_id}", headers=auth(server))
    blob = server.data_dir / "blobs" / "files" / file_id
    staging = list((server.data_dir / "blobs" / ".staging").glob("upload-*"))
    return r.json()["bytes"] == 0 and r.json()["processing_status"] == "PENDING" and not blob.exists() and not staging


def assert_error(r: httpx.Response, status: int, words: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and words in err["message"], err


def test_tampered_missing_and_foreign_tokens_are_403(live_server: LiveServer) -> None:
    file_id, url = new_upload(live_server)
    other_id, other_url = new_upload(live_server)
    token = token_of(url)
    expires, _, mac = token.partition(".")
    flipped = mac[:-1] + ("A" if mac[-1] != "A" else "B")
    for bad in (
        with_token(url, f"{expires}.{flipped}"),  # signature changed
        with_token(url, f"{int(expires) + 3600}.{mac}"),  # expiry extended
        with_token(url, token_of(other_url)),  # another file's token
        with_token(url, "garbage"), with_token(url, "12.é"),
        urlunsplit(urlsplit(url)._replace(query="")),  # no token at all
    ):
        assert_error(httpx.put(bad, content=BODY), 403, "upload URL")
    assert nothing_stored(live_server, file_id)
    assert httpx.put(url, content=BODY).status_code == 200  # the genuine URL still works
    assert httpx.put(other_url, content=BODY).status_code == 200


def test_a_used_url_is_403_and_the_stored_bytes_do_not_change(live_server: LiveServer) -> None:
    file_id, url = new_upload(live_server)
    assert httpx.put(url, content=BODY).status_code == 200
    assert_error(httpx.put(url, content=b'{"text": "overwrite"}\n'), 403, "already been used")
    content = httpx.get(f"{live_server.base_url}/v1/files/{file_id}/content", headers=auth(live_server))
    assert content.content == BODY


def test_two_concurrent_puts_cannot_both_win(live_server: LiveServer) -> None:
    file_id, url = new_upload(live_server)
    first_started = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield BODY[:10]
        first_started.set()
        time.sleep(1.0)
        yield BODY[10:]

    results: dict[str, int] = {}
    slow = threading.Thread(target=lambda: results.update(slow=httpx.put(url, content=slow_body()).status_code))
    slow.start()
    assert first_started.wait(10)
    time.sleep(0.2)  # let the server claim the upload for the slow PUT
    fast = httpx.put(url, content=b'{"text": "intruder"}\n')
    slow.join()
    assert fast.status_code == 403 and "in progress" in fast.json()["error"]["message"]
    assert results["slow"] == 200
    content = httpx.get(f"{live_server.base_url}/v1/files/{file_id}/content", headers=auth(live_server))
    assert content.content == BODY


def test_checksum_mismatch_is_400_and_the_url_can_be_retried(live_server: LiveServer) -> None:
    file_id, url = new_upload(live_server, checksum=hashlib.sha256(BODY).hexdigest())
    assert_error(httpx.put(url, content=b'{"text": "other"}\n'), 400, "checksum")
    assert nothing_stored(live_server, file_id)
    assert httpx.put(url, content=BODY).status_code == 200


def test_bad_metadata_is_rejected_in_together_shape(live_server: LiveServer) -> None:
    base = {"purpose": "fine-tune", "file_name": "t.jsonl", "file_type": "jsonl"}
    for change in ({"purpose": "pretrain"}, {"file_type": "txt"}, {"file_name": "../etc/passwd"},
                   {"file_name": "a/b.jsonl"}, {"checksum": "not-hex"}, {"checksum": "ab" * 31}):
        r = httpx.post(f"{live_server.base_url}/v1/files", data={**base, **change}, headers=auth(live_server))
        assert r.status_code in (400, 422), (change, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"


def test_expired_urls_are_403(live_server: LiveServer) -> None:
    # A token signed with the server's own key that expired an hour ago (the signer's clock is
    # unit-tested in tests/api/test_files_signing.py).
    file_id, url = new_upload(live_server)
    key = (live_server.data_dir / "secret_key").read_text().strip().encode()
    past = UploadSigner(key, ttl_s=3600, clock=lambda: time.time() - 7200)
    assert_error(httpx.put(with_token(url, past.sign(FILE, file_id)), content=BODY), 403, "expired")
    assert nothing_stored(live_server, file_id)
    assert httpx.put(url, content=BODY).status_code == 200  # the fresh token of the same file works


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("small"), TUNERY_WORKERS="0", TUNERY_MAX_UPLOAD_BYTES="1000")
    yield server
    server.stop()


def test_oversized_uploads_are_413_on_every_path(small_server: LiveServer, tmp_path: Path) -> None:
    big = b'{"text": "' + b"x" * 1500 + b'"}\n'
    file_id, url = new_upload(small_server)
    # Content-Length announces too much: refused before reading
    assert_error(httpx.put(url, content=big), 413, "larger than this server accepts")

    # no Content-Length (chunked): refused while streaming
    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 100):
            yield big[i:i + 100]

    assert_error(httpx.put(url, content=chunks()), 413, "larger than this server accepts")
    assert nothing_stored(small_server, file_id)
    assert httpx.put(url, content=BODY).status_code == 200  # a small enough body is still welcome

    headers = auth(small_server)
    init = httpx.post(f"{small_server.base_url}/v1/files/multipart/initiate", headers=headers, json={
        "file_name": "big.jsonl", "file_size": 5000, "num_parts": 2, "purpose": "fine-tune", "file_type": "jsonl"})
    assert_error(init, 413, "larger")
    one_shot = httpx.post(f"{small_server.base_url}/v1/files/upload", headers=headers,
                          files={"file": ("big.jsonl", big)}, data={"purpose": "fine-tune"})
    assert_error(one_shot, 413, "larger")

    client = Together(base_url=small_server.base_url, api_key=small_server.api_key, max_retries=0)
    path = tmp_path / "big.jsonl"
    path.write_bytes(big)
    with pytest.raises(together.APIStatusError) as caught:
        client.files.upload(path)
    assert "413" in str(caught.value) or "larger" in str(caught.value)
