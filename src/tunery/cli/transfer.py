"""Moving bytes with a progress bar: dataset uploads (the SDK's three-step flow) and model
downloads that resume an interrupted transfer with ``Range``.

Upload: ``POST /v1/files`` (metadata) → 302 to a signed URL → ``PUT`` the bytes there, streamed →
``POST /v1/files/{id}/preprocess``, which validates the dataset (a 400 names the bad line).

Download: bytes go to ``<output>.part``; a later run finds it and asks only for the rest
(``Range: bytes=N-``), then renames it into place once the size matches the server's.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import httpx
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from tunery.checksums import sha256_of
from tunery.cli.client import TIMEOUT, Client, CliError, raise_for_status
from tunery.cli.output import console

CHUNK = 1024 * 1024
FILE_TYPES = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}
DOWNLOAD_RETRIES = 5
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")
_FILENAME = re.compile(r'filename="?([^";]+)"?')


def progress_bar(show: bool = True) -> Progress:
    """Bytes, speed and time left, on stderr so that ``--json`` output on stdout stays clean."""
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=console(stderr=True), disable=not show)


def file_type_of(path: Path) -> str:
    try:
        return FILE_TYPES[path.suffix.lower()]
    except KeyError:
        raise CliError(f"{path}: unknown extension {path.suffix!r}; use .jsonl, .csv or .parquet") from None


def check_local_file(path: Path) -> None:
    if not path.is_file():
        raise CliError(f"file not found: {path}")


@dataclass
class Upload:
    file: dict[str, Any]  # the file object after validation
    existing: bool  # True when the server already had this exact file (nothing was sent)


def upload_file(client: Client, path: Path, purpose: str = "fine-tune", show_progress: bool = True) -> Upload:
    """Upload ``path`` and validate it on the server. Raises ``CliError`` with the server's message
    (naming the line) when the dataset is invalid."""
    check_local_file(path)
    form = {"purpose": purpose, "file_name": path.name, "file_type": file_type_of(path), "checksum": sha256_of(path)}
    multipart = {k: (None, v) for k, v in form.items()}  # a form without file bytes, as the SDK sends it
    try:
        created = client.request("POST", "/v1/files", files=multipart, follow_redirects=False)
    except CliError as e:
        if e.status == 409 and e.body.get("file_id"):
            return Upload(client.get(f"/v1/files/{e.body['file_id']}"), existing=True)
        raise
    location, file_id = created.headers.get("location"), created.headers.get("x-together-file-id")
    if not location or not file_id:
        raise CliError(f"unexpected answer to POST /v1/files (HTTP {created.status_code}): no upload URL")
    _put(location, path, show_progress)
    try:
        return Upload(client.post(f"/v1/files/{file_id}/preprocess"), existing=False)
    except CliError as e:
        if e.status == 400:
            raise CliError(f"{path.name} is not a valid dataset: {e.message} (kept as {file_id})", e.status,
                           e.body) from None
        raise


def _put(url: str, path: Path, show_progress: bool) -> None:
    """Stream the file to the signed URL: no Authorization (the URL carries its own token)."""
    size = path.stat().st_size
    with progress_bar(show_progress) as bar, open(path, "rb") as f:
        task = bar.add_task(f"Uploading {path.name}", total=size)

        def chunks() -> Iterator[bytes]:
            while chunk := f.read(CHUNK):
                bar.advance(task, len(chunk))
                yield chunk

        try:
            response = httpx.put(url, content=chunks(), headers={"Content-Length": str(size)}, timeout=TIMEOUT)
        except httpx.TransportError as e:
            raise CliError(f"uploading {path.name} failed: {e}") from None
    raise_for_status(response)


@dataclass
class Download:
    path: Path
    size: int
    resumed_from: int  # bytes already on disk from an interrupted download (0: a fresh one)


@dataclass
class _Remote:
    total: int
    filename: str


def download_model(client: Client, ft_id: str, checkpoint: str | None, step: int | None, output: Path | None,
                   show_progress: bool = True) -> Download:
    """Download a job's model archive to ``output`` (a file path, or a directory to put it in;
    default: the server's file name in the current directory), resuming from ``<output>.part``."""
    params = {k: v for k, v in {"ft_id": ft_id, "checkpoint": checkpoint, "checkpoint_step": step}.items()
              if v is not None}
    remote = _probe(client, params)
    path = output if output is not None and not output.is_dir() else (output or Path.cwd()) / remote.filename
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    resumed_from: int | None = None
    with progress_bar(show_progress) as bar:
        task = bar.add_task(f"Downloading {path.name}", total=remote.total)
        for attempt in range(DOWNLOAD_RETRIES + 1):
            have = part.stat().st_size if part.exists() else 0
            if have == remote.total:
                break
            try:
                offset = _fetch(client, params, part, have, remote.total, bar, task)
                resumed_from = offset if resumed_from is None else resumed_from
                break
            except (httpx.ReadError, httpx.RemoteProtocolError, httpx.ReadTimeout):
                if attempt == DOWNLOAD_RETRIES:
                    raise CliError(f"the download kept failing; run the same command again to resume from "
                                   f"{part}") from None
    size = part.stat().st_size
    if size != remote.total:
        raise CliError(f"downloaded {size} bytes but the server has {remote.total}; run again to resume")
    part.replace(path)
    return Download(path, size, resumed_from or 0)


def _probe(client: Client, params: dict[str, Any]) -> _Remote:
    """Ask for one byte: the answer's ``Content-Range`` has the total size, and its
    ``Content-Disposition`` the archive's name."""
    with client.stream("GET", "/v1/finetune/download", params=params, headers={"Range": "bytes=0-0"}) as r:
        m = _CONTENT_RANGE.match(r.headers.get("content-range", ""))
        total = int(m.group(3)) if m else int(r.headers.get("content-length", "0"))
        name = _FILENAME.search(r.headers.get("content-disposition", ""))
    filename = Path(name.group(1)).name if name else f"{params['ft_id'].replace(':', '-')}.tar.zst"
    return _Remote(total, filename)


def _fetch(client: Client, params: dict[str, Any], part: Path, have: int, total: int, bar: Progress,
           task: Any) -> int:
    """Append the rest of the archive to ``part`` (which holds ``have`` bytes); returns the offset the
    server actually resumed from (0 when it sent the whole archive)."""
    have = have if have < total else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with client.stream("GET", "/v1/finetune/download", params=params, headers=headers) as r:
        if have:
            m = _CONTENT_RANGE.match(r.headers.get("content-range", ""))
            if r.status_code == 206 and (m is None or int(m.group(1)) != have):
                part.unlink()
                raise CliError(f"the server answered bytes={have}- with {r.headers.get('content-range')!r}; "
                               "removed the partial download, run again")
            if r.status_code != 206:
                have = 0  # the server sent the whole archive: start over
        bar.update(task, completed=have)
        with open(part, "r+b" if have else "wb") as f:
            _write_from(f, have, r, bar, task)
    return have


def _write_from(f: BinaryIO, offset: int, response: httpx.Response, bar: Progress, task: Any) -> None:
    f.seek(offset)
    f.truncate()
    for chunk in response.iter_bytes(CHUNK):
        f.write(chunk)
        bar.advance(task, len(chunk))
