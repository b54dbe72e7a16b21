"""The recipes' command line: ``--config``/``--report``, the report file, and the exit code
(``exit_codes.ExitCode``: completed, failed, user error, stopped on request).

Under ``torchrun`` each rank runs this; rank 0 alone writes the report and answers SIGTERM (see
``distributed.py``). ``torchrun`` itself exits 1 whenever a rank did not exit 0.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from tunery.errors import DatasetInvalid, TrainingFailed
from tunery.training.config import TrainConfig
from tunery.training.distributed import env_rank, ignore_sigterm_off_main
from tunery.training.exit_codes import ExitCode
from tunery.training.reporter import JsonLinesReporter, NullReporter, Reporter
from tunery.training.session import TrainResult


def entry_point(run: Callable[[TrainConfig, Reporter], TrainResult], argv: list[str] | None, prog: str,
                description: str) -> int:
    """Parse ``--config``/``--report``, run, and map the outcome to an exit code (see the recipes).

    Under ``torchrun`` only rank 0 writes the report; the other ranks' failures reach stderr.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", required=True, help="TrainConfig JSON file")
    parser.add_argument("--report", required=True, help="file to append JSON-lines progress records to")
    args = parser.parse_args(argv)
    _quiet_libraries()
    rank = env_rank()
    ignore_sigterm_off_main(rank)
    with JsonLinesReporter(args.report) if rank == 0 else _StderrErrors() as reporter:
        try:
            result = run(TrainConfig.from_file(args.config), reporter)
        except (TrainingFailed, DatasetInvalid, ValidationError) as exc:
            user = not isinstance(exc, TrainingFailed) or exc.user_error
            reporter.event("error", _message(exc), level="error", user_error=user)
            return ExitCode.USER_ERROR if user else ExitCode.FAILED
        except Exception as exc:  # noqa: BLE001 - every failure must reach the report
            reporter.event("error", f"{type(exc).__name__}: {exc}", level="error", user_error=False)
            traceback.print_exc()  # the full story goes to stderr, which the worker keeps
            return ExitCode.FAILED
    return ExitCode.STOPPED if result.status == "stopped" else ExitCode.COMPLETED


class _StderrErrors(NullReporter):
    """A non-zero rank's reporter for the entry point: errors go to stderr, the rest nowhere."""

    def event(self, type: str, message: str, level: str = "info", **fields: Any) -> None:
        if level == "error":
            print(f"[rank {env_rank()}] {message}", file=sys.stderr, flush=True)

    def __enter__(self) -> _StderrErrors:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _message(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        problems = [
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        ]
        return "invalid training config: " + "; ".join(problems)
    return str(exc)


def _quiet_libraries() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
