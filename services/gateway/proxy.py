"""Forwards /chat/... to the service that owns it, over pooled keep-alive connections (aiohttp).

This path is the platform's hottest, so it is plain ASGI: no framework routing or validation,
only what the gateway must do itself: bound the body, check the token, apply the caller's rate
limit, pass the request id and trace context along, and turn an unreachable service into a
503/504 envelope.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import aiohttp
import structlog
from prometheus_client import Counter, Histogram
from starlette.types import Receive, Scope, Send
from yarl import URL

from services.gateway.ratelimit import RateLimiter
from shared import tracing
from shared.envelope import fail
from shared.errors import AppError, PayloadTooLarge, RateLimited
from shared.tokens import TokenVerifier, bearer_token

log = structlog.get_logger(component="proxy")

UPSTREAM_REQUESTS = Counter(
    "gateway_upstream_requests_total",
    "Requests forwarded to a service, by service and outcome (status code or error kind).",
    ["upstream", "outcome"],
)
UPSTREAM_LATENCY = Histogram(
    "gateway_upstream_duration_seconds",
    "Time until a service's response headers arrive, by service.",
    ["upstream"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)

# RFC 9110 §7.6.1 hop-by-hop fields, plus those the gateway sets itself.
_DROP_REQUEST = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
        b"x-request-id",
        b"traceparent",
        b"x-forwarded-for",
        b"x-forwarded-proto",
    }
)
_DROP_RESPONSE = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "x-request-id",
        "server",
        "date",
    }
)
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
# Requests whose bodies are files: streamed to the service as they arrive (never buffered here)
# under the upload limit instead of the JSON body limit. The service checks each file itself.
UPLOAD_PATHS = re.compile(r"^/chat/(conversations/[0-9]+/messages/upload|import)$")
# Responses up to this size are read whole and sent in one piece (the fast path of JSON
# answers); larger ones (downloads, exports) are passed on chunk by chunk as they arrive.
BUFFERED_RESPONSE_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Upstream:
    name: str
    prefix: str
    base_url: str


@dataclass(frozen=True, slots=True)
class RouteTemplate:
    """Stands in for a framework route in the request scope, so metrics label by template."""

    path: str


class RouteTemplates:
    """Maps concrete paths to their OpenAPI templates, keeping metric labels bounded."""

    def __init__(self) -> None:
        self._compiled: list[tuple[re.Pattern[str], RouteTemplate]] = []

    def load(self, templates: Iterable[str]) -> None:
        compiled = []
        for template in sorted(set(templates), key=lambda t: (t.count("{"), t)):
            pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
            compiled.append((re.compile(f"^{pattern}$"), RouteTemplate(template)))
        self._compiled = compiled

    def match(self, path: str) -> RouteTemplate | None:
        for pattern, template in self._compiled:
            if pattern.match(path):
                return template
        return None


class UpstreamProxy:
    def __init__(
        self,
        upstreams: list[Upstream],
        *,
        verifier: TokenVerifier,
        max_body_bytes: int,
        max_upload_bytes: int,
        timeout_seconds: float,
        connections: int,
        keepalive_seconds: float,
    ) -> None:
        # Longest prefix first: /chat/analytics belongs to analytics, the rest of /chat to chat.
        self.upstreams = sorted(upstreams, key=lambda u: len(u.prefix), reverse=True)
        self.templates = RouteTemplates()
        self.limiter: RateLimiter | None = None
        self._verifier = verifier
        self._max_body = max_body_bytes
        self._max_upload = max_upload_bytes
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=timeout_seconds)
        self._connections = connections
        self._keepalive = keepalive_seconds
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "proxy used before start()"
        return self._session

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._connections,
            limit_per_host=self._connections,
            keepalive_timeout=self._keepalive,
            enable_cleanup_closed=True,
        )
        # auto_decompress off: bodies pass through byte for byte with their own Content-Encoding.
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            timeout=self._timeout,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def owns(self, path: str) -> bool:
        return self._upstream_for(path) is not None

    def _upstream_for(self, path: str) -> Upstream | None:
        for upstream in self.upstreams:
            if path == upstream.prefix or path.startswith(upstream.prefix + "/"):
                return upstream
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        upstream = self._upstream_for(scope["path"])
        assert upstream is not None
        scope["route"] = self.templates.match(scope["path"])
        try:
            await self._forward(upstream, scope, receive, send)
        except AppError as exc:
            response = fail(
                exc.status_code, exc.code, exc.message, exc.details, exc.headers or None
            )
            await response(scope, receive, send)

    async def _forward(
        self, upstream: Upstream, scope: Scope, receive: Receive, send: Send
    ) -> None:
        headers: dict[bytes, bytes] = {}
        forwarded: list[tuple[str, str]] = []
        for name, value in scope["headers"]:
            headers[name] = value
            if name not in _DROP_REQUEST:
                forwarded.append((name.decode("latin-1"), value.decode("latin-1")))

        auth = headers.get(b"authorization")
        principal = self._verifier.verify(bearer_token(auth.decode("latin-1") if auth else None))
        rate_headers: dict[str, str] = {}
        if self.limiter is not None:
            decision = await self.limiter.hit(f"user:{principal.user_id}")
            rate_headers = decision.headers()
            if not decision.allowed:
                raise RateLimited(
                    f"Rate limit exceeded; retry in {decision.retry_after_seconds} s",
                    headers=rate_headers,
                )

        method = scope["method"]
        upload: StreamedBody | None = None
        body: bytes | AsyncIterator[bytes]
        if method == "POST" and UPLOAD_PATHS.match(scope["path"]):
            upload = StreamedBody(receive, headers, self._max_upload)
            body = upload.chunks()
        else:
            body = await read_body(scope, receive, headers, self._max_body)
        client = scope.get("client")
        context = tracing.current()
        assert context is not None, "the proxy runs inside RequestContextMiddleware"
        # The service's span is a child of the gateway's (the one this request runs in).
        forwarded.extend(context.http_headers())
        forwarded.append(("X-Forwarded-For", client[0] if client else "unknown"))
        forwarded.append(("X-Forwarded-Proto", scope.get("scheme", "http")))

        raw_path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string", b"")
        target = upstream.base_url + raw_path.decode("latin-1")
        if query:
            target += "?" + query.decode("latin-1")
        url = URL(target, encoded=True)

        started = time.perf_counter()
        for attempt in (1, 2):
            try:
                response = await self.session.request(
                    method, url, headers=forwarded, data=body or None, allow_redirects=False
                )
                break
            except aiohttp.ServerDisconnectedError:
                # A pooled connection the service had just closed: safe to resend once when the
                # request cannot have had an effect twice.
                if attempt == 2 or method not in _IDEMPOTENT:
                    return await self._unavailable(upstream, scope, receive, send, "disconnected")
            except aiohttp.ClientConnectorError:
                return await self._unavailable(upstream, scope, receive, send, "connect_error")
            except TimeoutError:
                UPSTREAM_REQUESTS.labels(upstream.name, "timeout").inc()
                await fail(
                    504, "upstream_timeout", f"The {upstream.name} service did not answer in time"
                )(scope, receive, send)
                return
            except aiohttp.ClientError:
                return await self._unavailable(upstream, scope, receive, send, "client_error")
        UPSTREAM_LATENCY.labels(upstream.name).observe(time.perf_counter() - started)
        UPSTREAM_REQUESTS.labels(upstream.name, str(response.status)).inc()
        if upload is not None and upload.exceeded:
            # The service saw a body cut short at the limit; the answer is the limit's.
            response.release()
            raise PayloadTooLarge(f"Upload exceeds {self._max_upload} bytes")

        try:
            out = [
                (k.lower(), v)
                for k, v in response.raw_headers
                if k.decode("latin-1").lower() not in _DROP_RESPONSE
            ]
            out.extend((k.lower().encode(), v.encode()) for k, v in rate_headers.items())
            streaming = method != "HEAD" and (
                response.content_type == "text/event-stream"
                or response.content_length is None
                or response.content_length > BUFFERED_RESPONSE_BYTES
            )
            if not streaming:
                payload = await response.read()
                await send(
                    {"type": "http.response.start", "status": response.status, "headers": out}
                )
                await send({"type": "http.response.body", "body": payload})
                return
            await send({"type": "http.response.start", "status": response.status, "headers": out})
            async for chunk in response.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            response.release()

    async def _unavailable(
        self, upstream: Upstream, scope: Scope, receive: Receive, send: Send, kind: str
    ) -> None:
        UPSTREAM_REQUESTS.labels(upstream.name, kind).inc()
        log.warning("upstream_unavailable", upstream=upstream.name, kind=kind)
        response = fail(
            503,
            "service_unavailable",
            f"The {upstream.name} service is unavailable; try again shortly",
            headers={"Retry-After": "1"},
        )
        await response(scope, receive, send)


async def read_body(
    scope: Scope, receive: Receive, headers: dict[bytes, bytes], limit: int
) -> bytes:
    """The whole request body, refusing (413) more than `limit` bytes before reading them."""
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body exceeds {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


class StreamedBody:
    """A request body passed on to the service as it arrives, up to `limit` bytes: refused at
    once when its declared length is larger, else cut off where it passes the limit (the
    service then sees an incomplete body and stores nothing; `exceeded` says the answer is
    413)."""

    def __init__(self, receive: Receive, headers: dict[bytes, bytes], limit: int) -> None:
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"Upload exceeds {limit} bytes")
        self._receive = receive
        self._limit = limit
        self.exceeded = False

    async def chunks(self) -> AsyncIterator[bytes]:
        size = 0
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._limit:
                self.exceeded = True
                return
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return
