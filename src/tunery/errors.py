"""The domain error tree.

Every error a user can cause or see is one of these; the API maps each class to one HTTP status
in ``tunery.api.errors`` and renders ``{"error": {"message", "type", "param", "code"}}``. A class's
docstring is its default message.

    TuneryError                      500 internal_error
    ├── InvalidRequest               400 invalid_request_error
    │   └── DatasetInvalid           400 invalid_request_error  (message names the line)
    ├── Unauthorized                 401 authentication_error
    ├── Forbidden                    403 permission_error
    ├── NotFound                     404 not_found_error
    ├── RequestTimeout               408 invalid_request_error  (the body stopped arriving)
    ├── Conflict                     409 conflict_error
    ├── PayloadTooLarge              413 invalid_request_error
    ├── QuotaExceeded                429 insufficient_quota     (not worth retrying)
    ├── Busy                         503 server_busy            (retry after a few seconds)
    └── TrainingFailed               (worker only) the training child failed; user_error or error
"""

from __future__ import annotations


class TuneryError(Exception):
    """Internal error."""

    status_code = 500
    error_type = "internal_error"

    def __init__(self, message: str | None = None, *, param: str | None = None, code: str | None = None):
        self.message = message or (self.__class__.__doc__ or "Error").strip()
        self.param = param
        self.code = code
        super().__init__(self.message)


class InvalidRequest(TuneryError):
    """The request is invalid."""

    status_code = 400
    error_type = "invalid_request_error"


class DatasetInvalid(InvalidRequest):
    """The dataset is invalid."""

    def __init__(self, message: str, *, line: int | None = None, param: str | None = None):
        super().__init__(message, param=param, code="invalid_format")
        self.line = line


class Unauthorized(TuneryError):
    """Invalid or missing API key. Send `Authorization: Bearer <key>`."""

    status_code = 401
    error_type = "authentication_error"


class Forbidden(TuneryError):
    """You are not allowed to do this."""

    status_code = 403
    error_type = "permission_error"


class NotFound(TuneryError):
    """Not found."""

    status_code = 404
    error_type = "not_found_error"


class RequestTimeout(TuneryError):
    """The request body stopped arriving."""

    status_code = 408
    error_type = "invalid_request_error"


class Conflict(TuneryError):
    """The request conflicts with the current state."""

    status_code = 409
    error_type = "conflict_error"


class PayloadTooLarge(TuneryError):
    """The upload is larger than this server accepts."""

    status_code = 413
    error_type = "invalid_request_error"


class QuotaExceeded(TuneryError):
    """Your quota does not allow this."""

    status_code = 429
    error_type = "insufficient_quota"
    # SDKs retry a 429 by default; waiting does not raise a quota.
    headers = {"x-should-retry": "false"}


class Busy(TuneryError):
    """The server is busy; retry in a few seconds."""

    status_code = 503
    error_type = "server_busy"
    headers = {"Retry-After": "5"}


class TrainingFailed(TuneryError):
    """Training failed."""

    def __init__(self, message: str, *, user_error: bool = False):
        super().__init__(message)
        self.user_error = user_error
