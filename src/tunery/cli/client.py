"""The HTTP client the `tunery` client commands share: where the server is, which key to send, and
every failure turned into one readable line (``CliError``, printed by ``OneLineErrors``), never a
traceback.

Resolution order: ``--base-url`` → ``$TUNERY_BASE_URL`` → ``http://127.0.0.1:8000``, and
``--api-key`` → ``$TUNERY_API_KEY`` → the key ``tunery serve`` wrote to
``<$TUNERY_DATA_DIR or ~/.tunery>/api_key``.

    client = Client.connect(base_url, api_key)
    job = client.get(f"/v1/fine-tunes/{job_id}")
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from typer.core import TyperGroup

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
TIMEOUT = httpx.Timeout(60.0, connect=5.0)

BaseUrl = Annotated[
    str | None,
    typer.Option("--base-url", envvar="TUNERY_BASE_URL", show_envvar=True,
                 help=f"The tunery server (default {DEFAULT_BASE_URL}; no /v1)."),
]
ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", envvar="TUNERY_API_KEY", show_envvar=True,
                 help="API key (default: the key in $TUNERY_DATA_DIR/api_key or ~/.tunery/api_key)."),
]


class CliError(Exception):
    """A failed command, as the one line to show the user: for a failed API call, the server's
    ``error.message``, with ``status`` the HTTP status and ``body`` the parsed JSON error body;
    ``status`` is 0 when the server was not reached or the problem is local."""

    def __init__(self, message: str, status: int = 0, body: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.body: Mapping[str, Any] = body or {}


def local_data_dir() -> Path:
    return Path(os.environ.get("TUNERY_DATA_DIR") or Path.home() / ".tunery").expanduser()


def resolve_base_url(flag: str | None) -> str:
    """The server root without a trailing ``/`` or ``/v1`` (paths below always start with /v1)."""
    url = (flag or os.environ.get("TUNERY_BASE_URL") or DEFAULT_BASE_URL).strip().rstrip("/")
    return url.removesuffix("/v1")


def resolve_api_key(flag: str | None) -> str:
    key = flag or os.environ.get("TUNERY_API_KEY")
    if key:
        return key.strip()
    path = local_data_dir() / "api_key"
    try:
        return path.read_text().strip()
    except OSError:
        raise CliError(f"no API key: pass --api-key, set TUNERY_API_KEY, or start `tunery serve` once so it "
                       f"writes {path}") from None


def error_message(response: httpx.Response) -> str:
    """The server's ``error.message`` (Together's envelope), else a short description."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(body.get("message"), str):
            return str(body["message"])
    text = response.text.strip().splitlines()[0][:200] if response.text.strip() else response.reason_phrase
    return f"HTTP {response.status_code}: {text}"


def raise_for_status(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        body = response.json()
    except ValueError:
        body = None
    message = error_message(response)
    if response.status_code == 401:
        message += " (check --api-key / TUNERY_API_KEY)"
    raise CliError(message, response.status_code, body if isinstance(body, dict) else None)


class Client:
    """A thin, synchronous JSON client for one tunery server."""

    def __init__(self, base_url: str, api_key: str, transport: httpx.BaseTransport | None = None):
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {api_key}"},
                                 timeout=TIMEOUT, transport=transport)

    @classmethod
    def connect(cls, base_url: str | None, api_key: str | None) -> Client:
        return cls(resolve_base_url(base_url), resolve_api_key(api_key))

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send a request; raise ``CliError`` for any non-2xx answer (and for 3xx, unless
        ``follow_redirects=False`` was asked for, when the caller reads the redirect)."""
        with self.connection_errors():
            response = self.http.request(method, path, **kwargs)
        if not (kwargs.get("follow_redirects") is False and response.is_redirect):
            raise_for_status(response)
        return response

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None}).json()

    def post(self, path: str, json: Any = None) -> Any:
        return self.request("POST", path, json=json).json()

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path).json()

    @contextmanager
    def stream(self, method: str, url: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """A streamed response; error statuses raise ``CliError`` (their small body is read first)."""
        with self.connection_errors(), self.http.stream(method, url, **kwargs) as response:
            if not response.is_success:
                response.read()
                raise_for_status(response)
            yield response

    @contextmanager
    def connection_errors(self) -> Iterator[None]:
        try:
            yield
        except httpx.ConnectError:
            raise CliError(f"cannot reach the tunery server at {self.base_url}: is `tunery serve` running? "
                           "(set --base-url or TUNERY_BASE_URL)") from None
        except httpx.TimeoutException:
            raise CliError(f"the tunery server at {self.base_url} did not answer in time") from None
        except httpx.TransportError as e:
            raise CliError(f"connection to {self.base_url} failed: {e}") from None

    def close(self) -> None:
        self.http.close()


class OneLineErrors(TyperGroup):
    """The top-level command group: an ``CliError`` anywhere below prints ``Error: <message>`` on
    stderr and exits 1 (Typer would otherwise draw a boxed panel)."""

    def invoke(self, ctx: Any) -> Any:  # Typer's vendored click.Context
        try:
            return super().invoke(ctx)
        except CliError as e:
            typer.echo(f"Error: {e.message}", err=True)
            raise typer.Exit(1) from None
