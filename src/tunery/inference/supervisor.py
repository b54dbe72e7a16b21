"""The embedded engine of ``tunery serve``: a ``tunery inference`` child process on 127.0.0.1, started
with the server (or by the first inference request) and started again whenever it dies, so killing it
costs the requests it was running and nothing else: the API stays up, and requests that arrive while it
restarts wait for it (``EngineClient`` retries until ``inference_start_timeout_s``).
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

log = logging.getLogger("tunery.inference")

RESTART_DELAY_S = 1.0


class EngineProcess:
    def __init__(self, settings: Settings, port: int):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {**os.environ, "TUNERY_DATA_DIR": str(settings.data_dir)}
        self.proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._supervisor = threading.Thread(target=self._supervise, name="engine-supervisor", daemon=True)

    def ensure_started(self) -> None:
        """Start the engine (and its supervision) unless that has happened already; cheap to repeat."""
        with self._lock:
            if self.proc is not None or self._stopping.is_set():
                return
            self.proc = self._spawn()
            self._supervisor.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        # SIGTERM if `tunery serve` dies without stopping us.
        return subprocess.Popen([sys.executable, "-m", "tunery.cli.main", "inference", "--host", "127.0.0.1",
                                 "--port", str(self.port)], env=self.env, preexec_fn=on_parent_death(signal.SIGTERM))

    def _supervise(self) -> None:
        while not self._stopping.wait(RESTART_DELAY_S):
            with self._lock:
                if self.proc is not None and self.proc.poll() is not None and not self._stopping.is_set():
                    log.warning("inference engine %s exited with %s; starting a new one", self.proc.pid,
                                self.proc.returncode)
                    self.proc = self._spawn()

    def stop(self, timeout_s: float = 10) -> None:
        self._stopping.set()
        with self._lock:
            proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
