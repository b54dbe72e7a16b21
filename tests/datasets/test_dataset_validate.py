"""Streaming validation of whole files: JSONL, Parquet (pre-tokenized) and CSV (eval only)."""

from __future__ import annotations

import io
import json
import tracemalloc
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.sample_images import solid_url
from tunery.datasets import DatasetFormat, ValidationReport, iter_records, validate_stream
from tunery.errors import DatasetInvalid

CONVERSATION = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
INSTRUCTION = {"prompt": "2+2=", "completion": "4"}
GENERAL = {"text": "Once upon a time"}
PREFERENCE = {
    "input": {"messages": [{"role": "user", "content": "hi"}]},
    "preferred_output": [{"role": "assistant", "content": "Hello!"}],
    "non_preferred_output": [{"role": "assistant", "content": "go away"}],
}


def jsonl(*lines: dict[str, Any] | str) -> io.BytesIO:
    """A JSONL stream; a str is written verbatim (for blank or broken lines)."""
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    return io.BytesIO(text.encode())


def validate(*lines: dict[str, Any] | str, purpose: str = "fine-tune") -> ValidationReport:
    return validate_stream(jsonl(*lines), "jsonl", purpose)


def assert_invalid(report: ValidationReport, error: str, line: int | None) -> None:
    assert not report.valid
    assert report.error == error
    assert report.line == line


# --- JSONL: valid files ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "fmt"),
    [
        (GENERAL, DatasetFormat.GENERAL),
        (CONVERSATION, DatasetFormat.CONVERSATION),
        (INSTRUCTION, DatasetFormat.INSTRUCTION),
        (PREFERENCE, DatasetFormat.PREFERENCE),
    ],
)
def test_valid_file_of_each_format(record: dict[str, Any], fmt: DatasetFormat) -> None:
    report = validate(record, record, record)
    assert report == ValidationReport(valid=True, dataset_format=fmt, num_samples=3)


def test_report_json_has_togethers_shape_and_round_trips() -> None:
    weighted = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo", "weight": 1}]}
    report = validate(CONVERSATION, weighted)
    assert report.to_json() == {
        "valid": True,
        "dataset_format": "CONVERSATION",
        "nlines": 2,
        "error": None,
        "error_type": None,
        "line_number": None,
        "dataset_has_message_weights": True,
        "dataset_has_tools": False,
        "dataset_is_multimodal": False,
        "dataset_has_reasoning": False,
        "dataset_has_parallel_tool_calls": False,
    }
    assert ValidationReport.from_json(json.loads(json.dumps(report.to_json()))) == report


def test_invalid_report_json_round_trips() -> None:
    report = validate(CONVERSATION, "[1]")
    data = report.to_json()
    assert data["valid"] is False and data["error_type"] == "INVALID_FORMAT" and data["line_number"] == 2
    assert data["nlines"] == 1 and data["dataset_format"] == "CONVERSATION"
    assert ValidationReport.from_json(data) == report
    assert ValidationReport.from_json({"valid": True}) == ValidationReport(True, None, 0)


def test_features_are_collected_over_the_whole_file() -> None:
    tool_call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    image = {"type": "image_url", "image_url": {"url": solid_url(fmt="JPEG")}}
    records: list[dict[str, Any]] = [
        CONVERSATION,
        {"messages": [{"role": "user", "content": [image]}, {"role": "assistant", "content": "a cat"}]},
        {
            "messages": [
                {"role": "user", "content": "x"},
                {"role": "assistant", "tool_calls": [tool_call]},
                {"role": "tool", "tool_call_id": "c1", "content": "ok"},
                {"role": "assistant", "content": "done", "reasoning": "because"},
            ]
        },
    ]
    report = validate(*records)
    assert report.valid and report.num_samples == 3
    assert (report.is_multimodal, report.has_tools, report.has_reasoning) == (True, True, True)
    assert (report.has_message_weights, report.has_parallel_tool_calls) == (False, False)


