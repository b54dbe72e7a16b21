"""A test seam for the fleet tests: stop a worker at a named phase, so the test can SIGKILL it
exactly there.

With ``TUNERY_TEST_PAUSE_AT=<phase>`` and ``TUNERY_TEST_PAUSE_DIR=<dir>``, the first worker to
reach ``pause_point(<phase>)`` creates ``<dir>/<phase>`` holding its pid and sleeps until it is
killed (its heartbeat thread keeps beating, as a live worker's would); every later worker passes
through. The phases: staging (inputs fetched, training not started), training (the child trains
and a first checkpoint is listed), checkpoint (a later checkpoint partly uploaded, not listed),
compressing (the final model partly packed) and uploading (partly uploaded, not listed). Unset,
as in production, a ``PausePoints`` call does nothing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


class PausePoints:
    def __init__(self, phase: str = "", directory: Path | None = None):
        self.phase, self.directory = phase, directory

    def __call__(self, phase: str) -> None:
        if phase != self.phase or self.directory is None:
            return
        tmp = self.directory / f".{phase}.{os.getpid()}"
        tmp.write_text(str(os.getpid()))
        try:
            os.link(tmp, self.directory / phase)  # appears atomically, with the pid already in it
        except FileExistsError:
            return  # another worker paused here already
        finally:
            tmp.unlink()
        while True:
            time.sleep(3600)
