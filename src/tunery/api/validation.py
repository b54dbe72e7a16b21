"""Running dataset validation for the API: in the calling thread for small files, and split across
worker processes for big JSONL files.

Validation is per-sample Python (``tunery.datasets``), roughly 80 MB/s on one core, so one big
file would dominate an upload. Samples are independent except that they must all share one
format, so a JSONL file is cut at line boundaries into ranges that worker processes validate at
once; the file is valid when every range is valid and all ranges found the same format. When any
range fails (or a cut is unsafe), the whole file is validated again front to back, so an invalid
file gets exactly the report - and the line numbers - a sequential run gives. Invalid files are
the rare case, and that run stops at the first error.

Processes, not threads: the validator holds the GIL, which the server's event loop needs to keep
receiving uploads. The workers are ``python -m tunery.api.validation`` children speaking JSON
lines on stdin/stdout rather than a multiprocessing pool, because multiprocessing re-imports the
parent's ``__main__`` (the ``tunery`` CLI, and with it the whole server and torch) in every
worker; these import only ``tunery.datasets``. They start on first use (``warm()`` starts them
while a big upload is still arriving), and exit when the server does (their stdin closes) or
after two idle minutes, so a server that validated one big file does not keep their memory.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import queue
import select
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from tunery.datasets import ValidationReport, validate_stream

if TYPE_CHECKING:
    from fastapi import Request

# Below this size one sequential pass is fast (< 0.5 s) and cheaper than the round trip.
PARALLEL_MIN_BYTES = 32 * 1024 * 1024
# A line that runs on this far past a cut point makes the split unsafe; go sequential.
MAX_BOUNDARY_SEARCH = 64 * 1024 * 1024
READ_BUFFER = 1024 * 1024
# Idle workers exit after this long; the next big file starts new ones (about a second each).
WORKER_IDLE_EXIT_S = 120.0
_BOM = b"\xef\xbb\xbf"


def validate_path(path: Path, file_type: str, purpose: str) -> ValidationReport:
    """One sequential pass over the whole file."""
    with open(path, "rb", buffering=READ_BUFFER) as f:
        return validate_stream(f, file_type, purpose)


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


def validate_range(path: Path, start: int, end: int, file_type: str, purpose: str) -> ValidationReport:
    """Validate the lines in ``[start, end)`` as if they were a file of their own."""
    with io.BufferedReader(_RangeRaw(path, start, end), READ_BUFFER) as f:
        return validate_stream(f, file_type, purpose)


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


# ---- worker processes --------------------------------------------------------------------------


class _Worker:
    """One ``python -m tunery.api.validation`` child: a JSON request per line in, a JSON answer out."""

    def __init__(self, idle_exit_s: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tunery.api.validation", str(idle_exit_s)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        stdin, stdout = cast(IO[str], self.proc.stdin), cast(IO[str], self.proc.stdout)
        stdin.write(json.dumps(request) + "\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"validation worker exited with status {self.proc.wait()}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class FileValidator:
    """Validates stored files; owns the worker processes (one set per server process)."""

    def __init__(
        self, workers: int | None = None, min_parallel_bytes: int = PARALLEL_MIN_BYTES,
        worker_idle_exit_s: float = WORKER_IDLE_EXIT_S,
    ):
        self.workers = workers or min(8, os.cpu_count() or 1)
        self.min_parallel_bytes = min_parallel_bytes
        self.worker_idle_exit_s = worker_idle_exit_s
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._started = 0
        self._lock = threading.Lock()
        self._threads = ThreadPoolExecutor(self.workers * 2, thread_name_prefix="validate")

    def warm(self) -> None:
        """Start the workers now (each takes about a second to import), without waiting for them."""
        with self._lock:
            while self.workers > 1 and self._started < self.workers:
                self._started += 1
                self._idle.put(_Worker(self.worker_idle_exit_s))

    def _acquire(self) -> _Worker:
        while True:
            with self._lock:
                if self._idle.empty() and self._started < self.workers:
                    self._started += 1
                    return _Worker(self.worker_idle_exit_s)
            worker = self._idle.get()
            if worker.proc.poll() is None:
                return worker
            self._discard(worker)  # it exited after sitting idle; start another

    def _discard(self, worker: _Worker) -> None:
        worker.close()
        with self._lock:
            self._started -= 1

    def _run(self, request: dict[str, Any]) -> ValidationReport:
        for attempt in (1, 2):
            worker = self._acquire()
            try:
                answer = worker.call(request)
            except Exception:
                self._discard(worker)
                if attempt == 2:
                    raise
                continue  # it died under us (idle exit or crash): one retry on a fresh worker
            self._idle.put(worker)
            if "error" in answer:
                raise RuntimeError(f"validation worker failed: {answer['error']}")
            return ValidationReport.from_json(answer["report"])
        raise AssertionError("unreachable")

    def validate(self, path: Path, file_type: str, purpose: str) -> ValidationReport:
        size = path.stat().st_size
        if file_type != "jsonl" or size < self.min_parallel_bytes or self.workers < 2:
            return validate_path(path, file_type, purpose)
        ranges = split_lines(path, size, self.workers * 2)
        if ranges is None or len(ranges) < 2:
            return validate_path(path, file_type, purpose)
        base = {"path": str(path), "file_type": file_type, "purpose": purpose}
        jobs = [self._threads.submit(self._run, {**base, "start": a, "end": b}) for a, b in ranges]
        merged = merge_reports([job.result() for job in jobs])
        if merged is not None:
            return merged
        # Some range failed: validate front to back for the exact first error and its line.
        return self._run({**base, "start": 0, "end": size})

    def close(self) -> None:
        with self._lock:
            while not self._idle.empty():
                self._idle.get().close()
            self._started = 0
        self._threads.shutdown(wait=False)


_create_lock = threading.Lock()


def file_validator(request: Request) -> FileValidator:
    """The app's validator, created on first use."""
    with _create_lock:
        validator: FileValidator | None = getattr(request.app.state, "file_validator", None)
        if validator is None:
            validator = FileValidator()
            request.app.state.file_validator = validator
        return validator


def _serve(idle_exit_s: float = WORKER_IDLE_EXIT_S) -> None:
    """The worker loop: validate the range each request names, answer with its report; exit when
    stdin closes (the server is gone) or after ``idle_exit_s`` without work (to give memory back)."""
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], idle_exit_s)
        line = sys.stdin.readline() if ready else ""
        if not line:
            return
        request = json.loads(line)
        try:
            report = validate_range(
                Path(request["path"]), request["start"], request["end"], request["file_type"], request["purpose"],
            )
            answer: dict[str, Any] = {"report": report.to_json()}
        except Exception as error:
            answer = {"error": f"{type(error).__name__}: {error}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _serve(float(sys.argv[1]) if len(sys.argv) > 1 else WORKER_IDLE_EXIT_S)