def test_blank_lines_are_skipped_but_counted_as_lines() -> None:
    report = validate("", GENERAL, "   ", "\t", GENERAL, "")
    assert report.valid and report.num_samples == 2
    assert_invalid(validate("", GENERAL, "", "", {"text": 1}), "line 5: text must be a string; got 1", 5)


def test_crlf_line_endings_a_bom_and_no_final_newline_are_accepted() -> None:
    data = b"\xef\xbb\xbf" + json.dumps(GENERAL).encode() + b"\r\n\r\n" + json.dumps(GENERAL).encode()
    report = validate_stream(io.BytesIO(data), "jsonl")
    assert report.valid and report.num_samples == 2


def test_non_utf8_bytes_name_the_line_and_byte() -> None:
    data = json.dumps(GENERAL).encode() + b'\n{"text": "caf\xe9"}\n'
    report = validate_stream(io.BytesIO(data), "jsonl")
    assert_invalid(
        report,
        "line 2: byte 14 of the line is not valid UTF-8 (invalid continuation byte); got 0xe9; "
        "the file must be UTF-8 encoded",
        2,
    )


def test_invalid_json_names_the_line_and_column() -> None:
    report = validate(GENERAL, '{"text": "a" "b"}')
    assert_invalid(
        report,
        'line 2: the line is not valid JSON (Expecting \',\' delimiter at column 14); got {"text": "a" "b"}',
        2,
    )


def test_nan_is_not_json() -> None:
    report = validate('{"text": NaN}')
    assert_invalid(report, 'line 1: the line is not valid JSON (NaN is not valid JSON); got {"text": NaN}', 1)


@pytest.mark.parametrize(("line", "got"), [("[1, 2]", "[1, 2]"), ('"text"', '"text"'), ("3", "3"), ("null", "null")])
def test_a_line_that_is_not_an_object(line: str, got: str) -> None:
    assert_invalid(validate(GENERAL, "", line), f"line 3: the line must be a JSON object; got {got}", 3)


def test_mixed_formats_name_both_formats_and_the_first_line() -> None:
    report = validate("", CONVERSATION, CONVERSATION, INSTRUCTION)
    assert_invalid(
        report,
        "line 4: sample is in instruction format but the file started in conversation format (line 2)",
        4,
    )
    assert report.num_samples == 2 and report.dataset_format is DatasetFormat.CONVERSATION


def test_sample_errors_carry_the_physical_line() -> None:
    bad = {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "x"}, {"role": "bot"}]}
    report = validate(CONVERSATION, "", bad)
    assert report.error is not None and report.error.startswith("line 3: messages[1].role must not repeat user")


@pytest.mark.parametrize("lines", [(), ("",), ("", "  ", "")])
def test_a_file_without_samples_is_invalid(lines: tuple[str, ...]) -> None:
    assert_invalid(validate(*lines), "the file has no samples", None)


def test_unknown_file_type_is_reported_not_raised() -> None:
    assert_invalid(
        validate_stream(io.BytesIO(b"x"), "xlsx"),
        'file type "xlsx" is not supported; upload jsonl, parquet or csv',
        None,
    )


def test_eval_jsonl_needs_only_json_objects() -> None:
    report = validate({"question": "q", "answer": "a"}, {"anything": [1]}, purpose="eval")
    assert report == ValidationReport(valid=True, dataset_format=None, num_samples=2)
    assert_invalid(validate({"q": 1}, "[]", purpose="eval"), "line 2: the line must be a JSON object; got []", 2)


# --- iter_records ----------------------------------------------------------------------------


def test_iter_records_yields_physical_line_numbers() -> None:
    assert list(iter_records(jsonl(GENERAL, "", INSTRUCTION))) == [(1, GENERAL), (3, INSTRUCTION)]


def test_iter_records_raises_on_a_bad_line() -> None:
    records = iter_records(jsonl(GENERAL, "not json"))
    assert next(records) == (1, GENERAL)
    with pytest.raises(DatasetInvalid) as caught:
        next(records)
    assert caught.value.line == 2 and caught.value.message.startswith("line 2: the line is not valid JSON")


