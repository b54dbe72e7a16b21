"""Both BlobStores keep the same contract — the local directory and S3 (moto's server on
127.0.0.1) — plus the S3 store's direct uploads: presigned PUTs and parts, and promotion that
refuses an object changed after it was checked."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.backends import S3Server
from tunery.errors import Conflict, InvalidRequest
from tunery.settings import Settings
from tunery.storage import BlobStore, LocalBlobStore, direct_uploads, open_blob_store
from tunery.storage.s3 import S3BlobStore

MiB = 1024 * 1024


@pytest.fixture(params=["local", "s3"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "local":
        yield LocalBlobStore(tmp_path / "blobs")
        return
    s3: S3Server = request.getfixturevalue("moto_server")
    env = s3.env(s3.new_bucket("blobs"), prefix="some/prefix")
    settings = Settings(data_dir=tmp_path / "data", **{k.removeprefix("TUNERY_").lower(): v for k, v in env.items()})
    yield open_blob_store(settings)


@pytest.fixture()
def s3_store(moto_server: S3Server, tmp_path: Path) -> S3BlobStore:
    return S3BlobStore(moto_server.new_bucket("direct"), "p", moto_server.client(), tmp_path / "staging",
                       copy_part_bytes=5 * MiB)


def staged(blobs: BlobStore, data: bytes, name: str = "x") -> Path:
    path = blobs.staging_dir() / name
    path.write_bytes(data)
    return path


def test_put_open_ranges_size_exists_delete(blobs: BlobStore) -> None:
    data = os.urandom(3 * MiB + 17)
    src = staged(blobs, data)
    blobs.put("jobs/ft-1/step-2/model.tar.zst", src)
    assert not src.exists()  # put consumes its source
    key = "jobs/ft-1/step-2/model.tar.zst"
    assert blobs.exists(key) and blobs.size(key) == len(data)
    assert b"".join(blobs.open(key)) == data
    assert b"".join(blobs.open(key, 5, 10)) == data[5:10]
    assert b"".join(blobs.open(key, MiB - 1, 2 * MiB + 1)) == data[MiB - 1:2 * MiB + 1]
    assert b"".join(blobs.open(key, len(data) - 3)) == data[-3:]
    assert b"".join(blobs.open(key, 4, 4)) == b""
    with blobs.local_copy(key) as path:
        assert path.read_bytes() == data
    blobs.delete(key)
    blobs.delete(key)  # deleting a missing key is fine
    assert not blobs.exists(key)


def test_put_replaces_whole(blobs: BlobStore) -> None:
    blobs.put("files/f", staged(blobs, b"first version"))
    blobs.put("files/f", staged(blobs, b"second"))
    assert b"".join(blobs.open("files/f")) == b"second" and blobs.size("files/f") == 6


def test_empty_blob(blobs: BlobStore) -> None:
    blobs.put("files/empty", staged(blobs, b""))
    assert blobs.size("files/empty") == 0 and b"".join(blobs.open("files/empty")) == b""


def test_keys_cannot_escape(blobs: BlobStore) -> None:
    with pytest.raises(ValueError):
        blobs.exists("../outside")


def test_only_s3_offers_direct_uploads(blobs: BlobStore) -> None:
    assert (direct_uploads(blobs) is not None) == isinstance(blobs, S3BlobStore)


def test_a_presigned_put_needs_no_credentials_and_answers_200(s3_store: S3BlobStore) -> None:
    url = s3_store.presigned_put("uploads/file-1", ttl_s=60)
    assert url.startswith("http://127.0.0.1:")
    response = httpx.put(url, content=b'{"text": "hi"}\n')  # what the SDK sends: no auth, no type
    assert response.status_code == 200
    etag, size = s3_store.head("uploads/file-1") or ("", 0)
    assert size == 15 and etag
    s3_store.promote("uploads/file-1", "files/file-1", etag)
    assert not s3_store.exists("uploads/file-1")
    assert b"".join(s3_store.open("files/file-1")) == b'{"text": "hi"}\n'


def test_promote_refuses_an_object_changed_after_it_was_checked(s3_store: S3BlobStore) -> None:
    url = s3_store.presigned_put("uploads/f", ttl_s=60)
    assert httpx.put(url, content=b"checked bytes").status_code == 200
    etag, _ = s3_store.head("uploads/f") or ("", 0)
    assert httpx.put(url, content=b"swapped bytes").status_code == 200  # the URL is still valid
    with pytest.raises(Conflict, match="changed"):
        s3_store.promote("uploads/f", "files/f", etag)
    assert not s3_store.exists("files/f")


def test_multipart_through_presigned_part_urls(s3_store: S3BlobStore) -> None:
    parts = [os.urandom(5 * MiB), os.urandom(5 * MiB), b"tail"]
    upload_id = s3_store.start_multipart("uploads/big")
    etags = []
    for n, data in enumerate(parts, start=1):
        response = httpx.put(s3_store.presigned_part("uploads/big", upload_id, n, ttl_s=60), content=data)
        assert response.status_code == 200 and response.headers["ETag"]
        etags.append((n, response.headers["ETag"].strip('"')))  # the SDK strips the quotes
    with pytest.raises(InvalidRequest, match="refused"):
        s3_store.complete_multipart("uploads/big", upload_id, [(1, etags[0][1]), (2, "0" * 32), etags[2]])
    s3_store.complete_multipart("uploads/big", upload_id, etags)
    whole = b"".join(parts)
    etag, size = s3_store.head("uploads/big") or ("", 0)
    assert size == len(whole)
    # Big enough to be copied part by part (copy_part_bytes is 5 MiB here).
    s3_store.promote("uploads/big", "files/big", etag)
    assert hashlib.sha256(b"".join(s3_store.open("files/big"))).hexdigest() == hashlib.sha256(whole).hexdigest()


def test_abort_multipart_is_idempotent(s3_store: S3BlobStore) -> None:
    def open_uploads() -> list[str]:
        listed = s3_store.client.list_multipart_uploads(Bucket=s3_store.bucket).get("Uploads", [])
        return [u["UploadId"] for u in listed]

    upload_id = s3_store.start_multipart("uploads/x")
    part = s3_store.presigned_part("uploads/x", upload_id, 1, ttl_s=60)
    assert httpx.put(part, content=b"part one").status_code == 200
    assert upload_id in open_uploads()
    s3_store.abort_multipart("uploads/x", upload_id)
    assert upload_id not in open_uploads()
    s3_store.abort_multipart("uploads/x", upload_id)  # again: nothing left to remove, and no error
    assert upload_id not in open_uploads() and not s3_store.exists("uploads/x")
    # (Completing a finished upload is NoSuchUpload on S3, mapped to Conflict; moto answers 500, as it
    # does for a part sent to an aborted upload.)
