"""How a request body reaches the staging directory, in constant memory (``tunery.storage.staging``):
``receive`` for raw bytes (the signed PUT URLs), ``receive_form`` for a multipart form whose file part
streams to disk while its small text fields stay in memory (``POST /v1/files`` with a ``file``
part, ``POST /v1/files/upload``, OpenAI's upload parts)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tunery.errors import InvalidRequest, RequestTimeout
from tunery.storage.staging import BodyPump, StagedFile, too_large


class BodyIdleTimeout:
    """ASGI middleware: a request whose body sends nothing for ``idle_s`` seconds fails with
    ``RequestTimeout`` (408) where it is being read, so a stalled upload never holds its upload URL,
    its staged file and its connection forever. Once the body is complete, waiting on the
    connection (a streamed download listening for a disconnect) is not timed."""

    def __init__(self, app: ASGIApp, idle_s: float):
        self.app = app
        self.idle_s = idle_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_done = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.idle_s)
            except TimeoutError:
                raise RequestTimeout(f"no bytes of the request body arrived for {self.idle_s:g} s; "
                                     "the request was abandoned, send it again") from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        await self.app(scope, timed_receive, send)


def announced_length(request: Request) -> int:
    announced = request.headers.get("content-length", "")
    return int(announced) if announced.isascii() and announced.isdigit() else 0


def check_announced_length(request: Request, limit: int, slack: int = 0) -> None:
    """413 before reading anything when ``Content-Length`` already says the body is too big."""
    if announced_length(request) > limit + slack:
        raise too_large(limit)


async def receive(chunks: AsyncIterator[bytes], staged: StagedFile) -> StagedFile:
    """Stream a request body into ``staged``; on any failure the staged file is deleted."""
    pump = BodyPump(staged)
    try:
        async for chunk in chunks:
            if chunk:
                pump.feed(chunk)
                await pump.maybe_flush()
        return await pump.finish()
    except BaseException:
        await pump.abort()
        raise


class FormParts:
    """python-multipart callbacks for an upload form: the part named ``file_field`` (``file``, or
    ``data`` for an OpenAI upload part) streams into a ``BodyPump``; every other part is a small text
    field kept in memory (at most 64 KiB)."""

    MAX_FIELD_BYTES = 64 * 1024
    MAX_FIELDS = 32

    def __init__(self, pump: BodyPump, file_field: str = "file"):
        self.pump = pump
        self.file_field = file_field
        self.fields: dict[str, bytearray] = {}
        self.filename: str | None = None
        self.file_parts = 0
        self.ended = False
        self._headers: dict[bytes, bytes] = {}
        self._field = bytearray()
        self._value = bytearray()
        self._target: str | None = None

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._headers.clear, "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value, "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished, "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end, "on_end": self.on_end,
        }

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[bytes(self._field).lower()] = bytes(self._value)
        self._field.clear()
        self._value.clear()

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if name == self.file_field:
            self.file_parts += 1
            if self.file_parts > 1:
                raise InvalidRequest(f"send exactly one part named `{name}`", param=name)
            filename = params.get(b"filename")
            self.filename = filename.decode("utf-8", "replace") if filename else None
        elif name not in self.fields and len(self.fields) >= self.MAX_FIELDS:
            raise InvalidRequest(f"too many form fields (at most {self.MAX_FIELDS})")
        else:
            self.fields[name] = bytearray()
        self._target = name

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._target == self.file_field:
            self.pump.feed(data[start:end])
        elif self._target is not None:
            value = self.fields[self._target]
            value += data[start:end]
            if len(value) > self.MAX_FIELD_BYTES:
                raise InvalidRequest(f"form field {self._target!r} is longer than {self.MAX_FIELD_BYTES} bytes",
                                     param=self._target)

    def on_part_end(self) -> None:
        self._target = None

    def on_end(self) -> None:
        self.ended = True

    def text(self, name: str) -> str | None:
        value = self.fields.get(name)
        return None if value is None else value.decode("utf-8", "replace").strip()

    def texts(self) -> dict[str, str]:
        return {name: value.decode("utf-8", "replace").strip() for name, value in self.fields.items()}


def is_multipart(request: Request) -> bool:
    content_type, params = parse_options_header(request.headers.get("content-type"))
    return content_type == b"multipart/form-data" and bool(params.get(b"boundary"))


async def receive_form(request: Request, staged: StagedFile, file_field: str = "file",
                       require_file: bool = True) -> FormParts:
    """Parse a ``multipart/form-data`` body, streaming its ``file_field`` part into ``staged``.

    On any failure the staged file is deleted; a malformed body is a 400, and so is a form without
    the file part when ``require_file``.
    """
    if not is_multipart(request):
        staged.discard()
        raise InvalidRequest(f"send the file as multipart/form-data with a part named `{file_field}`",
                             param=file_field)
    _, params = parse_options_header(request.headers.get("content-type"))
    pump = BodyPump(staged)
    form = FormParts(pump, file_field)
    try:
        parser = MultipartParser(params[b"boundary"], callbacks=form.callbacks())  # type: ignore[arg-type]
        async for chunk in request.stream():
            parser.write(chunk)
            await pump.maybe_flush()
        parser.finalize()
        if not form.ended:
            raise InvalidRequest("the multipart body ended before its closing boundary")
        if form.file_parts == 0 and require_file:
            raise InvalidRequest(f"the form has no part named `{file_field}`", param=file_field)
        await pump.finish()
        return form
    except FormParserError as error:
        await pump.abort()
        raise InvalidRequest(f"the multipart body is malformed: {error}") from None
    except BaseException:
        await pump.abort()
        raise
