"""One error hierarchy carrying its status code, and the handlers that render it as the envelope."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import asyncpg
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from shared.envelope import fail

log = structlog.get_logger(component="errors")

# Failures of a dependency rather than of the request: lost or refused connections, an exhausted
# pool (its acquire times out), a server shutting down.
DEPENDENCY_DOWN_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    ConnectionError,
    TimeoutError,
)


class AppError(Exception):
    """An expected failure: rendered as the envelope with its status, never logged as a crash."""

    status_code: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    default_message: ClassVar[str] = "Bad request"

    def __init__(
        self,
        message: str | None = None,
        *,
        details: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.details = details
        self.headers = dict(headers or {})
        super().__init__(self.message)


class BadRequest(AppError):
    status_code = 400
    code = "bad_request"
    default_message = "Bad request"


class Unauthorized(AppError):
    status_code = 401
    code = "unauthorized"
    default_message = "Not authenticated"

    def __init__(self, message: str | None = None, *, details: Any = None) -> None:
        super().__init__(message, details=details, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(AppError):
    status_code = 403
    code = "forbidden"
    default_message = "Not allowed"


class NotFound(AppError):
    status_code = 404
    code = "not_found"
    default_message = "Not found"


class Conflict(AppError):
    status_code = 409
    code = "conflict"
    default_message = "Conflict"


class PayloadTooLarge(AppError):
    status_code = 413
    code = "payload_too_large"
    default_message = "Request body too large"


class ValidationFailed(AppError):
    status_code = 422
    code = "validation_error"
    default_message = "Invalid request"


class RateLimited(AppError):
    status_code = 429
    code = "rate_limited"
    default_message = "Too many requests"


class NotImplementedHere(AppError):
    status_code = 501
    code = "not_implemented"
    default_message = "Not available in this deployment"


class ServiceUnavailable(AppError):
    status_code = 503
    code = "service_unavailable"
    default_message = "A dependency is unavailable; try again shortly"


_STATUS_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    501: "not_implemented",
    503: "service_unavailable",
}


def code_for_status(status_code: int) -> str:
    return _STATUS_CODES.get(status_code, "error" if status_code < 500 else "internal_error")


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    details = []
    for error in exc.errors():
        # The offending input is echoed back only when small: it may be a whole request body.
        entry: dict[str, Any] = {
            "loc": [str(part) for part in error.get("loc", ())],
            "msg": error.get("msg", ""),
            "type": error.get("type", ""),
        }
        details.append(entry)
    return details


async def _app_error_handler(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, AppError)
    return fail(exc.status_code, exc.code, exc.message, exc.details, exc.headers or None)


async def _validation_error_handler(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    details = _validation_details(exc)
    first = details[0] if details else {"loc": [], "msg": "invalid"}
    where = ".".join(p for p in first["loc"] if p not in ("body", "query", "path", "header"))
    message = f"{where}: {first['msg']}" if where else str(first["msg"])
    return fail(422, "validation_error", message, details)


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path: Starlette's own 405 names only the first
    matching route's (RFC 9110 §15.5.6 asks for all of them)."""
    probe = {**request.scope, "method": "\x00"}  # no route serves it: path matches are PARTIAL
    methods: set[str] = set()
    pending = list(request.app.router.routes)
    while pending:
        route = pending.pop()
        # FastAPI keeps included routers as one entry wrapping the original router's routes.
        nested = getattr(getattr(route, "original_router", None), "routes", None)
        if nested is not None:
            pending.extend(nested)
            continue
        match, _ = route.matches(probe)
        if match is not Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))


async def _http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else "HTTP error"
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request) or headers.get("Allow", "")
    return fail(exc.status_code, code_for_status(exc.status_code), message, None, headers or None)


async def _dependency_down_handler(request: Request, exc: Exception) -> Response:
    # The database (or another dependency) is unreachable or saturated: the request may succeed
    # on a retry, so this is a 503 with Retry-After rather than a 500.
    log.warning("dependency_unavailable", path=request.url.path, error_type=type(exc).__name__)
    return fail(
        503,
        "service_unavailable",
        "A dependency is unavailable; try again shortly",
        headers={"Retry-After": "1"},
    )


async def _unexpected_error_handler(request: Request, exc: Exception) -> Response:
    # A bug, not an expected failure: log it whole, tell the client only that it happened and
    # which request id to report.
    log.exception("unhandled_error", path=request.url.path, error_type=type(exc).__name__)
    return fail(500, "internal_error", "Internal server error; report the X-Request-ID header")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
    for unavailable in DEPENDENCY_DOWN_ERRORS:
        app.add_exception_handler(unavailable, _dependency_down_handler)
    app.add_exception_handler(Exception, _unexpected_error_handler)
