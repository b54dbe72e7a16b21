"""A stand-in training child for bench/fleet.py: speaks the real report protocol
(tunery/training/reporter.py) and writes real checkpoint and final directories, but trains
nothing, so the benchmark measures the queue, the workers and the API rather than the CPU.

    python -m bench.stub_trainer --config job.json --report report.jsonl

The worker runs it instead of a recipe when ``TUNERY_RECIPE_MODULE=bench.stub_trainer`` (the repo
root must be on ``PYTHONPATH``). ``STUB_STEPS`` (default 6) and ``STUB_STEP_S`` (default 0.05)
shape a job. SIGTERM stops it with exit code 3 after a resumable checkpoint, like a recipe.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from tunery.training.reporter import JsonLinesReporter

EXIT_STOPPED = 3


def write_dir(root: Path, parts: tuple[str, ...], step: int) -> None:
    for part in parts:
        (root / part).mkdir(parents=True, exist_ok=True)
        (root / part / "weights.bin").write_bytes(os.urandom(4096))
        (root / part / "config.json").write_text(json.dumps({"step": step}))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--report", required=True)
    args = parser.parse_args()
    config = json.loads(Path(args.config).read_text())
    out = Path(config["output_dir"])
    steps = int(os.environ.get("STUB_STEPS", "6"))
    step_s = float(os.environ.get("STUB_STEP_S", "0.05"))
    start = 0
    if config.get("resume_from"):
        start = int(Path(config["resume_from"]).name.removeprefix("step-"))
    every = max(1, steps // max(1, int(config.get("n_checkpoints", 1))))
    with JsonLinesReporter(args.report) as reporter:
        reporter.event("training_start", "Training started (stub)", total_steps=steps, token_count=1000 * steps,
                       param_count=1000)
        for step in range(start + 1, steps + 1):
            time.sleep(step_s)
            reporter.metrics(step, {"train/loss": 2.0 / step, "train/learning_rate": 1e-3})
            if reporter.should_stop() or (step % every == 0 and step < steps):
                path = out / "checkpoints" / f"step-{step}"
                write_dir(path, ("model", "adapter", "state"), step)
                reporter.checkpoint(step, str(path), final=False)
                if reporter.should_stop():
                    return EXIT_STOPPED
        write_dir(out / "final", ("model", "adapter"), steps)
        reporter.checkpoint(steps, str(out / "final"), final=True)
        reporter.event("training_complete", "Training completed (stub)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