def test_overlong_lines_are_rejected_without_reading_them_whole() -> None:
    with pytest.raises(DatasetInvalid, match=r"^line 2: the line is longer than 100 bytes$"):
        list(iter_records(jsonl(GENERAL, {"text": "x" * 200}), max_line_bytes=100))


class _GeneratedStream(io.RawIOBase):
    """A JSONL stream of ``count`` samples produced on the fly, never held whole in memory."""

    def __init__(self, count: int) -> None:
        self._line = (json.dumps(CONVERSATION | {"messages": CONVERSATION["messages"] * 5}) + "\n").encode()
        self._left = count
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while len(self._pending) < len(buffer) and self._left:
            self._pending += self._line * min(self._left, 64)
            self._left -= min(self._left, 64)
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def test_validation_memory_stays_constant() -> None:
    count = 8_000  # about 3 MB of JSONL
    stream = io.BufferedReader(_GeneratedStream(count))
    tracemalloc.start()
    try:
        report = validate_stream(stream, "jsonl")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.valid and report.num_samples == count
    assert peak < 500_000  # bytes: a few lines and buffers, not the 3 MB file


class _FailingStream(io.BytesIO):
    def read(self, size: int | None = -1) -> bytes:
        raise ConnectionError("disk gone")

    def readline(self, size: int | None = -1) -> bytes:
        raise ConnectionError("disk gone")


@pytest.mark.parametrize("file_type", ["jsonl", "parquet"])
def test_io_errors_propagate(file_type: str) -> None:
    with pytest.raises(ConnectionError):
        validate_stream(_FailingStream(b"{}" * 500), file_type)


# --- Parquet ---------------------------------------------------------------------------------


def parquet(tmp_path: Path, columns: dict[str, Any], **write: Any) -> io.BufferedReader:
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table(columns), path, **write)
    return path.open("rb")


def test_valid_pretokenized_parquet(tmp_path: Path) -> None:
    columns = {
        "input_ids": [[1, 2, 3], [4, 5]],
        "attention_mask": [[1, 1, 1], [1, 0]],
        "labels": [[-100, 2, 3], [4, -100]],
        "position_ids": [[0, 1, 2], [0, 1]],
    }
    with parquet(tmp_path, columns) as stream:
        report = validate_stream(stream, "parquet")
    assert report == ValidationReport(valid=True, dataset_format=DatasetFormat.PRETOKENIZED, num_samples=2)
    assert report.to_json()["dataset_format"] == "PRETOKENIZED"


def test_parquet_with_large_lists_and_many_row_groups(tmp_path: Path) -> None:
    ids = pa.array([[i, i + 1] for i in range(20_000)], pa.large_list(pa.int32()))
    with parquet(tmp_path, {"input_ids": ids}, row_group_size=3_000) as stream:
        report = validate_stream(stream, "parquet")
    assert report.valid and report.num_samples == 20_000


def test_parquet_error_rows_count_across_row_groups(tmp_path: Path) -> None:
    ids = [[1, 2]] * 20_000 + [[1, -2, 3]]
    with parquet(tmp_path, {"input_ids": ids}, row_group_size=3_000) as stream:
        report = validate_stream(stream, "parquet")
    assert_invalid(report, "row 20001: input_ids[1] must be >= 0; got -2", 20001)


