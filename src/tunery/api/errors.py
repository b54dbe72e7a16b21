"""The one place errors become HTTP responses: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunery.errors import InvalidRequest, TuneryError

log = logging.getLogger("tunery.api")

_HTTP_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    416: "invalid_request_error",
    422: "invalid_request_error",
}


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(
    status: int, message: str, type_: str, param: str | None = None, code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(message, type_, param, code), status_code=status, headers=headers)


def _tunery_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TuneryError)
    headers = getattr(exc, "headers", None)
    return error_response(exc.status_code, exc.message, exc.error_type, exc.param, exc.code, headers)


def _problems(errors: Sequence[Any]) -> tuple[str, str | None]:
    """Pydantic's errors as one message naming each field, and the first field's name."""
    problems = []
    first_param = None
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header", "form")]
        param = ".".join(loc) or None
        first_param = first_param or param
        problems.append(f"{param}: {err.get('msg')}" if param else str(err.get("msg")))
    return "; ".join(problems) or "invalid request", first_param


def invalid_request(error: ValidationError) -> InvalidRequest:
    """A request body that failed its schema, as the 400 OpenAI's dialect answers it with."""
    message, param = _problems(error.errors())
    return InvalidRequest(message, param=param)


def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message, param = _problems(exc.errors())
    # Not FastAPI's 422: Together and OpenAI both answer a malformed request with 400, which their
    # SDKs raise as BadRequestError — what users' code catches.
    return error_response(400, message, "invalid_request_error", param)


def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    type_ = _HTTP_TYPES.get(exc.status_code, "invalid_request_error" if exc.status_code < 500 else "internal_error")
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    return error_response(exc.status_code, message, type_, headers=getattr(exc, "headers", None))


def _data_error(request: Request, exc: Exception) -> JSONResponse:
    # The database refused a value from the request that no schema rule caught: PostgreSQL
    # rejects NUL characters in text and integers beyond 64 bits (SQLite takes both).
    log.info("database refused a value on %s %s: %s", request.method, request.url.path, exc)
    return error_response(400, "a value in the request cannot be stored: text must not contain NUL characters "
                               "and integers must fit in 64 bits", "invalid_request_error")


def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal server error; the server log has the details", "internal_error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(TuneryError, _tunery_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(DataError, _data_error)
    app.add_exception_handler(Exception, _unexpected_error)
