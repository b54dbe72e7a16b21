"""A stand-in training child for the worker's tests: it speaks the recipe protocol — ``--config``,
``--report``, the report's records, the exit codes — without training, so the worker's handling of
each way a child can end runs in a second. What it does is ``$SCRIPTED_RECIPE``:

    complete       a start event, a metrics record, a checkpoint at step 1, a final model; exit 0
    user_error     … then an ``error`` event blaming the data; exit 2
    crash          … then a traceback on stderr and no error event; exit 1
    killed         … then SIGKILL to itself (the worker sees -9)
    until_stopped  … then wait for SIGTERM, write a checkpoint at step 2; exit 3

The real recipes go through the same worker in the end-to-end tests (tests/e2e/test_jobs_*).

    python -m tests.worker.scripted_recipe --config job.json --report report.jsonl
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from tunery.training.config import TrainConfig
from tunery.training.exit_codes import ExitCode
from tunery.training.reporter import JsonLinesReporter

TOTAL_STEPS, TOKENS, PARAMS, BATCH = 4, 1000, 50, 8


def write_part(path: Path, content: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "weights.txt").write_text(content)


def run(script: str, config: TrainConfig, reporter: JsonLinesReporter) -> int:
    out = Path(config.output_dir)
    reporter.event("training_start", "Training started", total_steps=TOTAL_STEPS, token_count=TOKENS,
                   param_count=PARAMS, batch_size=BATCH)
    reporter.metrics(1, {"train/loss": 2.0, "train/learning_rate": 1e-3})
    step1 = out / "checkpoints" / "step-1"
    for part in ("model", "adapter", "state"):
        write_part(step1 / part, f"{part} at step 1")
    reporter.checkpoint(1, str(step1), final=False)
    if script == "user_error":
        reporter.event("error", "line 3: the assistant message is empty", level="error", user_error=True)
        return ExitCode.USER_ERROR
    if script == "crash":
        print("Traceback (most recent call last):\nRuntimeError: boom in the kernel", file=sys.stderr)
        return ExitCode.FAILED
    if script == "killed":
        os.kill(os.getpid(), signal.SIGKILL)
    if script == "until_stopped":
        deadline = time.monotonic() + 60
        while not reporter.should_stop() and time.monotonic() < deadline:
            time.sleep(0.02)
        step2 = out / "checkpoints" / "step-2"
        write_part(step2 / "state", "state at step 2")
        reporter.checkpoint(2, str(step2), final=False)
        return ExitCode.STOPPED
    reporter.metrics(2, {"train/loss": 1.0, "train/learning_rate": 1e-3})
    final = out / "final"
    write_part(final / "model", "merged model")
    write_part(final / "adapter", "adapter")
    reporter.event("training_complete", "Training completed")
    reporter.checkpoint(TOTAL_STEPS, str(final), final=True)
    return ExitCode.COMPLETED


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--report", required=True)
    args = parser.parse_args()
    with JsonLinesReporter(args.report) as reporter:
        return run(os.environ["SCRIPTED_RECIPE"], TrainConfig.from_file(args.config), reporter)


if __name__ == "__main__":
    sys.exit(main())
