"""The Files API through the official `together` SDK against a live `tunery serve`.

Valid files of every dataset format round-trip byte for byte; invalid ones are a 400 naming the
line and stay listed as INVALID_FORMAT; multipart, the one-request upload, Range reads, restarts,
duplicates, deletes blocked by jobs and per-user isolation behave as the contract says.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import together
from sqlalchemy import select
from sqlalchemy.orm import Session
from together import Together
from together.lib.resources.files import FileAlreadyExistsError

from tests.conftest import LiveServer
from tests.job_rows import job_row, job_spec
from tunery.store.db import Database
from tunery.store.models import Job, User

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}}]

VALID: dict[str, list[dict[str, Any]]] = {
    "general": [{"text": f"Once upon a time there were {i} bears."} for i in range(5)],
    "conversation": [
        {"messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!", "weight": 0},
            {"role": "user", "content": "How are you?"},
            {"role": "assistant", "content": "Fine.", "weight": 1},
        ]},
        {"tools": TOOLS, "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function", "function": {
                "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"},
            {"role": "assistant", "content": "It is 18C and sunny in Paris."},
        ]},
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
    ],
    "instruction": [{"prompt": f"{i}+{i}=", "completion": str(2 * i)} for i in range(5)],
    "preference": [
        {"input": {"messages": [{"role": "user", "content": f"Say hi {i}"}]},
         "preferred_output": [{"role": "assistant", "content": "Hello!"}],
         "non_preferred_output": [{"role": "assistant", "content": "Go away."}]}
        for i in range(3)
    ],
}

# (rows or raw lines, the line the message must name)
INVALID: dict[str, tuple[list[Any], str]] = {
    "general": ([{"text": "ok"}, {"text": "ok"}, {"text": 5}], "line 3:"),
    "conversation": ([
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
        {"messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]},
    ], "line 2: messages[1].role must be one of"),
    "instruction": ([{"prompt": "a", "completion": "b"}] * 3 + [{"prompt": "a", "completion": 7}], "line 4:"),
    "preference": ([VALID["preference"][0], {
        "input": {"messages": [{"role": "user", "content": "x"}]},
        "preferred_output": [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}],
        "non_preferred_output": [{"role": "assistant", "content": "c"}],
    }], "line 2:"),
    "not-json": (['{"text": "ok"}', '{"text": "ok"}', '{"text": "broken'], "line 3:"),
    "mixed-formats": ([{"text": "ok"}, {"prompt": "a", "completion": "b"}], "line 2:"),
}


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def write_parquet(path: Path, labels: list[list[int]] | None = None) -> Path:
    ids = [[1, 2, 3, 4], [5, 6, 7], [8, 9, 10, 11, 12]]
    table = {"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids],
             "labels": labels or [[-100, 2, 3, 4], [-100, -100, 7], [8, 9, 10, 11, 12]]}
    pq.write_table(pa.table(table), path)
    return path


def auth(server: LiveServer, key: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key or server.api_key}"}


def listed(client: Together, file_id: str) -> Any:
    matches = [f for f in client.files.list().data if f.id == file_id]
    assert len(matches) == 1, f"{file_id} not listed exactly once"
    return matches[0]


@pytest.mark.parametrize("fmt", sorted(VALID))
def test_valid_jsonl_of_each_format_round_trips(
    fmt: str, together_client: Together, live_server: LiveServer, tmp_path: Path,
) -> None:
    path = write_jsonl(tmp_path / f"{fmt}.jsonl", VALID[fmt])
    f = together_client.files.upload(path, purpose="fine-tune")
    assert f.id.startswith("file-") and f.object == "file"
    assert f.processing_status == "COMPLETED" and f.bytes == path.stat().st_size
    assert f.filename == path.name and f.file_type == "jsonl" and isinstance(f.created_at, int)

    got = together_client.files.retrieve(f.id)
    report = got.validation_report
    assert report is not None and report.valid and report.nlines == len(VALID[fmt])
    assert report.dataset_format == fmt.upper()
    if fmt == "conversation":
        assert report.dataset_has_tools and report.dataset_has_message_weights
    assert listed(together_client, f.id).processing_status == "COMPLETED"
    assert together_client.files.content(f.id).read() == path.read_bytes()

    deleted = together_client.files.delete(f.id)
    assert deleted.id == f.id and deleted.deleted is True
    with pytest.raises(together.NotFoundError):
        together_client.files.retrieve(f.id)
    assert httpx.get(f"{live_server.base_url}/v1/files/{f.id}/content", headers=auth(live_server)).status_code == 404


def test_pretokenized_parquet_round_trips(together_client: Together, tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "tokens.parquet")
    f = together_client.files.upload(path)
    assert f.processing_status == "COMPLETED" and f.file_type == "parquet"
    report = together_client.files.retrieve(f.id).validation_report
    assert report is not None and report.dataset_format == "PRETOKENIZED" and report.nlines == 3
    assert together_client.files.content(f.id).read() == path.read_bytes()


@pytest.mark.parametrize("kind", sorted(INVALID))
def test_invalid_jsonl_is_400_naming_the_line_and_stays_listed(
    kind: str, together_client: Together, tmp_path: Path,
) -> None:
    rows, expected = INVALID[kind]
    path = write_jsonl(tmp_path / f"bad-{kind}.jsonl", rows)
    with pytest.raises(together.BadRequestError) as caught:
        together_client.files.upload(path, check=False)
    assert caught.value.status_code == 400
    body = caught.value.body
    assert isinstance(body, dict)
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"].startswith(expected), body
    assert body["error"]["type"] == "invalid_request_error"

    f = listed(together_client, body["file_id"])
    assert f.processing_status == "INVALID_FORMAT"
    assert f.validation_report is not None and not f.validation_report.valid
    assert f.validation_report.error_type == "INVALID_FORMAT"
    assert (f.validation_report.error or "").startswith(expected)


def test_invalid_parquet_names_the_row(together_client: Together, tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "bad.parquet", labels=[[-100, 2, 3, 4], [-100, -5, 7], [8, 9, 10, 11, 12]])
    with pytest.raises(together.BadRequestError) as caught:
        together_client.files.upload(path, check=False)
    message = caught.value.body["error"]["message"]  # type: ignore[index]
    assert message.startswith("row 2:"), message
    assert listed(together_client, caught.value.body["file_id"]).processing_status == "INVALID_FORMAT"  # type: ignore[index]


def test_csv_for_fine_tuning_is_rejected_but_eval_csv_is_accepted(together_client: Together, tmp_path: Path) -> None:
    path = tmp_path / "eval.csv"
    path.write_text("prompt,answer\nhi,hello\n2+2,4\n")
    f = together_client.files.upload(path, purpose="eval")
    assert f.processing_status == "COMPLETED" and f.file_type == "csv" and f.purpose == "eval"
    with pytest.raises(together.BadRequestError) as caught:
        together_client.files.upload(path, purpose="fine-tune", check=False)
    assert "CSV" in caught.value.body["error"]["message"]  # type: ignore[index]


def test_preprocess_is_idempotent_and_needs_the_bytes_first(live_server: LiveServer, tmp_path: Path) -> None:
    base = live_server.base_url
    form = {"purpose": "fine-tune", "file_name": "train.jsonl", "file_type": "jsonl"}
    r = httpx.post(f"{base}/v1/files", data=form, headers=auth(live_server))
    assert r.status_code == 302
    file_id = r.headers["x-together-file-id"]
    assert r.headers["location"].startswith(base + "/")

    early = httpx.post(f"{base}/v1/files/{file_id}/preprocess", headers=auth(live_server))
    assert early.status_code == 409 and "no content yet" in early.json()["error"]["message"]
    assert httpx.get(f"{base}/v1/files/{file_id}", headers=auth(live_server)).json()["processing_status"] == "PENDING"

    body = write_jsonl(tmp_path / "t.jsonl", VALID["instruction"]).read_bytes()
    assert httpx.put(r.headers["location"], content=body).status_code == 200
    first = httpx.post(f"{base}/v1/files/{file_id}/preprocess", headers=auth(live_server))
    second = httpx.post(f"{base}/v1/files/{file_id}/preprocess", headers=auth(live_server))
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert first.json()["FileType"] == "jsonl" and first.json()["line_count"] == len(VALID["instruction"])


def test_range_reads(together_client: Together, live_server: LiveServer, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "range.jsonl", VALID["general"])
    data = path.read_bytes()
    f = together_client.files.upload(path)
    url = f"{live_server.base_url}/v1/files/{f.id}/content"
    # files.content sends Accept: application/binary; the CLI download sends application/json
    whole = httpx.get(url, headers={**auth(live_server), "Accept": "application/json"})
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["accept-ranges"] == "bytes" and int(whole.headers["content-length"]) == len(data)

    part = httpx.get(url, headers={**auth(live_server), "Range": "bytes=5-14"})
    assert part.status_code == 206 and part.content == data[5:15]
    assert part.headers["content-range"] == f"bytes 5-14/{len(data)}"
    assert part.headers["content-length"] == "10"
    tail = httpx.get(url, headers={**auth(live_server), "Range": "bytes=-7"})
    assert tail.status_code == 206 and tail.content == data[-7:]
    rest = httpx.get(url, headers={**auth(live_server), "Range": f"bytes={len(data) - 3}-"})
    assert rest.status_code == 206 and rest.content == data[-3:]

    beyond = httpx.get(url, headers={**auth(live_server), "Range": f"bytes={len(data)}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(data)}"
    assert beyond.json()["error"]["type"] == "invalid_request_error"


def test_same_file_twice_is_409_with_file_id_and_no_retry(
    together_client: Together, live_server: LiveServer, tmp_path: Path,
) -> None:
    path = write_jsonl(tmp_path / "dup.jsonl", VALID["general"][:2])
    first = together_client.files.upload(path)
    retrying = Together(base_url=live_server.base_url, api_key=live_server.api_key, max_retries=2)
    t0 = time.monotonic()
    again = retrying.files.upload(path)  # 409 → the SDK fetches and returns the existing file
    assert again.id == first.id and time.monotonic() - t0 < 2.5, "x-should-retry: false was not honoured"
    with pytest.raises(FileAlreadyExistsError) as caught:
        together_client.files.upload(path, raise_if_already_exists=True)
    assert caught.value.file_id == first.id

    form = {"purpose": "fine-tune", "file_name": "dup.jsonl", "file_type": "jsonl",
            "checksum": hashlib.sha256(path.read_bytes()).hexdigest()}
    r = httpx.post(f"{live_server.base_url}/v1/files", data=form, headers=auth(live_server))
    assert r.status_code == 409 and r.headers["x-should-retry"] == "false"
    assert r.json()["file_id"] == first.id and r.json()["error"]["type"] == "conflict_error"
    # a different name is a different file
    other = together_client.files.upload(write_jsonl(tmp_path / "dup2.jsonl", VALID["general"][:2]))
    assert other.id != first.id


def test_multipart_upload_through_the_sdk(
    together_client: Together, live_server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import together.lib.resources.files as sdk_files

    # Force the >5 GiB path on a small file, with ~300-byte parts so there are several.
    monkeypatch.setattr(sdk_files, "MULTIPART_THRESHOLD_GB", 0.0)
    monkeypatch.setattr(sdk_files, "TARGET_PART_SIZE_MB", 300 / 2**20)
    monkeypatch.setattr(sdk_files, "MIN_PART_SIZE_MB", 100 / 2**20)
    rows = [{"prompt": f"question number {i}?", "completion": f"answer number {i}."} for i in range(40)]
    path = write_jsonl(tmp_path / "multi.jsonl", rows)
    assert sdk_files._calculate_parts(path.stat().st_size)[1] > 3

    f = together_client.files.upload(path)
    assert f.processing_status == "COMPLETED" and f.bytes == path.stat().st_size
    assert together_client.files.content(f.id).read() == path.read_bytes()
    assert together_client.files.retrieve(f.id).validation_report.nlines == 40  # type: ignore[union-attr]
    assert not list((live_server.data_dir / "blobs" / ".staging" / "parts").glob("*/*")), "parts left behind"

    # An invalid dataset: complete answers 400 naming the line; the SDK then calls abort, which
    # must leave the (uploaded, invalid) file listed.
    bad = write_jsonl(tmp_path / "multi-bad.jsonl", rows[:30] + [{"prompt": "x"}] + rows[30:])
    with pytest.raises(together.APIStatusError) as caught:
        together_client.files.upload(bad, check=False)
    assert "line 31:" in str(caught.value)
    invalid = [x for x in together_client.files.list().data if x.filename == "multi-bad.jsonl"]
    assert len(invalid) == 1 and invalid[0].processing_status == "INVALID_FORMAT"


def test_multipart_abort_removes_parts_and_the_file(live_server: LiveServer) -> None:
    base, headers = live_server.base_url, auth(live_server)
    init = httpx.post(f"{base}/v1/files/multipart/initiate", headers=headers, json={
        "file_name": "big.jsonl", "file_size": 20, "num_parts": 2, "purpose": "fine-tune", "file_type": "jsonl"})
    assert init.status_code == 200
    info = init.json()
    assert [p["PartNumber"] for p in info["parts"]] == [1, 2]
    put = httpx.put(info["parts"][0]["URL"], content=b'{"text": "a"}\n')
    assert put.status_code == 200 and put.headers["etag"].strip('"')
    # completing with a missing part is a clear 400, and the upload stays open
    done = httpx.post(f"{base}/v1/files/multipart/complete", headers=headers, json={
        "upload_id": info["upload_id"], "file_id": info["file_id"],
        "parts": [{"part_number": 1, "etag": put.headers["etag"]}, {"part_number": 2, "etag": "x"}]})
    assert done.status_code == 400 and "part 2" in done.json()["error"]["message"]

    abort = httpx.post(f"{base}/v1/files/multipart/abort", headers=headers,
                       json={"upload_id": info["upload_id"], "file_id": info["file_id"]})
    assert abort.status_code == 200
    assert httpx.get(f"{base}/v1/files/{info['file_id']}", headers=headers).status_code == 404
    assert not (live_server.data_dir / "blobs" / ".staging" / "parts" / info["upload_id"]).exists()
    late = httpx.put(info["parts"][1]["URL"], content=b'{"text": "b"}\n')
    assert late.status_code in (403, 404)


def test_one_request_upload_for_curl_users(live_server: LiveServer, together_client: Together, tmp_path: Path) -> None:
    url, headers = f"{live_server.base_url}/v1/files/upload", auth(live_server)
    data = write_jsonl(tmp_path / "curl.jsonl", VALID["conversation"]).read_bytes()
    r = httpx.post(url, headers=headers, files={"file": ("curl.jsonl", data)}, data={"purpose": "fine-tune"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["processing_status"] == "COMPLETED" and body["filename"] == "curl.jsonl"
    assert body["FileType"] == "jsonl" and body["bytes"] == len(data)
    assert together_client.files.content(body["id"]).read() == data

    bad = write_jsonl(tmp_path / "b.jsonl", INVALID["general"][0]).read_bytes()
    r = httpx.post(url, headers=headers, files={"file": ("x.bin", bad)},
                   data={"purpose": "fine-tune", "file_name": "named.jsonl", "file_type": "jsonl"})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("line 3:")
    assert listed(together_client, r.json()["file_id"]).filename == "named.jsonl"

    for form, files in (({"purpose": "fine-tune"}, None), ({"purpose": "nope"}, {"file": ("a.jsonl", data)})):
        r = httpx.post(url, headers=headers, data=form, files=files)
        assert r.status_code in (400, 422) and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_delete_is_blocked_while_an_unfinished_job_uses_the_file(
    together_client: Together, live_server: LiveServer, tmp_path: Path,
) -> None:
    f = together_client.files.upload(write_jsonl(tmp_path / "job.jsonl", VALID["instruction"]))
    db = Database(live_server.database_url)
    with db.session() as s:
        s.add(job_row("ft-files-test", _default_user_id(s), "running",
                      job_spec(training_file="file-other", validation_file=f.id)))
    with pytest.raises(together.ConflictError) as caught:
        together_client.files.delete(f.id)
    assert "ft-files-test" in caught.value.body["error"]["message"]  # type: ignore[index]
    with db.session() as s:
        s.get(Job, "ft-files-test").status = "completed"  # type: ignore[union-attr]
    assert together_client.files.delete(f.id).deleted
    db.dispose()


def _default_user_id(s: Session) -> str:
    user_id = s.scalar(select(User.id).where(User.name == "default"))
    assert user_id is not None
    return user_id


def test_users_cannot_see_each_others_files(
    together_client: Together, live_server: LiveServer, tmp_path: Path,
) -> None:
    f = together_client.files.upload(write_jsonl(tmp_path / "mine.jsonl", VALID["general"]))
    bob = Together(base_url=live_server.base_url, api_key=live_server.create_key("bob"), max_retries=0)
    assert f.id not in [x.id for x in bob.files.list().data]
    for call in (bob.files.retrieve, bob.files.delete, lambda i: bob.files.content(i).read()):
        with pytest.raises(together.NotFoundError):
            call(f.id)
    pre = httpx.post(f"{live_server.base_url}/v1/files/{f.id}/preprocess",
                     headers={"Authorization": f"Bearer {bob.api_key}"})
    assert pre.status_code == 404 and pre.json()["error"]["type"] == "not_found_error"
    # and bob's own upload of the same bytes is his own file, not a 409 pointing at alice's
    mine = bob.files.upload(write_jsonl(tmp_path / "mine.jsonl", VALID["general"]))
    assert mine.id != f.id and together_client.files.retrieve(f.id).id == f.id
    # unauthenticated: 401
    assert httpx.get(f"{live_server.base_url}/v1/files").status_code == 401


def test_files_and_statuses_survive_a_restart(
    together_client: Together, live_server: LiveServer, tmp_path: Path,
) -> None:
    good = write_jsonl(tmp_path / "keep.jsonl", VALID["instruction"])
    f = together_client.files.upload(good)
    with pytest.raises(together.BadRequestError) as caught:
        together_client.files.upload(write_jsonl(tmp_path / "keepbad.jsonl", INVALID["general"][0]), check=False)
    bad_id = caught.value.body["file_id"]  # type: ignore[index]
    before = {x.id: x for x in together_client.files.list().data}

    live_server.restart()

    after = {x.id: x for x in together_client.files.list().data}
    assert after.keys() == before.keys()
    assert [x.id for x in together_client.files.list().data] == list(before)  # same order: newest first
    for file_id, item in before.items():
        assert after[file_id].model_dump() == item.model_dump()
    assert after[f.id].processing_status == "COMPLETED" and after[bad_id].processing_status == "INVALID_FORMAT"
    assert together_client.files.content(f.id).read() == good.read_bytes()
