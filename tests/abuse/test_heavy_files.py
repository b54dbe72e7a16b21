"""Findings 2 and 3: a 674-byte Parquet file (one row of 200 million dictionary-encoded zeros) and a
248 MB single-line JSONL file were decoded inside the API process (+4 GB and +2.8 GB; /healthz
took 5.5 s meanwhile). Now validation runs in bounded child processes and both are refused
before they are decoded; the API process's memory stays within 64 MiB of where it was.

Scaled: a row of 1.1 million zeros (over the 1,048,576 tokens a row may hold) and a 48 MB line on
a server whose validation children may use 256 MiB (so one line may take 128 MiB to decode)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import together

from tests.abuse.conftest import Tenant, rss_bytes, shared_server
from tests.conftest import LiveServer
from tunery.datasets.validate import MAX_LINE_ITEMS, MAX_ROW_TOKENS

pytestmark = pytest.mark.slow  # live servers: a minute to start on a loaded machine
API_GROWTH_BOUND = 64 * 1024 * 1024
CHILD_MEMORY = 256 * 1024 * 1024


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, Tenant, Tenant]]:
    server, alice, bob = shared_server(tmp_path_factory.mktemp("heavy"), TUNERY_WORKERS="0",
                                       TUNERY_TASK_MEMORY_BYTES=str(CHILD_MEMORY))
    yield server, alice, bob
    server.stop()


def refused(tenants: tuple[LiveServer, Tenant, Tenant], path: Path) -> str:
    """Alice uploads ``path``: a 400 whose message is returned, the file listed INVALID_FORMAT, the
    API process's memory within the bound meanwhile, and bob served as ever."""
    server, alice, bob = tenants
    before = rss_bytes(server.proc.pid)  # type: ignore[union-attr]
    with pytest.raises(together.BadRequestError) as caught:
        alice.sdk.files.upload(path, check=False)  # type: ignore[attr-defined]
    body = caught.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "invalid_request_error", body
    listed = alice.sdk.files.retrieve(body["file_id"])  # type: ignore[attr-defined]
    assert listed.processing_status == "INVALID_FORMAT"  # kept, and explained
    assert rss_bytes(server.proc.pid) - before < API_GROWTH_BOUND  # type: ignore[union-attr]
    assert bob.http.get("/v1/files").status_code == 200
    return str(body["error"]["message"])


def test_a_tiny_parquet_file_that_decodes_huge_is_refused_from_its_metadata(
    tenants: tuple[LiveServer, Tenant, Tenant], tmp_path: Path,
) -> None:
    path = tmp_path / "zeros.parquet"
    zeros = pa.array([[0] * (MAX_ROW_TOKENS + 51_424)], type=pa.list_(pa.int64()))
    pq.write_table(pa.table({"input_ids": zeros}), path, use_dictionary=True, compression="zstd")
    assert path.stat().st_size < 4096
    message = refused(tenants, path)
    assert message.startswith("row 1:") and "refused before decoding" in message, message
    assert f"at most {MAX_ROW_TOKENS} tokens" in message


def test_a_huge_single_line_is_refused_before_it_is_decoded(
    tenants: tuple[LiveServer, Tenant, Tenant], tmp_path: Path,
) -> None:
    path = tmp_path / "one-line.jsonl"
    with open(path, "w") as f:  # valid JSON, a valid sample: only its size is the problem
        f.write('{"text": "' + "a" * (48 * 1024 * 1024) + '"}\n')
    message = refused(tenants, path)
    assert message.startswith("line 1: decoding the line") and "refused before decoding" in message, message
    assert f"more than the {CHILD_MEMORY // 2} one line may use" in message


def test_a_line_with_millions_of_values_is_refused_before_it_is_decoded(
    tenants: tuple[LiveServer, Tenant, Tenant], tmp_path: Path,
) -> None:
    path = tmp_path / "numbers.jsonl"
    path.write_text('{"text": "x", "n": [' + "0," * MAX_LINE_ITEMS + "0]}\n")
    message = refused(tenants, path)
    assert message.startswith("line 1: the line holds up to") and f"at most {MAX_LINE_ITEMS}" in message, message
