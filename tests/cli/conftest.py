"""Run the `tunery` CLI as a subprocess against one live server (with an embedded worker) shared by
the CLI tests; each test makes its own files and jobs."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TUNERY, LiveServer, start_server


@pytest.fixture(scope="session")
def cli_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("cli"), TUNERY_WORKERS="1", TUNERY_HEARTBEAT_INTERVAL_S="0.5",
                          OMP_NUM_THREADS="1")
    yield server
    server.stop()


def client_env(server: LiveServer | None = None, **extra: str) -> dict[str, str]:
    """A clean environment that points the CLI at ``server`` through its data dir's key file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNERY_", "TOGETHER_"))}
    env.update({"NO_COLOR": "1", "COLUMNS": "200", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    if server is not None:
        env.update({"TUNERY_BASE_URL": server.base_url, "TUNERY_DATA_DIR": str(server.data_dir)})
    env.update(extra)
    return env


def tunery(server: LiveServer | None, *args: str | Path, timeout: float = 120, cwd: Path | None = None,
           **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TUNERY, *map(str, args)], env=client_env(server, **env), capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Failed, ending with one readable ``Error: …`` line on stderr (no traceback, no panel; a
    progress bar's last state may come before it)."""
    assert result.returncode != 0, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    assert "Traceback" not in result.stderr and "╭" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
