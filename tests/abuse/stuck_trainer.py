"""A training child stuck in a step: it reports that training started, then ignores SIGTERM and
never finishes. The worker runs it instead of a recipe (``TUNERY_RECIPE_MODULE``), and
``STUCK_PID_DIR`` gets a file named by its pid, so a test can see whether it is still alive.

    python -m tests.abuse.stuck_trainer --config job.json --report report.jsonl
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path

from tunery.training.reporter import JsonLinesReporter


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--report", required=True)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    (Path(os.environ["STUCK_PID_DIR"]) / str(os.getpid())).touch()
    with JsonLinesReporter(args.report, handle_sigterm=False) as reporter:
        reporter.event("training_start", "Training started (stuck)", total_steps=10, token_count=10, param_count=1)
        while True:
            time.sleep(1)


if __name__ == "__main__":
    main()
