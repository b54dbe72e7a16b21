"""Streaming a blob over HTTP with ``Range`` support (206 / ``Content-Range`` / 416)."""

from __future__ import annotations

import re
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from tunery.api.errors import error_response
from tunery.storage import BlobStore

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """``(start, end_exclusive)`` for a single satisfiable range, None for no/ignored Range, or
    ``"unsatisfiable"``. Multi-range requests are served whole (allowed by RFC 9110)."""
    if not header:
        return None
    m = _RANGE.match(header.strip())
    if m is None:
        return None
    first, last = m.groups()
    if first == "" and last == "":
        return None
    if first == "":
        length = int(last)
        if length == 0:
            return "unsatisfiable"
        return max(0, size - length), size
    start = int(first)
    end = size if last == "" else min(int(last) + 1, size)
    if start >= size or start >= end:
        return "unsatisfiable"
    return start, end


def content_disposition(filename: str) -> str:
    """``attachment`` naming ``filename`` (RFC 6266): a printable-ASCII ``filename`` any client
    reads, and, when the name is anything else, its exact UTF-8 form as ``filename*`` (RFC 5987).
    A header must be Latin-1, and a quote, backslash or line break in a name must not break it."""
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in filename) or "download"
    header = f'attachment; filename="{fallback}"'
    if fallback != filename:
        header += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return header


def blob_response(request: Request, blobs: BlobStore, key: str, size: int, *, filename: str | None = None,
                  media_type: str = "application/octet-stream") -> Response:
    """A 200 with the whole blob, or a 206 with the requested range."""
    headers = {"Accept-Ranges": "bytes"}
    if filename:
        headers["Content-Disposition"] = content_disposition(filename)
    span = parse_range(request.headers.get("range"), size)
    if span == "unsatisfiable":
        return error_response(416, f"requested range not satisfiable (size {size})", "invalid_request_error",
                              "Range", headers={"Content-Range": f"bytes */{size}"})
    if span is None:
        headers["Content-Length"] = str(size)
        return StreamingResponse(blobs.open(key), media_type=media_type, headers=headers)
    assert isinstance(span, tuple)
    start, end = span
    headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    headers["Content-Length"] = str(end - start)
    return StreamingResponse(blobs.open(key, start, end), status_code=206, media_type=media_type, headers=headers)
