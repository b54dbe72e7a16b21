"""Shared fixtures: a live `tunery serve` process on a free loopback port, and SDK clients for it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

# Database and object-store fixtures (SQLite/PostgreSQL, local/S3): see tests/backends.py.
from tests.backends import (  # noqa: F401 - fixtures
    _drop_server_databases,
    backend_url,
    database,
    moto_server,
    postgres_url,
    server_database_env,
)

TUNERY = str(Path(sys.executable).parent / "tunery")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    """A real `tunery serve` subprocess. ``restart()`` keeps the data dir and port."""

    data_dir: Path
    port: int
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    serve_args: tuple[str, ...] = ()  # more `tunery serve` options, e.g. ("--api-workers", "2")
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.data_dir.parent / f"server-{self.port}.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_key(self) -> str:
        return (self.data_dir / "api_key").read_text().strip()

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the server process writes to it for its lifetime
        self.proc = subprocess.Popen(
            [TUNERY, "serve", "--port", str(self.port), "--data-dir", str(self.data_dir), *self.serve_args],
            env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 180  # a loaded machine can take a minute to import torch
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tunery serve exited early:\n{self.log_path.read_text()[-4000:]}")
            try:
                if httpx.get(self.base_url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.proc.kill()  # leave no orphan server behind a failed start
        self.proc.wait()
        raise RuntimeError(f"tunery serve did not become healthy:\n{self.log_path.read_text()[-4000:]}")

    def stop(self, sig: int | None = None) -> None:
        if self.proc and self.proc.poll() is None:
            if sig is None:
                self.proc.terminate()
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def create_key(self, user: str) -> str:
        out = subprocess.run(
            [TUNERY, "keys", "create", "--user", user, "--data-dir", str(self.data_dir)],
            env=self.env, check=True, capture_output=True, text=True,
        )
        return out.stdout.strip().splitlines()[-1]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def database_url(self) -> str:
        """The server's database: its SQLite file, or the PostgreSQL database it was given."""
        return self.env.get("TUNERY_DATABASE_URL") or f"sqlite:///{self.data_dir / 'tunery.db'}"


def server_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNERY_", "TOGETHER_"))}
    # The inference engine process starts with the first inference request, so that servers of tests
    # that never generate do not pay for it (tests/e2e/test_inference_sdk.py starts it eagerly).
    env.update({"TUNERY_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "TUNERY_INFERENCE_START": "lazy"})
    env.update(extra)
    return env


def start_server(tmp: Path, *serve_args: str, **env: str) -> LiveServer:
    """A live server on its own data dir; ``serve_args`` are more `tunery serve` options, ``env``
    overrides settings (``TUNERY_WORKERS="0"`` …). Its database is SQLite unless
    ``TUNERY_TEST_DATABASE=postgresql`` (see tests/backends.py)."""
    if "TUNERY_DATABASE_URL" not in env:
        env = {**server_database_env(), **env}
    data_dir = tmp / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    server = LiveServer(data_dir=data_dir, port=free_port(), env=server_env(data_dir, **env), serve_args=serve_args)
    server.start()
    return server


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in vision-language model, built once per session."""
    from tunery.models.builtin import ensure_builtin

    return ensure_builtin("tunery/tiny-vlm", tmp_path_factory.getbasetemp() / "builtin-models")


@pytest.fixture(scope="session")
def vlm_family(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """The tiny model of a vision-language family (``tests/vlm_families.py``), built once per session."""
    from tests.vlm_families import build_family

    root = tmp_path_factory.getbasetemp() / "vlm-families"
    root.mkdir(exist_ok=True)
    return lambda name: build_family(name, root)


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server per test module (no embedded worker); tests must not depend on each other's data."""
    server = start_server(tmp_path_factory.mktemp("server"), TUNERY_WORKERS="0")
    yield server
    server.stop()


def sdk_client(server: LiveServer):  # type: ignore[no-untyped-def]
    """The official SDK pointed at ``server``, without retries (a failure shows at once)."""
    from together import Together

    return Together(base_url=server.base_url, api_key=server.api_key, max_retries=0)


@pytest.fixture(scope="module")
def together_client(live_server: LiveServer):  # type: ignore[no-untyped-def]
    return sdk_client(live_server)


def cli_env(server: LiveServer, home: Path, api_key: str | None = None) -> dict[str, str]:
    """Environment for running the official `together` CLI against ``server`` with a clean HOME."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNERY_", "TOGETHER_"))}
    env.update({
        "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
        "TOGETHER_BASE_URL": server.base_url, "TOGETHER_API_KEY": api_key or server.api_key,
        "TOGETHER_TELEMETRY_DISABLED": "1", "TOGETHER_DISABLE_VERSION_CHECK": "1", "NO_COLOR": "1",
        "COLUMNS": "200",
    })
    return env
