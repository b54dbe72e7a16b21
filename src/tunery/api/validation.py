"""Running dataset validation for the API: always in a bounded child process (``api/bounded.py``),
never in the API process, and split across several children for big JSONL files.

A tenant's file decides how much memory and time its validation takes (one 248 MB line, or a
674-byte Parquet file that decodes to 200 million values), so it runs where a memory limit and a
deadline apply; a file that hits either is refused (``INVALID_FORMAT``, naming the limit), and
the server and everyone else's requests carry on.

Validation is per-sample Python (``tunery.datasets``), roughly 80 MB/s on one core. Samples are
independent except that they must all share one format, so a big JSONL file is cut at line
boundaries into ranges that children validate at once; the file is valid when every range is
valid and all ranges found the same format. When any range fails (or a cut is unsafe), the whole
file is validated again front to back, so an invalid file gets exactly the report - and the line
numbers - a sequential run gives. Invalid files are the rare case, and that run stops at the
first error.
"""

from __future__ import annotations

import dataclasses
import io
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tunery.api.bounded import BoundedPool, OverLimit
from tunery.datasets import ValidationReport, validate_stream

# Below this size one sequential pass is fast (< 0.5 s) and cheaper than the round trip.
PARALLEL_MIN_BYTES = 32 * 1024 * 1024
# A line that runs on this far past a cut point makes the split unsafe; go sequential.
MAX_BOUNDARY_SEARCH = 64 * 1024 * 1024
READ_BUFFER = 1024 * 1024
_BOM = b"\xef\xbb\xbf"


def validate_path(path: Path, file_type: str, purpose: str, max_line_memory: int | None = None) -> ValidationReport:
    """One sequential pass over the whole file."""
    with open(path, "rb", buffering=READ_BUFFER) as f:
        return validate_stream(f, file_type, purpose, max_line_memory=max_line_memory)


class _RangeRaw(io.RawIOBase):
    """The bytes ``[start, end)`` of a file as a raw stream (to be wrapped in a BufferedReader)."""

    def __init__(self, path: Path, start: int, end: int):
        self._f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by close()
        self._f.seek(start)
        self._left = end - start

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self._left)
        if n <= 0:
            return 0
        got = self._f.readinto(memoryview(buffer)[:n]) or 0
        self._left -= got
        return got

    def close(self) -> None:
        self._f.close()
        super().close()


def validate_range(path: Path, start: int, end: int, file_type: str, purpose: str,
                   max_line_memory: int | None = None) -> ValidationReport:
    """Validate the lines in ``[start, end)`` as if they were a file of their own."""
    with io.BufferedReader(_RangeRaw(path, start, end), READ_BUFFER) as f:
        return validate_stream(f, file_type, purpose, max_line_memory=max_line_memory)


def split_lines(path: Path, size: int, pieces: int) -> list[tuple[int, int]] | None:
    """Cut ``[0, size)`` into up to ``pieces`` ranges that each start at the beginning of a line.

    Returns None when a cut is unsafe: a byte-order mark at a cut point (a sequential reader treats
    it differently mid-file) or a line too long to find the end of.
    """
    cuts = [0]
    with open(path, "rb") as f:
        for i in range(1, pieces):
            offset = max(size * i // pieces, cuts[-1])
            f.seek(offset)
            scanned = 0
            while True:
                block = f.read(READ_BUFFER)
                if not block:
                    cut = size
                    break
                nl = block.find(b"\n")
                if nl >= 0:
                    cut = offset + scanned + nl + 1
                    break
                scanned += len(block)
                if scanned > MAX_BOUNDARY_SEARCH:
                    return None
            if cut >= size:
                break
            if cut > cuts[-1]:
                f.seek(cut)
                if f.read(len(_BOM)) == _BOM:
                    return None
                cuts.append(cut)
    cuts.append(size)
    return [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]


def merge_reports(reports: list[ValidationReport]) -> ValidationReport | None:
    """One valid report for the whole file, or None when any range failed or the formats differ."""
    if not reports or not all(r.valid for r in reports):
        return None
    if len({r.dataset_format for r in reports}) != 1:
        return None
    first = reports[0]
    merged: dict[str, Any] = {"num_samples": sum(r.num_samples for r in reports)}
    for field in dataclasses.fields(first):
        if field.name != "valid" and isinstance(getattr(first, field.name), bool):
            merged[field.name] = any(getattr(r, field.name) for r in reports)
    return dataclasses.replace(first, **merged)


# ---- in the bounded children ----------------------------------------------------------------------


def validate_task(path: str, start: int, end: int, file_type: str, purpose: str,
                  max_line_memory: int) -> dict[str, Any]:
    """The child's side: validate ``[start, end)`` of the file (a JSONL range, or the whole file:
    Parquet is read by seeking); the report as JSON."""
    if start == 0 and end == Path(path).stat().st_size:
        return validate_path(Path(path), file_type, purpose, max_line_memory).to_json()
    return validate_range(Path(path), start, end, file_type, purpose, max_line_memory).to_json()


class FileValidator:
    """Validates stored files in ``pool``'s bounded children."""

    def __init__(self, pool: BoundedPool, timeout_s: float, min_parallel_bytes: int = PARALLEL_MIN_BYTES):
        self.pool = pool
        self.timeout_s = timeout_s
        self.min_parallel_bytes = min_parallel_bytes
        self._threads = ThreadPoolExecutor(pool.processes, thread_name_prefix="validate")

    def warm(self) -> None:
        """Start the children now (each takes about a second), without waiting for them."""
        threading.Thread(target=self.pool.warm, name="warm-validation", daemon=True).start()

    def _run(self, path: Path, start: int, end: int, file_type: str, purpose: str) -> ValidationReport:
        # Half the child's memory for one line's decoding leaves room for everything else it holds.
        args = {"path": str(path), "start": start, "end": end, "file_type": file_type, "purpose": purpose,
                "max_line_memory": self.pool.memory_bytes // 2}
        try:
            return ValidationReport.from_json(self.pool.run("validate", args, self.timeout_s))
        except OverLimit as limit:
            what = "TUNERY_TASK_MEMORY_BYTES" if limit.what == "memory" else "TUNERY_VALIDATION_TIMEOUT_S"
            return ValidationReport(valid=False, dataset_format=None, num_samples=0,
                                    error=f"the file was refused: validating it {limit} ({what} on the server); "
                                          "split it into smaller files or shorter lines")

    def validate(self, path: Path, file_type: str, purpose: str) -> ValidationReport:
        """The file's report; raises ``TaskFailed`` when validation itself broke (not the data)."""
        size = path.stat().st_size
        ranges = None
        if file_type == "jsonl" and size >= self.min_parallel_bytes and self.pool.processes > 1:
            ranges = split_lines(path, size, self.pool.processes * 2)
        if ranges is None or len(ranges) < 2:
            return self._run(path, 0, size, file_type, purpose)
        jobs = [self._threads.submit(self._run, path, a, b, file_type, purpose) for a, b in ranges]
        merged = merge_reports([job.result() for job in jobs])
        if merged is not None:
            return merged
        # Some range failed: validate front to back for the exact first error and its line.
        return self._run(path, 0, size, file_type, purpose)

    def close(self) -> None:
        self._threads.shutdown(wait=False)
        self.pool.close()

