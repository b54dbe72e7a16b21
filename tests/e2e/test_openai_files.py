"""OpenAI's Files and Uploads through the official `openai` SDK against a live server (no worker):
files.create answers OpenAI's file object, an invalid dataset is kept with status "error" naming the
line, lists page like OpenAI's, Uploads assemble parts in the given order and check size and MD5, and
errors raise the SDK's usual exception classes. The `together` SDK sees the same files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import openai
import pytest

from tests.conftest import LiveServer, sdk_client
from tests.sample_data import conversation_file, write_jsonl


@pytest.fixture(scope="module")
def client(live_server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_server.base_url}/v1", api_key=live_server.api_key, max_retries=0)


def test_files_create_list_retrieve_content_delete(client: openai.OpenAI, live_server: LiveServer,
                                                   tmp_path: Path) -> None:
    path = conversation_file(tmp_path / "train.jsonl", n=12)
    created = [client.files.create(file=path, purpose="fine-tune") for _ in range(3)]
    f = created[0]
    assert (f.object, f.status, f.purpose, f.filename, f.bytes) == (
        "file", "processed", "fine-tune", "train.jsonl", path.stat().st_size)
    assert client.files.retrieve(f.id).status == "processed"
    assert client.files.content(f.id).content == path.read_bytes()

    page = client.files.list(limit=2, purpose="fine-tune")
    assert [x.id for x in page.data] == [created[2].id, created[1].id] and page.has_more
    assert [x.id for x in client.files.list(limit=2, after=created[1].id).data][0] == f.id
    assert [x.id for x in client.files.list(order="asc", purpose="fine-tune")][:3] == [c.id for c in created]
    assert client.files.list(purpose="eval").data == []

    together = sdk_client(live_server)
    assert f.id in {x.id for x in together.files.list().data}
    assert together.files.retrieve(f.id).processing_status == "COMPLETED"

    gone = client.files.delete(f.id)
    assert (gone.id, gone.deleted) == (f.id, True)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)


def test_an_invalid_dataset_is_kept_with_its_error(client: openai.OpenAI, tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
            {"messages": [{"role": "user", "content": "no answer"}]}]
    f = client.files.create(file=write_jsonl(tmp_path / "bad.jsonl", rows).open("rb"), purpose="fine-tune")
    assert f.status == "error"
    assert f.status_details is not None and f.status_details.startswith("line 2: messages must contain")
    assert client.files.retrieve(f.id).status_details == f.status_details


def test_request_errors_raise_the_sdks_exception_classes(client: openai.OpenAI, tmp_path: Path) -> None:
    path = conversation_file(tmp_path / "t.jsonl", n=2)
    with pytest.raises(openai.BadRequestError) as bad:
        client.files.create(file=path, purpose="assistants")
    assert bad.value.param == "purpose" and bad.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as expiring:
        client.files.create(file=path, purpose="fine-tune", expires_after={"anchor": "created_at", "seconds": 3600})
    assert expiring.value.param == "expires_after"
    with pytest.raises(openai.NotFoundError):
        client.files.content("file-missing")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=client.base_url, api_key="wrong", max_retries=0).files.list()


def test_uploads_in_parts_become_one_validated_file(client: openai.OpenAI, tmp_path: Path) -> None:
    path = conversation_file(tmp_path / "big.jsonl", n=20)
    data = path.read_bytes()
    upload = client.uploads.upload_file_chunked(file=path, mime_type="text/jsonl", purpose="fine-tune",
                                                part_size=len(data) // 3 + 1, md5=hashlib.md5(data).hexdigest())
    assert upload.status == "completed" and upload.file is not None
    assert (upload.file.status, upload.file.bytes, upload.filename) == ("processed", len(data), "big.jsonl")
    assert client.files.content(upload.file.id).content == data

    # Parts may arrive in any order: complete names the order.
    up = client.uploads.create(bytes=len(data), filename="any.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    half = len(data) // 2
    second = client.uploads.parts.create(upload_id=up.id, data=data[half:])
    first = client.uploads.parts.create(upload_id=up.id, data=data[:half])
    assert first.object == "upload.part" and first.upload_id == up.id
    with pytest.raises(openai.BadRequestError) as wrong_md5:
        client.uploads.complete(upload_id=up.id, part_ids=[first.id, second.id], md5="0" * 32)
    assert wrong_md5.value.param == "md5"
    with pytest.raises(openai.BadRequestError) as short:
        client.uploads.complete(upload_id=up.id, part_ids=[first.id])
    assert "add up to" in short.value.message
    done = client.uploads.complete(upload_id=up.id, part_ids=[first.id, second.id])
    assert done.file is not None and client.files.content(done.file.id).content == data

    with pytest.raises(openai.BadRequestError) as too_big:
        client.uploads.parts.create(upload_id=client.uploads.create(
            bytes=3, filename="x.jsonl", mime_type="text/jsonl", purpose="fine-tune").id, data=b"four")
    assert "more than the 3" in too_big.value.message

    dropped = client.uploads.create(bytes=4, filename="x.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    client.uploads.parts.create(upload_id=dropped.id, data=b"abcd")
    assert client.uploads.cancel(dropped.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        client.uploads.parts.create(upload_id=dropped.id, data=b"abcd")
    with pytest.raises(openai.NotFoundError):
        client.uploads.cancel("upload_missing")


def test_openai_routes_never_5xx_and_errors_have_openais_shape(live_server: LiveServer) -> None:
    from tests.fuzzing import fuzz_routes

    fuzz_routes(live_server, r"^/v1/(uploads|fine_tuning)", min_operations=12, examples=8)
