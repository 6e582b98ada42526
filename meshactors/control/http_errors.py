"""HTTP error answers: the codes only HTTP has, and the one table from codes to statuses."""

from __future__ import annotations

import enum

from meshactors.wire.ipc import ErrorCode


class HttpErrorCode(enum.StrEnum):
    """Error codes that only HTTP has (everything else uses the socket's ErrorCode)."""

    UNKNOWN_ROUTE = "unknown_route"  # no such path
    METHOD_NOT_ALLOWED = "method_not_allowed"  # the path exists, not with this method
    LENGTH_REQUIRED = "length_required"  # any Transfer-Encoding (chunked uploads)
    UNAUTHORIZED = "unauthorized"  # TCP: missing or wrong bearer token
    FORBIDDEN = "forbidden"  # TCP: a browser Origin, a foreign Host
    REQUEST_TIMEOUT = "request_timeout"  # the request did not arrive in time


# The one table from error codes to HTTP statuses; a code missing here answers 400.
STATUS_BY_CODE: dict[str, int] = {
    ErrorCode.BAD_JSON: 400,
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.INVALID_PARAMS: 400,
    ErrorCode.NO_RECIPIENTS: 400,
    HttpErrorCode.UNAUTHORIZED: 401,
    HttpErrorCode.FORBIDDEN: 403,
    ErrorCode.UNKNOWN_OP: 404,
    HttpErrorCode.UNKNOWN_ROUTE: 404,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.NO_SUCH_NETWORK: 404,
    ErrorCode.NO_SUCH_PEER: 404,
    ErrorCode.NO_HANDLER: 404,
    ErrorCode.UNKNOWN_REQUEST: 404,
    HttpErrorCode.METHOD_NOT_ALLOWED: 405,
    HttpErrorCode.REQUEST_TIMEOUT: 408,
    ErrorCode.CONFLICT: 409,
    ErrorCode.PEER_NOT_ACTIVE: 409,
    ErrorCode.CANCELLED: 409,
    HttpErrorCode.LENGTH_REQUIRED: 411,
    ErrorCode.FRAME_TOO_LARGE: 413,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.TOO_MANY_REQUESTS: 429,
    ErrorCode.INTERNAL: 500,
    ErrorCode.LINK_DOWN: 502,
    ErrorCode.HANDLER_GONE: 502,
    ErrorCode.REMOTE_ERROR: 502,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.STORAGE: 507,
    ErrorCode.TIMEOUT: 504,
}
DEFAULT_ERROR_STATUS = 400  # for codes added later without a row above


def status_for(code: str) -> int:
    """The HTTP status of an error code."""
    return STATUS_BY_CODE.get(code, DEFAULT_ERROR_STATUS)


class HttpError(Exception):
    """An error answer: a stable `code`, its status (the table's unless given) and extra headers."""

    def __init__(
        self,
        code: ErrorCode | HttpErrorCode,
        message: str,
        *,
        status: int | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status_for(code) if status is None else status
        self.headers = headers
