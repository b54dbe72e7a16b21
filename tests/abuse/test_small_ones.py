"""Finding 8's small ones: ``Content-Disposition`` broke (500) on a non-Latin-1 file name; signing
out of the dashboard left the cookie valid for 7 days; ``from_hf_model`` without a token fell back
to the operator's own hub login. (Its numbers and the worker's escalation are in
test_create_limits.py and test_workers.py.)"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest

from tests.abuse.conftest import Tenant, shared_server
from tests.conftest import LiveServer, free_port
from tests.sample_data import text_file
from tunery.errors import NotFound
from tunery.models.registry import resolve


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, Tenant, Tenant]]:
    server, alice, bob = shared_server(tmp_path_factory.mktemp("small"), TUNERY_WORKERS="0")
    yield server, alice, bob
    server.stop()


@pytest.mark.slow  # a live server
def test_a_file_name_in_any_script_downloads(tenants: tuple[LiveServer, Tenant, Tenant], tmp_path: Path) -> None:
    _, alice, _ = tenants
    name = 'données "数据" x.jsonl'
    path = text_file(tmp_path / "t.jsonl", n=3)
    uploaded = alice.http.post("/v1/files/upload", files={"file": (name, path.read_bytes())},
                               data={"purpose": "fine-tune", "file_name": name})
    assert uploaded.status_code == 200, uploaded.text
    r = alice.http.get(f"/v1/files/{uploaded.json()['id']}/content")
    assert r.status_code == 200 and r.content == path.read_bytes()
    header = r.headers["content-disposition"]
    assert header.startswith('attachment; filename="') and header.isascii()
    assert unquote(re.search(r"filename\*=UTF-8''(\S+)", header).group(1)) == name  # type: ignore[union-attr]


def sign_in(server: LiveServer, key: str) -> httpx.Client:
    web = httpx.Client(base_url=server.base_url, follow_redirects=False)
    form = web.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    assert web.post("/login", data={"api_key": key, "csrf": csrf, "next": "/"}).status_code == 303
    return web


@pytest.mark.slow  # a live server
def test_signing_out_ends_the_session_on_the_server(tenants: tuple[LiveServer, Tenant, Tenant]) -> None:
    server, alice, _ = tenants
    web = sign_in(server, alice.key)
    cookie = web.cookies["tunery_session"]
    page = web.get("/")
    assert page.status_code == 200
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    assert web.post("/logout", data={"csrf": csrf}).status_code == 303
    # Someone who copied the cookie before the sign-out (or a browser that kept it) gets nowhere.
    replay = httpx.get(f"{server.base_url}/", cookies={"tunery_session": cookie}, follow_redirects=False)
    assert replay.status_code == 303 and replay.headers["location"].startswith("/login")


class Hub(BaseHTTPRequestHandler):
    """A hub where the model is private: records what credentials it was sent."""

    seen: list[str | None] = []

    def do_GET(self) -> None:
        Hub.seen.append(self.headers.get("authorization"))
        self.send_response(401)  # what the hub answers for a private or missing repo
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error": "Invalid credentials"}')

    do_HEAD = do_GET

    def log_message(self, *args: object) -> None:
        return None


def test_hub_look_ups_never_use_the_servers_own_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    port = free_port()
    httpd = ThreadingHTTPServer(("127.0.0.1", port), Hub)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_the_operators_own_token")  # the worker's own hub login
    try:
        Hub.seen.clear()
        with pytest.raises(NotFound):  # a job with no token of its own
            resolve("acme/private-model", cache_dir=tmp_path / "models", allow_network=True,
                    hf_cache_dir=tmp_path / "hf")
        assert Hub.seen and all(seen is None for seen in Hub.seen), Hub.seen
        Hub.seen.clear()
        with pytest.raises(NotFound):  # a job with its own token sends that one
            resolve("acme/private-model", cache_dir=tmp_path / "models", allow_network=True, token="hf_jobs_token",
                    hf_cache_dir=tmp_path / "hf")
        assert Hub.seen and set(Hub.seen) == {"Bearer hf_jobs_token"}, Hub.seen
    finally:
        httpd.shutdown()
