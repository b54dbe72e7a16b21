"""A stand-in for the Hugging Face hub, at the HTTP seam: the real ``huggingface_hub`` client
(pointed at it with ``HF_ENDPOINT``) creates a repository and commits files to it, and downloads a
repository's files. It answers only what small files need — repo creation, model-card validation,
``preupload`` (every file "regular", so contents travel inline in the commit) and ``commit``; a
revision's file list and each file (``resolve``) — and keeps the files in memory. Writes need the
token; reads need it only for a private repository."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

COMMIT = "f" * 40  # every repository has one revision, main


@dataclass
class FakeHub:
    token: str
    url: str = ""
    repos: dict[str, dict[str, bytes]] = field(default_factory=dict)
    private: dict[str, bool] = field(default_factory=dict)
    # Files downloaded (GET), in order, as "org/name/path".
    downloads: list[str] = field(default_factory=list)

    def add(self, repo: str, src: Path) -> None:
        """A public repository holding the files under ``src``."""
        self.repos[repo] = {str(f.relative_to(src)): f.read_bytes() for f in src.rglob("*") if f.is_file()}
        self.private[repo] = False

    def write(self, repo: str, dest: Path) -> Path:
        """The repository's files, written under ``dest``."""
        for path, content in self.repos[repo].items():
            (dest / path).parent.mkdir(parents=True, exist_ok=True)
            (dest / path).write_bytes(content)
        return dest

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.middleware("http")
        async def authorise(request: Request, call_next):  # type: ignore[no-untyped-def]
            if request.method == "POST" and request.headers.get("authorization") != f"Bearer {self.token}":
                return JSONResponse({"error": "Invalid credentials in Authorization header"}, status_code=401)
            return await call_next(request)

        def readable(repo: str, request: Request) -> Response | None:
            """The hub's 404 for a repository that is not there, or private without the token."""
            authorised = request.headers.get("authorization") == f"Bearer {self.token}"
            if repo not in self.repos or (self.private.get(repo) and not authorised):
                return JSONResponse({"error": "Repository not found"}, status_code=404,
                                    headers={"X-Error-Code": "RepoNotFound"})
            return None

        @app.get("/api/models/{org}/{name}/revision/{revision}")
        async def revision_info(org: str, name: str, revision: str, request: Request) -> Response:
            repo = f"{org}/{name}"
            if (refused := readable(repo, request)) is not None:
                return refused
            if revision not in ("main", COMMIT):
                return JSONResponse({"error": f"Invalid rev id: {revision}"}, status_code=404,
                                    headers={"X-Error-Code": "RevisionNotFound"})
            return JSONResponse({"id": repo, "modelId": repo, "sha": COMMIT, "private": self.private[repo],
                                 "siblings": [{"rfilename": path} for path in sorted(self.repos[repo])]})

        @app.get("/api/models/{org}/{name}/tree/{revision}")
        async def tree(org: str, name: str, revision: str, request: Request) -> Response:
            repo = f"{org}/{name}"
            if (refused := readable(repo, request)) is not None:
                return refused
            return JSONResponse([{"type": "file", "path": path, "size": len(content),
                                  "oid": hashlib.sha1(content).hexdigest()}
                                 for path, content in sorted(self.repos[repo].items())])

        @app.api_route("/{org}/{name}/resolve/{revision}/{path:path}", methods=["GET", "HEAD"])
        async def resolve(org: str, name: str, revision: str, path: str, request: Request) -> Response:
            repo = f"{org}/{name}"
            if (refused := readable(repo, request)) is not None:
                return refused
            content = self.repos[repo].get(path)
            if content is None or revision not in ("main", COMMIT):
                return JSONResponse({"error": "Entry not found"}, status_code=404,
                                    headers={"X-Error-Code": "EntryNotFound"})
            headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(content).hexdigest()}"',
                       "Content-Length": str(len(content))}
            if request.method == "HEAD":
                return Response(headers=headers)
            self.downloads.append(f"{repo}/{path}")
            return Response(content, headers=headers, media_type="application/octet-stream")

        @app.post("/api/repos/create")
        async def create(request: Request) -> dict[str, str]:
            body = await request.json()
            repo = f"{body['organization']}/{body['name']}"
            self.repos.setdefault(repo, {})
            self.private[repo] = body.get("visibility") == "private" or body.get("private") is True
            return {"url": f"{self.url}/{repo}"}

        @app.post("/api/validate-yaml")  # a README.md's model-card metadata is checked before a commit
        async def validate_yaml() -> dict[str, list[str]]:
            return {"errors": [], "warnings": []}

        @app.post("/api/models/{org}/{name}/preupload/{revision}")
        async def preupload(org: str, name: str, revision: str, request: Request) -> dict[str, object]:
            files = (await request.json())["files"]
            return {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}

        @app.post("/api/models/{org}/{name}/commit/{revision}")
        async def commit(org: str, name: str, revision: str, request: Request) -> dict[str, str]:
            repo = self.repos[f"{org}/{name}"]
            for line in (await request.body()).splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    repo[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            return {"commitUrl": f"{self.url}/{org}/{name}/commit/{'0' * 40}", "commitOid": "0" * 40}

        return app


@contextmanager
def running_hub(token: str) -> Iterator[FakeHub]:
    """A FakeHub served on 127.0.0.1 from a thread of this process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hub = FakeHub(token=token, url=f"http://127.0.0.1:{port}")
    server = uvicorn.Server(uvicorn.Config(hub.app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the fake hub did not start"
        time.sleep(0.05)
    try:
        yield hub
    finally:
        server.should_exit = True
        thread.join(10)
