"""What the API forwards through: ``EngineClient.open`` sends a ``GenerateRequest`` to an engine node
and returns its event stream, or raises the engine's refusal as a ``TuneryError`` with the engine's
status, so the API answers it in its usual error shape.

With several nodes, each base model has a home node (a hash of its name), so the same model stays warm
in one place; when that node cannot be reached the next one is tried. A node that is starting or
restarting is waited for, up to ``start_timeout_s``.
"""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from tunery.errors import TuneryError
from tunery.inference.protocol import GenerateRequest

RETRY_EVERY_S = 0.25


class EngineError(TuneryError):
    """The inference engine refused the request."""

    def __init__(self, status: int, message: str, type_: str = "server_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message, param=param, code=code)
        self.status_code = status
        self.error_type = type_


class EngineClient:
    def __init__(self, urls: list[str], token: str, start_timeout_s: float = 120.0,
                 ensure_started: Callable[[], None] | None = None):
        self.urls = urls
        self.token = token
        self.start_timeout_s = start_timeout_s
        self.ensure_started = ensure_started
        # No read timeout: a cold start (loading a model) and long generations are both legitimate waits.
        self._http: httpx.AsyncClient | None = None

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:  # created on first use, inside the server's event loop
            self._http = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=5.0),
                                           headers={"Authorization": f"Bearer {self.token}"})
        return self._http

    def nodes_for(self, base: str) -> list[str]:
        if not self.urls:
            raise EngineError(503, "no inference engine is configured (set TUNERY_INFERENCE_URLS, or run "
                                   "`tunery serve`)")
        home = zlib.crc32(base.encode()) % len(self.urls)
        return self.urls[home:] + self.urls[:home]

    async def open(self, request: GenerateRequest) -> AsyncIterator[dict[str, Any]]:
        if self.ensure_started is not None:
            self.ensure_started()
        body = request.model_dump_json().encode()
        nodes = self.nodes_for(request.model.base)
        deadline = time.monotonic() + self.start_timeout_s
        attempt = 0
        while True:
            url = nodes[attempt % len(nodes)]
            attempt += 1
            try:
                response = await self.http.send(
                    self.http.build_request("POST", f"{url}/generate", content=body,
                                            headers={"Content-Type": "application/json"}), stream=True)
                break
            except httpx.TransportError:  # not up yet, restarting, or died with our connection open
                if time.monotonic() > deadline:
                    raise EngineError(503, "the inference engine is not reachable; it may be restarting, "
                                           "retry shortly") from None
                if attempt % len(nodes) == 0:
                    await asyncio.sleep(RETRY_EVERY_S)
        if response.status_code != 200:
            await response.aread()
            await response.aclose()
            raise _refusal(response)
        return _events(response)


def _refusal(response: httpx.Response) -> EngineError:
    try:
        err = response.json()["error"]
        return EngineError(response.status_code, str(err["message"]), str(err.get("type") or "server_error"),
                           err.get("param"), err.get("code"))
    except (ValueError, KeyError, TypeError):
        return EngineError(502, f"the inference engine answered HTTP {response.status_code}")


async def _events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    try:
        async for line in response.aiter_lines():
            if line.strip():
                yield json.loads(line)
    except httpx.HTTPError:
        yield {"type": "error", "message": "the inference engine stopped during generation; retry the request"}
    finally:
        await response.aclose()
