"""Pure-ASGI middleware: request id, trace context, access log and HTTP metrics in one pass per
request."""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import tracing
from shared.metrics import HTTP_IN_PROGRESS, HTTP_LATENCY, HTTP_REQUESTS, UNMATCHED_ROUTE

log = structlog.get_logger(component="access")

# Paths whose traffic would drown the access log (scrapes and probes every few seconds).
_QUIET_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})


def current_request_id() -> str:
    context = tracing.current()
    return context.request_id if context is not None else "-"


def incoming_request_id(scope: Scope) -> str:
    """The caller's X-Request-ID when it is well-formed, else a new one."""
    return incoming_context(scope)[0]


def incoming_context(scope: Scope) -> tuple[str, tracing.TraceParent | None]:
    """The caller's X-Request-ID when it is well-formed (else a new one), and its trace context
    when its `traceparent` is valid (else None: a new trace starts here)."""
    request_id: str | None = None
    parent: tracing.TraceParent | None = None
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id" and request_id is None:
            request_id = tracing.valid_request_id(value.decode("latin-1")) or ""
        elif name == b"traceparent" and parent is None:
            parent = tracing.parse_traceparent(value.decode("latin-1"))
    return request_id or tracing.new_request_id(), parent


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


class RequestContextMiddleware:
    """Gives every request an id (echoed in X-Request-ID) and a span of its trace
    (shared/tracing.py: both bound into every log line of the request), one access log line and
    its metrics.

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
        with tracing.span(*incoming_context(scope)) as context:
            await self._serve(context.request_id, scope, receive, send)

    async def _serve(self, request_id: str, scope: Scope, receive: Receive, send: Send) -> None:
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
