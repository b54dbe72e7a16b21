"""The abuse suite (issue 16): each test reproduces one way a tenant could slow down, crash or read
another's work on a shared server — with sizes scaled down to stay quick — and asserts the fixed
behaviour: the other tenant's work carries on, the server's memory stays within a stated bound,
the refused request gets a 4xx that names the problem, nothing accepted is lost."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import LiveServer, start_server

MODEL = "tunery/tiny-llama"


@dataclass
class Tenant:
    """One user of a shared server: the official SDK and a plain HTTP client, both with its key."""

    name: str
    key: str
    sdk: object
    http: httpx.Client


def tenant(server: LiveServer, name: str) -> Tenant:
    from together import Together

    key = server.create_key(name)
    return Tenant(name, key, Together(base_url=server.base_url, api_key=key, max_retries=0),
                  httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=120))


def shared_server(tmp: Path, **env: str) -> tuple[LiveServer, Tenant, Tenant]:
    """A live server with two tenants, alice and bob."""
    server = start_server(tmp, **env)
    return server, tenant(server, "alice"), tenant(server, "bob")


def rss_bytes(pid: int) -> int:
    """Resident memory of one process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")
