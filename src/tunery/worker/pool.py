"""Embedded workers for `tunery serve`: N `tunery worker` processes, restarted if one dies.

Processes, not threads, so training never competes with the API for the GIL, and a crashed or
killed worker takes nothing else down; its job is requeued by the heartbeat check.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading

from tunery.lifetime import on_parent_death
from tunery.settings import Settings

log = logging.getLogger("tunery.worker")

RESTART_DELAY_S = 1.0


class WorkerPool:
    def __init__(self, settings: Settings, count: int):
        self.env = {**os.environ, "TUNERY_DATA_DIR": str(settings.data_dir)}
        if settings.database_url:
            self.env["TUNERY_DATABASE_URL"] = settings.database_url
        self.procs: list[subprocess.Popen[bytes]] = [self._spawn() for _ in range(count)]
        self._stopping = threading.Event()
        self._supervisor = threading.Thread(target=self._supervise, name="worker-supervisor", daemon=True)
        if count:
            self._supervisor.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        # SIGTERM if `tunery serve` dies without stopping us: the worker checkpoints and requeues.
        return subprocess.Popen([sys.executable, "-m", "tunery.cli.main", "worker"], env=self.env,
                                preexec_fn=on_parent_death(signal.SIGTERM))

    def _supervise(self) -> None:
        while not self._stopping.wait(RESTART_DELAY_S):
            for i, proc in enumerate(self.procs):
                if proc.poll() is not None and not self._stopping.is_set():
                    log.warning("worker process %s exited with %s; starting a new one", proc.pid, proc.returncode)
                    self.procs[i] = self._spawn()

    def stop(self, timeout_s: float = 60) -> None:
        """SIGTERM every worker: each checkpoints and requeues its job, then exits."""
        self._stopping.set()
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
