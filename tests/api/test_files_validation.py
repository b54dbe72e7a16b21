"""The API's file validator: big JSONL split across bounded child processes gives the sequential verdict."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import live_children
from tunery.api.bounded import BoundedPool
from tunery.api.validation import FileValidator, merge_reports, split_lines, validate_path, validate_range

MEMORY = 2 * 1024**3


def conversation(i: int, weight: bool = False) -> str:
    assistant = {"role": "assistant", "content": f"answer {i}"}
    if weight:
        assistant["weight"] = 1
    return json.dumps({"messages": [{"role": "user", "content": f"question {i}"}, assistant]})


@pytest.fixture(scope="module")
def validator() -> Iterator[FileValidator]:
    v = FileValidator(BoundedPool(2, MEMORY), timeout_s=120, min_parallel_bytes=1)
    yield v
    v.close()


def test_split_lines_cuts_at_line_starts_and_covers_the_file(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text("".join(conversation(i) + "\n" for i in range(100)))
    data = path.read_bytes()
    ranges = split_lines(path, len(data), 7)
    assert ranges is not None and len(ranges) == 7
    assert ranges[0][0] == 0 and ranges[-1][1] == len(data)
    for (_, end), (start, _) in zip(ranges, ranges[1:], strict=False):
        assert end == start and data[start - 1:start] == b"\n"
    total = sum(validate_range(path, a, b, "jsonl", "fine-tune").num_samples for a, b in ranges)
    assert total == 100


def test_a_byte_order_mark_at_a_cut_is_not_split(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'{"text": "aaaaaaaaaaaaaaaa"}\n\xef\xbb\xbf{"text": "b"}\n')
    assert split_lines(path, path.stat().st_size, 2) is None


def test_the_parallel_verdict_equals_the_sequential_one(tmp_path: Path, validator: FileValidator) -> None:
    path = tmp_path / "good.jsonl"
    path.write_text("".join(conversation(i, weight=i == 150) + "\n" for i in range(200)))
    parallel = validator.validate(path, "jsonl", "fine-tune")
    assert parallel == validate_path(path, "jsonl", "fine-tune")
    assert parallel.valid and parallel.num_samples == 200 and parallel.has_message_weights


@pytest.mark.parametrize("bad_line", [1, 117, 200])
def test_an_invalid_file_gets_the_sequential_first_error(
    tmp_path: Path, validator: FileValidator, bad_line: int,
) -> None:
    lines = [conversation(i) for i in range(200)]
    lines[bad_line - 1] = json.dumps({"messages": [{"role": "robot", "content": "x"}]})
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    report = validator.validate(path, "jsonl", "fine-tune")
    assert report == validate_path(path, "jsonl", "fine-tune")
    assert not report.valid and report.line == bad_line and (report.error or "").startswith(f"line {bad_line}:")


def test_formats_that_differ_between_ranges_are_caught(tmp_path: Path, validator: FileValidator) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps({"text": f"t{i}"}) + "\n" for i in range(100))
                    + "".join(json.dumps({"prompt": "p", "completion": "c"}) + "\n" for i in range(100)))
    report = validator.validate(path, "jsonl", "fine-tune")
    assert not report.valid and report.line == 101
    assert merge_reports([]) is None


def _children_of(pool: BoundedPool) -> set[int]:
    """Live children of ``pool``: ``python -m tunery.api.bounded MEMORY IDLE`` processes of this
    process with exactly this pool's arguments (other pools here, and other xdist workers' processes,
    do not count)."""
    argv = [b"-m", b"tunery.api.bounded", str(pool.memory_bytes).encode(), str(pool.idle_exit_s).encode()]
    return {pid for pid, args in live_children(os.getpid()).items() if args[1:5] == argv}


def test_idle_workers_exit_and_are_replaced(tmp_path: Path) -> None:
    path = tmp_path / "good.jsonl"
    path.write_text("".join(conversation(i) + "\n" for i in range(50)))
    pool = BoundedPool(2, MEMORY + 4096, idle_exit_s=0.3)  # arguments no other pool in the suite uses
    v = FileValidator(pool, timeout_s=120, min_parallel_bytes=1)
    try:
        assert v.validate(path, "jsonl", "fine-tune").num_samples == 50
        first = _children_of(pool)
        assert len(first) == 2
        deadline = time.monotonic() + 60  # a bound for a loaded machine, not a timing assertion
        while _children_of(pool) & first:  # both give up and exit on their own
            assert time.monotonic() < deadline, "idle validation workers did not exit"
            time.sleep(0.1)
        assert v.validate(path, "jsonl", "fine-tune").num_samples == 50
        second = _children_of(pool)
        assert second and not second & first  # new workers did the work
    finally:
        v.close()
