"""Find a running tunery server, or start one (`tunery serve` as a child process) for the quickstart.

    with local_server(base_url, data_dir, log_path, keep=False) as server:
        client = Client(server.base_url, server.api_key)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tunery.cli.client import CliError, resolve_api_key

START_TIMEOUT_S = 90.0
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


@dataclass
class LocalServer:
    base_url: str
    api_key: str
    data_dir: Path | None  # where its data lives, when this machine knows it
    started: bool  # True when we started it
    pid: int | None = None


def is_healthy(base_url: str) -> bool:
    try:
        return httpx.get(base_url + "/healthz", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def local_server(base_url: str, api_key: str | None, data_dir: Path, log_path: Path, keep: bool,
                 env: dict[str, str] | None = None) -> Iterator[LocalServer]:
    """Use the server at ``base_url`` if it answers; otherwise start `tunery serve` on its port (or
    on a free one when that port is taken) with ``data_dir``, and stop it on exit unless ``keep``."""
    if is_healthy(base_url):
        yield LocalServer(base_url, resolve_api_key(api_key), None, started=False)
        return
    parts = urlsplit(base_url)
    if parts.hostname not in LOCAL_HOSTS:
        raise CliError(f"no tunery server answers at {base_url}; start it there, or leave --base-url unset "
                       "to let quickstart start one on this machine")
    port = parts.port or 8000
    if not port_is_free(port):
        port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _start(port, data_dir, log_path, keep, env or {})
    try:
        _wait_until_healthy(url, proc, log_path)
        key = api_key or (data_dir / "api_key").read_text().strip()
        yield LocalServer(url, key, data_dir, started=True, pid=proc.pid)
    finally:
        if not keep:
            _stop(proc)


def _start(port: int, data_dir: Path, log_path: Path, keep: bool, extra_env: dict[str, str]) -> subprocess.Popen[bytes]:
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TUNERY_DATA_DIR": str(data_dir), **extra_env}
    env.pop("TUNERY_PORT", None)
    with open(log_path, "ab") as log:
        # A kept server gets its own session, so that Ctrl-C in this terminal does not stop it.
        return subprocess.Popen(
            [sys.executable, "-m", "tunery.cli.main", "serve", "--port", str(port), "--data-dir", str(data_dir)],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=keep,
        )


def _wait_until_healthy(url: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CliError(f"tunery serve exited with code {proc.returncode}; see {log_path}")
        if is_healthy(url):
            return
        time.sleep(0.2)
    _stop(proc)
    raise CliError(f"tunery serve did not answer within {START_TIMEOUT_S:.0f}s; see {log_path}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, which also stops the server's embedded workers; SIGKILL if it hangs."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
