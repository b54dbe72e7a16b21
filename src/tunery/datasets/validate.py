"""Streaming validation of uploaded dataset files, and the JSONL reader training uses.

``validate_stream`` reads a file once, front to back, in constant memory (one line, or one
Parquet record batch, at a time), and returns a :class:`ValidationReport` with the first problem
it finds. It never raises for bad data, only for I/O errors from the stream. What is checked
depends on the file type and the purpose the file was uploaded for:

    purpose     jsonl                                  parquet                 csv
    fine-tune   one dataset format for every sample    pretokenized columns    rejected
    eval        each line a JSON object                rejected                header + equal widths
    other       each line a JSON object                pretokenized columns    rejected

Line numbers are 1-based physical lines (blank lines count); Parquet problems name "row N"
(1-based). Every error message starts with its line or row, except whole-file ones such as
"the file has no samples".
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, NoReturn

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tunery.datasets.formats import NO_FACTS, DatasetFormat, RecordFacts, check_record, detect_format, show
from tunery.errors import DatasetInvalid

# One sample may hold 10 base64 images of 10 MiB each (~134 MiB); anything much longer is not a
# line of a JSONL file, and reading it whole would defeat the constant-memory promise.
MAX_LINE_BYTES = 256 * 1024 * 1024
# A line may hold at most this many JSON values, counted on the raw bytes before decoding (its
# commas plus one, an upper bound): 248 MB of "0," decodes to gigabytes of Python objects.
MAX_LINE_ITEMS = 4 * 1024 * 1024
# Lines shorter than this cannot come near either limit; they skip the count (validation speed).
_SMALL_LINE = 64 * 1024
# A pre-tokenized row may hold at most this many tokens. Parquet's metadata gives each row group's
# rows and values before anything is decoded, so a row group whose rows average more is refused
# unread (a 674-byte dictionary-encoded file can hold 200 million zeros).
MAX_ROW_TOKENS = 1024 * 1024
# Values decoded at once per Parquet column: record batches are sized to stay under it.
PARQUET_BATCH_VALUES = 16 * 1024 * 1024
PRETOKENIZED_COLUMNS: tuple[str, ...] = ("input_ids", "attention_mask", "labels", "position_ids")
PARQUET_BATCH_ROWS = 8192
IGNORE_INDEX = -100
_SNIPPET_CHARS = 60


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of validating one file; stored as JSON beside the file row.

    On failure ``error`` holds the first problem (already prefixed with ``line N:`` or
    ``row N:``), ``line`` its line or row, ``num_samples`` the samples validated before it and
    ``dataset_format`` the format seen so far (or ``None``).
    """

    valid: bool
    dataset_format: DatasetFormat | None
    num_samples: int
    error: str | None = None
    line: int | None = None
    has_message_weights: bool = False
    has_tools: bool = False
    is_multimodal: bool = False
    has_reasoning: bool = False
    has_parallel_tool_calls: bool = False

    def to_json(self) -> dict[str, Any]:
        """Together's ``validation_report`` object (``dataset_format`` uppercase, e.g. "CONVERSATION")."""
        return {
            "valid": self.valid,
            "dataset_format": self.dataset_format.name if self.dataset_format else None,
            "nlines": self.num_samples,
            "error": self.error,
            "error_type": None if self.valid else "INVALID_FORMAT",
            "line_number": self.line,
            "dataset_has_message_weights": self.has_message_weights,
            "dataset_has_tools": self.has_tools,
            "dataset_is_multimodal": self.is_multimodal,
            "dataset_has_reasoning": self.has_reasoning,
            "dataset_has_parallel_tool_calls": self.has_parallel_tool_calls,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ValidationReport:
        """Rebuild a report from ``to_json`` output; absent feature flags read as false."""
        name = data.get("dataset_format")
        return cls(
            valid=bool(data["valid"]),
            dataset_format=DatasetFormat(name.lower()) if name else None,
            num_samples=int(data.get("nlines") or 0),
            error=data.get("error"),
            line=data.get("line_number"),
            has_message_weights=bool(data.get("dataset_has_message_weights")),
            has_tools=bool(data.get("dataset_has_tools")),
            is_multimodal=bool(data.get("dataset_is_multimodal")),
            has_reasoning=bool(data.get("dataset_has_reasoning")),
            has_parallel_tool_calls=bool(data.get("dataset_has_parallel_tool_calls")),
        )


@dataclass
class _Tally:
    """What the validator has learned so far; turned into the report at the end or on error."""

    dataset_format: DatasetFormat | None = None
    format_line: int = 0
    num_samples: int = 0
    has_message_weights: bool = False
    has_tools: bool = False
    is_multimodal: bool = False
    has_reasoning: bool = False
    has_parallel_tool_calls: bool = False

    def add_facts(self, facts: RecordFacts) -> None:
        self.has_message_weights |= facts.has_message_weights
        self.has_tools |= facts.has_tools
        self.is_multimodal |= facts.is_multimodal
        self.has_reasoning |= facts.has_reasoning
        self.has_parallel_tool_calls |= facts.has_parallel_tool_calls

    def report(self, error: DatasetInvalid | None = None) -> ValidationReport:
        return ValidationReport(
            valid=error is None,
            dataset_format=self.dataset_format,
            num_samples=self.num_samples,
            error=error.message if error else None,
            line=error.line if error else None,
            has_message_weights=self.has_message_weights,
            has_tools=self.has_tools,
            is_multimodal=self.is_multimodal,
            has_reasoning=self.has_reasoning,
            has_parallel_tool_calls=self.has_parallel_tool_calls,
        )


def validate_stream(stream: BinaryIO, file_type: str, purpose: str = "fine-tune", *,
                    max_line_memory: int | None = None) -> ValidationReport:
    """Validate a whole file read from ``stream`` (binary; seekable for Parquet).

    ``file_type`` is ``jsonl``, ``parquet`` or ``csv`` (case-insensitive, a leading dot is
    ignored). Returns ``valid=False`` with the first error for any bad data, including an
    unsupported file type; raises only what the stream itself raises (I/O errors). A JSONL line
    whose decoding could need more than ``max_line_memory`` bytes is refused before it is decoded.
    """
    tally = _Tally()
    kind = file_type.lower().lstrip(".")
    try:
        if kind == "jsonl":
            _validate_jsonl(stream, tally, check_formats=purpose == "fine-tune", max_line_memory=max_line_memory)
        elif kind == "parquet":
            if purpose == "eval":
                raise DatasetInvalid("Parquet files are not supported for eval; upload JSONL or CSV")
            _validate_parquet(stream, tally)
        elif kind == "csv":
            if purpose != "eval":
                raise DatasetInvalid(_csv_not_supported(purpose))
            _validate_csv(stream, tally)
        else:
            raise DatasetInvalid(f"file type {show(file_type)} is not supported; upload jsonl, parquet or csv")
    except DatasetInvalid as error:
        return tally.report(error)
    return tally.report()


def _csv_not_supported(purpose: str) -> str:
    if purpose == "fine-tune":
        return "CSV files are not supported for fine-tuning; upload JSONL or Parquet"
    return f"CSV files are only supported for purpose eval; got purpose {show(purpose)}"


# --- JSONL -----------------------------------------------------------------------------------


def iter_records(stream: BinaryIO, *, max_line_bytes: int = MAX_LINE_BYTES,
                 max_line_memory: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` for each non-blank line of a JSONL stream, in order.

    Reads one line at a time. Raises ``DatasetInvalid`` (naming the line) for a line that is
    not UTF-8, not JSON, not a JSON object, longer than ``max_line_bytes``, holding more than
    ``MAX_LINE_ITEMS`` values, or whose decoding could need more than ``max_line_memory`` bytes
    (the last two checked on the raw bytes, before decoding). A UTF-8 byte order mark at the
    start of the file is ignored.
    """
    for line, raw in _numbered_lines(stream, max_line_bytes):
        if raw.isspace():
            continue
        if len(raw) > _SMALL_LINE:
            _check_decoded_size(raw, line, max_line_memory)
        record = _parse_json(_decode(raw, line), line)
        if not isinstance(record, dict):
            raise DatasetInvalid(f"line {line}: the line must be a JSON object; got {show(record)}", line=line)
        yield line, record


def decoding_memory(raw: bytes) -> tuple[int, int]:
    """An upper bound on the JSON values in a raw line and on the memory decoding it needs: the
    bytes, the decoded text (up to 4 bytes a character unless it is ASCII) and the parsed strings
    again, plus about 64 bytes per value."""
    items = raw.count(b",") + 1
    width = 1 if raw.isascii() else 4
    return items, len(raw) * (1 + 2 * width) + 64 * items


def _check_decoded_size(raw: bytes, line: int, max_memory: int | None) -> None:
    items, memory = decoding_memory(raw)
    if items > MAX_LINE_ITEMS:
        raise DatasetInvalid(f"line {line}: the line holds up to {items} JSON values; a line may hold at most "
                             f"{MAX_LINE_ITEMS} (refused before decoding)", line=line)
    if max_memory is not None and memory > max_memory:
        raise DatasetInvalid(f"line {line}: decoding the line ({len(raw)} bytes) could take {memory} bytes of "
                             f"memory, more than the {max_memory} one line may use on this server (refused "
                             "before decoding); split the sample or shorten it", line=line)


def _numbered_lines(stream: BinaryIO, max_line_bytes: int) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line_number, raw_line)``; the first line loses a UTF-8 byte order mark."""
    readline = stream.readline
    line = 0
    while raw := readline(max_line_bytes + 1):
        line += 1
        if len(raw) > max_line_bytes:
            raise DatasetInvalid(f"line {line}: the line is longer than {max_line_bytes} bytes", line=line)
        if line == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        yield line, raw


def _decode(raw: bytes, line: int) -> str:
    """Decode one line as strict UTF-8, naming the first bad byte's column on failure."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DatasetInvalid(
            f"line {line}: byte {error.start + 1} of the line is not valid UTF-8 ({error.reason}); "
            f"got 0x{raw[error.start]:02x}; the file must be UTF-8 encoded",
            line=line,
        ) from None


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


_JSON = json.JSONDecoder(parse_constant=_reject_constant)


def _parse_json(text: str, line: int) -> Any:
    """Parse one line of strict JSON (no NaN/Infinity)."""
    try:
        return _JSON.decode(text)
    except json.JSONDecodeError as error:
        problem = f"{error.msg} at column {error.colno}"
    except (ValueError, RecursionError) as error:
        problem = str(error) if isinstance(error, ValueError) else "nested too deeply"
    raise DatasetInvalid(f"line {line}: the line is not valid JSON ({problem}); got {_snippet(text)}", line=line)


def _snippet(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _SNIPPET_CHARS else text[: _SNIPPET_CHARS - 1] + "…"


_PROMPT_OR_CONVERSATION = {DatasetFormat.CONVERSATION, DatasetFormat.REINFORCEMENT}


def _validate_jsonl(stream: BinaryIO, tally: _Tally, *, check_formats: bool, max_line_memory: int | None) -> None:
    """Read every sample; with ``check_formats`` hold each to the file's one dataset format."""
    for line, record in iter_records(stream, max_line_memory=max_line_memory):
        if check_formats:
            fmt = detect_format(record, line)
            if tally.dataset_format is None:
                tally.dataset_format, tally.format_line = fmt, line
            elif {fmt, tally.dataset_format} == _PROMPT_OR_CONVERSATION:
                # A conversation file's row that does not end with an answer: its own fault (a
                # repeated role, a missing reply) says more than "another format".
                check_record(record, tally.dataset_format, line)
                raise DatasetInvalid(f"line {line}: the conversation must end with an assistant message (the "
                                     "file's other samples are conversations, not reinforcement prompts)", line=line)
            elif fmt is not tally.dataset_format:
                raise DatasetInvalid(
                    f"line {line}: sample is in {fmt.value} format but the file started in "
                    f"{tally.dataset_format.value} format (line {tally.format_line})",
                    line=line,
                )
            facts = check_record(record, fmt, line)
            if facts is not NO_FACTS:
                tally.add_facts(facts)
        tally.num_samples += 1
    if tally.num_samples == 0:
        raise DatasetInvalid("the file has no samples")


# --- Parquet (pre-tokenized) -----------------------------------------------------------------


def _validate_parquet(stream: BinaryIO, tally: _Tally) -> None:
    """Check a pre-tokenized Parquet file; an unreadable file is invalid, a failing stream raises."""
    watched = _WatchedStream(stream)
    try:
        _read_parquet(watched, tally)
    except MemoryError:
        raise  # a limit of the process validating, not a property of the file
    except (pa.ArrowException, OSError) as error:
        # pyarrow reports a corrupt file as OSError too; only the stream's own errors are I/O errors.
        if watched.failed:
            raise
        reason = " ".join(str(error).split())
        raise DatasetInvalid(f"the file is not a readable Parquet file ({reason})") from None


def _read_parquet(stream: Any, tally: _Tally) -> None:
    """Check the schema, then each row group: its size from the metadata first, then its record
    batches, sized so that each decodes at most ``PARQUET_BATCH_VALUES`` values a column."""
    parquet = pq.ParquetFile(stream)
    columns = _check_parquet_schema(parquet.schema_arrow)
    tally.dataset_format = DatasetFormat.PRETOKENIZED
    meta = parquet.metadata
    for group in range(meta.num_row_groups):
        rows, values = _row_group_size(meta.row_group(group), group, tally.num_samples + 1)
        batch_rows = max(1, min(PARQUET_BATCH_ROWS, PARQUET_BATCH_VALUES * rows // max(values, 1)))
        for batch in parquet.iter_batches(batch_size=batch_rows, row_groups=[group], columns=columns):
            _check_batch(batch, first_row=tally.num_samples + 1)
            tally.num_samples += batch.num_rows
    if tally.num_samples == 0:
        raise DatasetInvalid("the file has no samples")


def _row_group_size(group: Any, index: int, first_row: int) -> tuple[int, int]:
    """``(rows, values of its largest column)`` of a row group, from the metadata alone; refuses a
    group whose rows average more than ``MAX_ROW_TOKENS`` values, before decoding anything."""
    rows = group.num_rows
    values = max((group.column(i).num_values for i in range(group.num_columns)), default=0)
    if values > MAX_ROW_TOKENS * max(rows, 1):
        last = first_row + max(rows, 1) - 1
        span = f"row {first_row}" if last == first_row else f"rows {first_row}-{last}"
        raise DatasetInvalid(f"{span}: the file's metadata says row group {index + 1} holds {values} token values "
                             f"in {rows} row(s); a row may hold at most {MAX_ROW_TOKENS} tokens (refused before "
                             "decoding)", line=first_row)
    return rows, values


class _WatchedStream:
    """The part of a binary stream pyarrow reads through, remembering whether the stream raised."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.failed = False

    @property
    def closed(self) -> bool:
        return self._stream.closed

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._watch(self._stream.read, size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._watch(self._stream.seek, offset, whence)

    def tell(self) -> int:
        return self._watch(self._stream.tell)

    def _watch(self, method: Any, *args: Any) -> Any:
        try:
            return method(*args)
        except BaseException:
            self.failed = True
            raise


def _check_parquet_schema(schema: pa.Schema) -> list[str]:
    """Return the columns to read; each must be a known pre-tokenized column of integer lists."""
    allowed = ", ".join(PRETOKENIZED_COLUMNS)
    for name in schema.names:
        if name not in PRETOKENIZED_COLUMNS:
            raise DatasetInvalid(f'unknown column "{name}"; a pretokenized Parquet file has columns {allowed}')
    if "input_ids" not in schema.names:
        got = ", ".join(json.dumps(name) for name in schema.names) or "none"
        raise DatasetInvalid(f"the file has no input_ids column (columns allowed: {allowed}); got columns {got}")
    for field in schema:
        kind = field.type
        if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) or not pa.types.is_integer(kind.value_type):
            raise DatasetInvalid(f"column {field.name} must be a list of integers; got {kind}")
    return list(schema.names)


def _check_batch(batch: pa.RecordBatch, first_row: int) -> None:
    """Check one record batch with vectorised kernels; only an error drops into Python per row."""
    input_ids = batch.column("input_ids")
    lengths = _check_list_column(input_ids, "input_ids", first_row)
    empty = pc.equal(lengths, 0)
    if pc.any(empty).as_py():
        _fail_row(first_row + _first_true(empty), "input_ids", "must not be empty", [])
    _check_values(input_ids, "input_ids", pc.less(pc.list_flatten(input_ids), 0), "must be >= 0", first_row)
    for name in batch.schema.names:
        if name == "input_ids":
            continue
        column = batch.column(name)
        other = _check_list_column(column, name, first_row)
        mismatch = pc.not_equal(other, lengths)
        if pc.any(mismatch).as_py():
            index = _first_true(mismatch)
            _fail_row(
                first_row + index,
                name,
                f"must have as many tokens as input_ids ({lengths[index].as_py()})",
                other[index].as_py(),
            )
        _check_values(column, name, _bad_values(name, pc.list_flatten(column)), _VALUE_RULES[name], first_row)


_VALUE_RULES = {
    "attention_mask": "must be 0 or 1",
    "labels": f"must be a token id >= 0 or {IGNORE_INDEX}",
    "position_ids": "must be >= 0",
}


def _bad_values(name: str, values: pa.Array) -> pa.Array:
    """A boolean mask of the values in ``name`` that break its rule."""
    if name == "attention_mask":
        return pc.and_(pc.not_equal(values, 0), pc.not_equal(values, 1))
    if name == "labels":
        return pc.and_(pc.less(values, 0), pc.not_equal(values, IGNORE_INDEX))
    return pc.less(values, 0)


def _check_list_column(column: pa.Array, name: str, first_row: int) -> pa.Array:
    """Reject null lists and null values; return each row's list length."""
    if column.null_count:
        _fail_row(first_row + _first_true(pc.is_null(column)), name, "must be a list of integers", None)
    values = pc.list_flatten(column)
    if values.null_count:
        _check_values(column, name, pc.is_null(values), "must be an integer", first_row)
    return pc.list_value_length(column)


def _check_values(column: pa.Array, name: str, bad: pa.Array, problem: str, first_row: int) -> None:
    """If any flattened value is ``bad``, fail naming its row and position, e.g. ``labels[3]``."""
    if not pc.any(bad).as_py():
        return
    index = _first_true(bad)
    row = pc.list_parent_indices(column)[index].as_py()
    offsets = column.offsets  # absolute into the child array, also for a sliced column
    position = index - (offsets[row].as_py() - offsets[0].as_py())
    _fail_row(first_row + row, f"{name}[{position}]", problem, column[row].as_py()[position])


def _first_true(mask: pa.Array) -> int:
    return int(pc.index(mask, True).as_py())


def _fail_row(row: int, path: str, problem: str, value: Any) -> NoReturn:
    raise DatasetInvalid(f"row {row}: {path} {problem}; got {show(value)}", line=row, param=path.split("[")[0])


# --- CSV (eval only) -------------------------------------------------------------------------


def _validate_csv(stream: BinaryIO, tally: _Tally) -> None:
    """A CSV file needs a header row and the same number of columns in every row."""
    numbered = _numbered_lines(stream, MAX_LINE_BYTES)
    reader = csv.reader(_decode(raw, line) for line, raw in numbered)
    header = _next_row(reader, 1)
    while header is not None and not header:  # csv yields [] for a blank line
        header = _next_row(reader, reader.line_num + 1)
    if header is None:
        raise DatasetInvalid("the file has no header row")
    while True:
        start = reader.line_num + 1
        row = _next_row(reader, start)
        if row is None:
            break
        if row and len(row) != len(header):
            raise DatasetInvalid(
                f"line {start}: the row must have {len(header)} columns like the header; got {len(row)} columns",
                line=start,
            )
        tally.num_samples += bool(row)
    if tally.num_samples == 0:
        raise DatasetInvalid("the file has no samples")


def _next_row(reader: Any, line: int) -> list[str] | None:
    """The next CSV row, or ``None`` at the end; a CSV syntax error names the row's first line."""
    try:
        return next(reader)
    except StopIteration:
        return None
    except csv.Error as error:
        raise DatasetInvalid(f"line {line}: the row is not valid CSV ({error})", line=line) from None
