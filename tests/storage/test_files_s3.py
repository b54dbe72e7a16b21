"""The Files API on S3 (moto's server on 127.0.0.1), through the official `together` SDK: bytes go
straight to the object store through presigned URLs, are checked and moved to their final key at
preprocess (or multipart complete), and stream back from the store."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import together
from together import Together

from tests.backends import S3Server
from tests.conftest import LiveServer, start_server

pytestmark = pytest.mark.slow
PREFIX = "deploy/blobs"


@pytest.fixture(scope="module")
def bucket(moto_server: S3Server) -> str:
    return moto_server.new_bucket("files")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, moto_server: S3Server, bucket: str) -> Iterator[LiveServer]:
    s = start_server(tmp_path_factory.mktemp("s3files"), TUNERY_WORKERS="0", **moto_server.env(bucket, PREFIX))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Together:
    return Together(base_url=server.base_url, api_key=server.api_key, max_retries=0)


def keys(s3: S3Server, bucket: str) -> set[str]:
    listed = s3.client().list_objects_v2(Bucket=bucket, Prefix=PREFIX + "/")
    return {o["Key"].removeprefix(PREFIX + "/") for o in listed.get("Contents", [])}


def stored_copies(s3: S3Server, bucket: str, file_id: str) -> list[str]:
    """The file's final objects (``files/<id>-<token>``): one once recorded, none once deleted."""
    return [k for k in keys(s3, bucket) if k.startswith(f"files/{file_id}-")]


def jsonl(path: Path, n: int, pad: int = 0) -> Path:
    path.write_text("".join(json.dumps({"text": f"sample {i} " + "x" * pad}) + "\n" for i in range(n)))
    return path


def auth(server: LiveServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.api_key}"}


def test_upload_goes_straight_to_s3_and_reads_back(client: Together, server: LiveServer, moto_server: S3Server,
                                                    bucket: str, tmp_path: Path) -> None:
    path = jsonl(tmp_path / "a.jsonl", 20)
    f = client.files.upload(path)
    assert f.processing_status == "COMPLETED" and f.bytes == path.stat().st_size
    assert len(stored_copies(moto_server, bucket, f.id)) == 1
    assert f"uploads/{f.id}" not in keys(moto_server, bucket)  # moved to its final key
    assert client.files.content(f.id).read() == path.read_bytes()
    ranged = httpx.get(f"{server.base_url}/v1/files/{f.id}/content", headers={**auth(server), "Range": "bytes=3-9"})
    assert ranged.status_code == 206 and ranged.content == path.read_bytes()[3:10]
    client.files.delete(f.id)
    assert stored_copies(moto_server, bucket, f.id) == []


def test_location_is_a_presigned_s3_url_and_a_second_put_changes_nothing(
    server: LiveServer, moto_server: S3Server, tmp_path: Path,
) -> None:
    body = jsonl(tmp_path / "b.jsonl", 5).read_bytes()
    form = {"purpose": "fine-tune", "file_name": "b.jsonl", "file_type": "jsonl",
            "checksum": hashlib.sha256(body).hexdigest()}
    created = httpx.post(f"{server.base_url}/v1/files", data=form, headers=auth(server))
    assert created.status_code == 302
    url, file_id = created.headers["location"], created.headers["x-together-file-id"]
    assert url.startswith(moto_server.endpoint) and "X-Amz-Signature=" in url
    # Preprocess before the bytes arrive: 409, and nothing is spoiled.
    early = httpx.post(f"{server.base_url}/v1/files/{file_id}/preprocess", headers=auth(server))
    assert early.status_code == 409 and "no content yet" in early.json()["error"]["message"]
    assert httpx.put(url, content=body).status_code == 200
    done = httpx.post(f"{server.base_url}/v1/files/{file_id}/preprocess", headers=auth(server))
    assert done.status_code == 200 and done.json()["processing_status"] == "COMPLETED"
    # The presigned URL is still valid, but the file's content can no longer change.
    assert httpx.put(url, content=b'{"text": "sneaky"}\n').status_code == 200
    again = httpx.post(f"{server.base_url}/v1/files/{file_id}/preprocess", headers=auth(server))
    assert again.status_code == 200
    content = httpx.get(f"{server.base_url}/v1/files/{file_id}/content", headers=auth(server))
    assert content.content == body


def test_checksum_mismatch_is_400_and_the_url_can_be_used_again(server: LiveServer, tmp_path: Path) -> None:
    body = jsonl(tmp_path / "c.jsonl", 5).read_bytes()
    form = {"purpose": "fine-tune", "file_name": "c.jsonl", "file_type": "jsonl",
            "checksum": hashlib.sha256(body).hexdigest()}
    created = httpx.post(f"{server.base_url}/v1/files", data=form, headers=auth(server))
    url, file_id = created.headers["location"], created.headers["x-together-file-id"]
    assert httpx.put(url, content=body[:-3] + b"}\n\n").status_code == 200
    bad = httpx.post(f"{server.base_url}/v1/files/{file_id}/preprocess", headers=auth(server))
    assert bad.status_code == 400 and "checksum" in bad.json()["error"]["message"]
    assert httpx.put(url, content=body).status_code == 200
    good = httpx.post(f"{server.base_url}/v1/files/{file_id}/preprocess", headers=auth(server))
    assert good.status_code == 200 and good.json()["bytes"] == len(body)