@pytest.mark.parametrize(
    ("columns", "error", "row"),
    [
        (
            {"tokens": [[1]]},
            'unknown column "tokens"; a pretokenized Parquet file has columns input_ids, '
            "attention_mask, labels, position_ids",
            None,
        ),
        (
            {"labels": [[1]]},
            "the file has no input_ids column (columns allowed: input_ids, attention_mask, labels, "
            'position_ids); got columns "labels"',
            None,
        ),
        (
            {"input_ids": [[1.5]]},
            "column input_ids must be a list of integers; got list<element: double>",
            None,
        ),
        ({"input_ids": [1, 2]}, "column input_ids must be a list of integers; got int64", None),
        ({"input_ids": [[1], None]}, "row 2: input_ids must be a list of integers; got null", 2),
        ({"input_ids": [[1], [2, None]]}, "row 2: input_ids[1] must be an integer; got null", 2),
        ({"input_ids": [[1], []]}, "row 2: input_ids must not be empty; got []", 2),
        (
            {"input_ids": [[1, 2], [3, 4]], "labels": [[1, 2], [3]]},
            "row 2: labels must have as many tokens as input_ids (2); got 1",
            2,
        ),
        (
            {"input_ids": [[1, 2]], "attention_mask": [[1, 2]]},
            "row 1: attention_mask[1] must be 0 or 1; got 2",
            1,
        ),
        (
            {"input_ids": [[1, 2]], "labels": [[-100, -5]]},
            "row 1: labels[1] must be a token id >= 0 or -100; got -5",
            1,
        ),
        (
            {"input_ids": [[1, 2]], "position_ids": [[0, -1]]},
            "row 1: position_ids[1] must be >= 0; got -1",
            1,
        ),
        (
            {"input_ids": [[1, 2], [3]], "attention_mask": [[1, 1], None]},
            "row 2: attention_mask must be a list of integers; got null",
            2,
        ),
        ({"input_ids": pa.array([], pa.list_(pa.int64()))}, "the file has no samples", None),
    ],
)
def test_invalid_parquet(tmp_path: Path, columns: dict[str, Any], error: str, row: int | None) -> None:
    with parquet(tmp_path, columns) as stream:
        assert_invalid(validate_stream(stream, "parquet"), error, row)


@pytest.mark.parametrize("data", [b"", b"hello, world", b"PAR1" + b"\0" * 64 + b"PAR1"])
def test_a_file_that_is_not_parquet_is_invalid(data: bytes) -> None:
    report = validate_stream(io.BytesIO(data), "parquet")
    assert not report.valid and report.error is not None
    assert report.error.startswith("the file is not a readable Parquet file (")


def test_parquet_is_not_accepted_for_eval(tmp_path: Path) -> None:
    with parquet(tmp_path, {"input_ids": [[1]]}) as stream:
        report = validate_stream(stream, "parquet", purpose="eval")
    assert_invalid(report, "Parquet files are not supported for eval; upload JSONL or CSV", None)


# --- CSV -------------------------------------------------------------------------------------


def csv_report(text: str | bytes, purpose: str = "eval") -> ValidationReport:
    data = text.encode() if isinstance(text, str) else text
    return validate_stream(io.BytesIO(data), "csv", purpose)


def test_csv_for_eval() -> None:
    report = csv_report('question,answer\n"What is 2+2?",4\n\n"Say ""hi""\non two lines",hi\n')
    assert report == ValidationReport(valid=True, dataset_format=None, num_samples=2)


def test_csv_is_rejected_for_fine_tuning() -> None:
    report = csv_report("text\nhello\n", purpose="fine-tune")
    assert_invalid(report, "CSV files are not supported for fine-tuning; upload JSONL or Parquet", None)


def test_csv_rows_must_match_the_header() -> None:
    report = csv_report('a,b\n1,2\n"x\ny",2\n3,4,5\n')
    assert_invalid(report, "line 5: the row must have 2 columns like the header; got 3 columns", 5)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "the file has no header row"),
        ("\n\n", "the file has no header row"),
        ("a,b\n", "the file has no samples"),
    ],
)
def test_csv_needs_a_header_and_a_row(text: str, error: str) -> None:
    assert_invalid(csv_report(text), error, None)


def test_csv_non_utf8_names_the_line() -> None:
    report = csv_report(b"a,b\n1,2\ncaf\xe9,3\n")
    assert report.line == 3 and report.error is not None and "not valid UTF-8" in report.error
