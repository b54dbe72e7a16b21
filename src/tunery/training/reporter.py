"""How a training recipe tells the outside world what it is doing, and learns it should stop.

Three record shapes, one JSON object each:

    {"kind": "event", "type": "training_start", "message": "...", "level": "info", ...fields}
    {"kind": "metrics", "step": 7, "values": {"train/loss": 1.9, ...}}
    {"kind": "checkpoint", "step": 10, "path": "/out/checkpoints/step-10", "final": false}

Event types are Together's lowercase ones: wandb_init (field wandb_url; only with a W&B key),
training_start (fields total_steps, token_count, param_count, batch_size — the resolved one when
"max" was asked —, max_seq_length, processes), epoch_complete, checkpoint_save, eval_complete,
warning, training_complete, early_stopped; and two the worker acts on rather than shows: error
(written by the entry point before a failing exit) and tokenized_dataset (field path: the Parquet of
the tokenized training set, see ``tokenized.py``). Metric keys:
train/loss, train/learning_rate, train/epoch, train/grad_norm, train/tokens_per_second, eval/loss.
A checkpoint record is written only after the directory it names is complete.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import IO, Any, Protocol


class Reporter(Protocol):
    def event(self, type: str, message: str, level: str = "info", **fields: Any) -> None: ...

    def metrics(self, step: int, values: dict[str, float]) -> None: ...

    def checkpoint(self, step: int, path: str, final: bool) -> None: ...

    def should_stop(self) -> bool: ...


def event_record(type: str, message: str, level: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "event", "type": type, "message": message, "level": level, **fields}


def metrics_record(step: int, values: dict[str, float]) -> dict[str, Any]:
    return {"kind": "metrics", "step": step, "values": {k: float(v) for k, v in values.items()}}


def checkpoint_record(step: int, path: str, final: bool) -> dict[str, Any]:
    return {"kind": "checkpoint", "step": step, "path": str(path), "final": final}


class JsonLinesReporter:
    """Appends one JSON object per line to ``path``, flushed at once so a tailing reader sees it.

    With ``handle_sigterm`` (the default, for the training child process) SIGTERM makes
    ``should_stop()`` true instead of killing the process: the worker sends it to cancel a job or
    to shut down, and the recipe answers by writing a resumable checkpoint at the next step.
    """

    def __init__(self, path: str | Path, *, handle_sigterm: bool = True):
        self._file: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._stop = threading.Event()
        if handle_sigterm:
            signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self._stop.set()

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, default=str) + "\n")
        self._file.flush()

    def event(self, type: str, message: str, level: str = "info", **fields: Any) -> None:
        self._write(event_record(type, message, level, fields))

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self._write(metrics_record(step, values))

    def checkpoint(self, step: int, path: str, final: bool) -> None:
        self._write(checkpoint_record(step, path, final))

    def should_stop(self) -> bool:
        return self._stop.is_set()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> JsonLinesReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NullReporter:
    """Says nothing and never asks to stop: the reporter of every rank but rank 0."""

    def event(self, type: str, message: str, level: str = "info", **fields: Any) -> None:
        pass

    def metrics(self, step: int, values: dict[str, float]) -> None:
        pass

    def checkpoint(self, step: int, path: str, final: bool) -> None:
        pass

    def should_stop(self) -> bool:
        return False


class ListReporter:
    """Keeps every record in ``records`` (same shapes as the JSON lines); the test fake.

    ``stop_when(self)`` is asked at each ``should_stop()``; e.g. ``lambda r: len(r.metric_steps()) >= 3``
    stops after the third step.
    """

    def __init__(self, stop_when: Callable[[ListReporter], bool] | None = None):
        self.records: list[dict[str, Any]] = []
        self._stop_when = stop_when
        self._stop = False

    def event(self, type: str, message: str, level: str = "info", **fields: Any) -> None:
        self.records.append(event_record(type, message, level, fields))

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.records.append(metrics_record(step, values))

    def checkpoint(self, step: int, path: str, final: bool) -> None:
        self.records.append(checkpoint_record(step, path, final))

    def should_stop(self) -> bool:
        if not self._stop and self._stop_when is not None and self._stop_when(self):
            self._stop = True
        return self._stop

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["kind"] == kind]

    def events(self, type: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.of_kind("event") if type is None or r["type"] == type]

    def metric_steps(self, key: str = "train/loss") -> list[tuple[int, float]]:
        return [(r["step"], r["values"][key]) for r in self.of_kind("metrics") if key in r["values"]]
