"""How a training child process ends, as its exit code: the recipes' entry point (``launch.py``)
returns these and the worker reads them. Kept apart from the recipes so the worker can import it
without importing torch.

Under ``torchrun`` the launcher exits 1 whenever a rank did not exit 0, so there the worker reads
whose fault a failure was from the child's ``error`` event instead.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    COMPLETED = 0  # early stopping included
    FAILED = 1  # for another reason (an ``error`` event carries the message)
    USER_ERROR = 2  # bad data or config (an ``error`` event says what to change)
    STOPPED = 3  # on request (SIGTERM); the last checkpoint record names the state to resume from
