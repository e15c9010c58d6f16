"""Pure-ASGI middleware: request id, access log and HTTP metrics in one pass per request."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.metrics import HTTP_IN_PROGRESS, HTTP_LATENCY, HTTP_REQUESTS, UNMATCHED_ROUTE

REQUEST_ID_HEADER = "x-request-id"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")
log = structlog.get_logger(component="access")

# Paths whose traffic would drown the access log (scrapes and probes every few seconds).
_QUIET_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})


def current_request_id() -> str:
    return request_id_var.get()


def incoming_request_id(scope: Scope) -> str:
    """The caller's X-Request-ID when it is well-formed, else a new one."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _VALID_REQUEST_ID.match(candidate):
                return candidate
            break
    return uuid.uuid4().hex


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


class RequestContextMiddleware:
    """Gives every request an id (echoed in X-Request-ID), one access log line and its metrics.

    `route_of` lets a service that routes by itself (the gateway's proxy) name the route
    template; by default it is read from the router's match.
    """

    def __init__(self, app: ASGIApp, route_of: Callable[[Scope], str] = route_template) -> None:
        self.app = app
        self.route_of = route_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = incoming_request_id(scope)
        token = request_id_var.set(request_id)
        structlog.contextvars.bind_contextvars(request_id=request_id)
        method = scope["method"]
        status = 500
        header_value = request_id.encode()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                headers.append((b"x-request-id", header_value))
                message["headers"] = headers
            await send(message)

        in_progress = HTTP_IN_PROGRESS.labels(method)
        in_progress.inc()
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            in_progress.dec()
            route = self.route_of(scope)
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
            HTTP_LATENCY.labels(method, route).observe(elapsed)
            path = scope["path"]
            if path not in _QUIET_PATHS:
                log.info(
                    "request",
                    method=method,
                    path=path,
                    route=route,
                    status=status,
                    duration_ms=round(elapsed * 1000, 2),
                )
            structlog.contextvars.unbind_contextvars("request_id")
            request_id_var.reset(token)