def test_invalid_dataset_is_400_naming_the_line(client: Together, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"nope": 1}\n')
    with pytest.raises(together.APIStatusError) as caught:
        client.files.upload(path, check=False)
    assert "line 2" in str(caught.value)


def test_multipart_upload_maps_onto_s3_multipart(
    client: Together, server: LiveServer, moto_server: S3Server, bucket: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import together.lib.resources.files as sdk_files

    # Force the >5 GiB path on an 11 MiB file: 5 MiB parts (S3's minimum) and a short last one.
    monkeypatch.setattr(sdk_files, "MULTIPART_THRESHOLD_GB", 0.0)
    monkeypatch.setattr(sdk_files, "TARGET_PART_SIZE_MB", 5)
    monkeypatch.setattr(sdk_files, "MIN_PART_SIZE_MB", 5)
    path = jsonl(tmp_path / "big.jsonl", 11 * 1024, pad=1000)
    assert sdk_files._calculate_parts(path.stat().st_size)[1] == 3
    f = client.files.upload(path)
    assert f.processing_status == "COMPLETED" and f.bytes == path.stat().st_size
    assert hashlib.sha256(client.files.content(f.id).read()).hexdigest() == hashlib.sha256(
        path.read_bytes()).hexdigest()
    assert len(stored_copies(moto_server, bucket, f.id)) == 1 and f"uploads/{f.id}" not in keys(moto_server, bucket)


def test_multipart_abort_leaves_nothing(server: LiveServer, moto_server: S3Server, bucket: str) -> None:
    base, headers = server.base_url, auth(server)
    info = httpx.post(f"{base}/v1/files/multipart/initiate", headers=headers, json={
        "file_name": "gone.jsonl", "file_size": 20, "num_parts": 2, "purpose": "fine-tune",
        "file_type": "jsonl"}).json()
    assert all(p["URL"].startswith(moto_server.endpoint) for p in info["parts"])
    put = httpx.put(info["parts"][0]["URL"], content=b'{"text": "a"}\n')
    assert put.status_code == 200 and put.headers["etag"]
    abort = httpx.post(f"{base}/v1/files/multipart/abort", headers=headers,
                       json={"upload_id": info["upload_id"], "file_id": info["file_id"]})
    assert abort.status_code == 200
    assert httpx.get(f"{base}/v1/files/{info['file_id']}", headers=headers).status_code == 404
    uploads = moto_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert not [u for u in uploads if info["file_id"] in u["Key"]]


def test_uploads_survive_an_api_restart(server: LiveServer, tmp_path: Path) -> None:
    body = jsonl(tmp_path / "r.jsonl", 5).read_bytes()
    form = {"purpose": "fine-tune", "file_name": "r.jsonl", "file_type": "jsonl", "checksum": ""}
    created = httpx.post(f"{server.base_url}/v1/files", data=form, headers=auth(server))
    url, file_id = created.headers["location"], created.headers["x-together-file-id"]
    server.restart()  # the bytes go to S3, not to us: a restart in between loses nothing
    assert httpx.put(url, content=body).status_code == 200
    done = httpx.post(f"{server.base_url}/v1/files/{file_id}/preprocess", headers=auth(server))
    assert done.status_code == 200 and done.json()["bytes"] == len(body)


def test_concurrent_preprocess_calls_record_one_copy(server: LiveServer, moto_server: S3Server, bucket: str,
                                                     tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    body = jsonl(tmp_path / "p.jsonl", 50).read_bytes()
    form = {"purpose": "fine-tune", "file_name": "p.jsonl", "file_type": "jsonl",
            "checksum": hashlib.sha256(body).hexdigest()}
    created = httpx.post(f"{server.base_url}/v1/files", data=form, headers=auth(server))
    url, file_id = created.headers["location"], created.headers["x-together-file-id"]
    assert httpx.put(url, content=body).status_code == 200
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: httpx.post(f"{server.base_url}/v1/files/{file_id}/preprocess",
                                                     headers=auth(server), timeout=60), range(4)))
    assert {a.status_code for a in answers} <= {200, 409}, [a.text for a in answers]
    assert any(a.status_code == 200 for a in answers)
    final = httpx.post(f"{server.base_url}/v1/files/{file_id}/preprocess", headers=auth(server))
    assert final.status_code == 200 and final.json()["processing_status"] == "COMPLETED"
    assert len(stored_copies(moto_server, bucket, file_id)) == 1
