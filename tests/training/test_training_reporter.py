from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from tunery.training.reporter import JsonLinesReporter, ListReporter


def test_json_lines_reporter_writes_one_flushed_record_per_line(tmp_path: Path) -> None:
    path = tmp_path / "report.jsonl"
    with JsonLinesReporter(path, handle_sigterm=False) as reporter:
        reporter.event("training_start", "go", total_steps=3, token_count=10, param_count=5)
        reporter.metrics(1, {"train/loss": 2.5, "train/learning_rate": 1e-3})
        assert len(path.read_text().splitlines()) == 2  # visible before close: flushed
        reporter.checkpoint(1, "/out/checkpoints/step-1", final=False)
        reporter.event("warning", "careful", level="warning")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records == [
        {"kind": "event", "type": "training_start", "message": "go", "level": "info", "total_steps": 3,
         "token_count": 10, "param_count": 5},
        {"kind": "metrics", "step": 1, "values": {"train/loss": 2.5, "train/learning_rate": 1e-3}},
        {"kind": "checkpoint", "step": 1, "path": "/out/checkpoints/step-1", "final": False},
        {"kind": "event", "type": "warning", "message": "careful", "level": "warning"},
    ]


def test_sigterm_asks_the_json_lines_reporter_to_stop(tmp_path: Path) -> None:
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with JsonLinesReporter(tmp_path / "r.jsonl") as reporter:
            assert not reporter.should_stop()
            os.kill(os.getpid(), signal.SIGTERM)
            assert reporter.should_stop()
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_list_reporter_records_and_stops_when_told() -> None:
    reporter = ListReporter(stop_when=lambda r: len(r.metric_steps()) >= 2)
    reporter.metrics(1, {"train/loss": 3.0})
    assert not reporter.should_stop()
    reporter.metrics(2, {"train/loss": 2.0})
    assert reporter.should_stop()
    reporter.event("eval_complete", "done", step=2, eval_loss=1.5)
    assert reporter.metric_steps() == [(1, 3.0), (2, 2.0)]
    assert reporter.events("eval_complete")[0]["eval_loss"] == 1.5
