"""Probes and metrics of the processes without an API (relay, webhooks, aggregator, ai_worker):
`/healthz`, `/readyz` and `/metrics` on one small threaded HTTP server, in place of
prometheus_client's `start_http_server` (whose exposition `/metrics` still is).

- **/healthz** (alive): every liveness check passes. A loop proves it is alive with a
  `Heartbeat` it beats once per iteration (its waits on a dependency included, so an outage of
  Postgres or Redis is not a reason to restart it; their connections have timeouts, so a
  black-holed server is an error, not a hang); one that has not beaten for its `stall_seconds`
  is wedged, and the orchestrator should restart the process.
- **/readyz** (ready): every readiness check passes: its dependencies answer (`postgres_check`,
  `redis_check`: a fresh connection with a 2 s timeout, so the probe never waits for a pool the
  process is busy with, nor holds a connection between probes).
- **/metrics**: the Prometheus text exposition of the registry.

Both probes answer in the envelope of the HTTP services' probes: 200 with
`data.checks` (`{"postgres": "ok", ...}`), or 503 with `error.details.checks` naming what failed.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import psycopg
import redis
from prometheus_client import REGISTRY, make_wsgi_app
from prometheus_client.registry import CollectorRegistry
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.db.pool import plain_dsn
from shared.envelope import dumps, error_body, success_body

# A check answers "ok", or why not ("error: ConnectionError", "stalled for 75 s", ...).
Check = Callable[[], str]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

OK = "ok"
# A loop that has not made progress for this long is wedged (unless it says otherwise): longer
# than any one iteration of ours takes, Redis and Postgres socket timeouts included.
STALL_SECONDS = 60.0
# Each dependency check gives up after this (connect and query); /readyz answers within it.
DEPENDENCY_TIMEOUT_SECONDS = 2.0
_READY_DEADLINE_SECONDS = DEPENDENCY_TIMEOUT_SECONDS + 1.0


class Heartbeat:
    """The time a loop last made progress; `beat()` each iteration, `check` reports staleness."""

    def __init__(
        self,
        *,
        stall_seconds: float = STALL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stall_seconds = stall_seconds
        self._clock = clock
        self._last = clock()

    def beat(self) -> None:
        self._last = self._clock()

    def age(self) -> float:
        return max(0.0, self._clock() - self._last)

    def check(self) -> str:
        age = self.age()
        if age > self.stall_seconds:
            return f"stalled: no progress for {age:.0f} s (limit {self.stall_seconds:.0f} s)"
        return OK


def thread_check(thread: threading.Thread, heartbeat: Heartbeat | None = None) -> Check:
    """Alive: the thread runs (and, with a heartbeat, made progress recently)."""

    def check() -> str:
        if thread.ident is None:
            return "starting"
        if not thread.is_alive():
            return "error: thread ended"
        return heartbeat.check() if heartbeat is not None else OK

    return check


def all_of(checks: Iterable[Check]) -> Check:
    """One check for several (the sender threads of a process, say): the first failure."""
    checks = list(checks)

    def check() -> str:
        for one in checks:
            state = one()
            if state != OK:
                return state
        return OK

    return check


def _error(exc: BaseException) -> str:
    # The class only: a driver's message may carry a host name or a URL.
    return f"error: {type(exc).__name__}"


def postgres_check(database_url: str, *, application_name: str) -> Check:
    """Ready: a new connection to the database answers `SELECT 1` within the timeout."""
    dsn = plain_dsn(database_url)
    timeout_ms = int(DEPENDENCY_TIMEOUT_SECONDS * 1000)

    def check() -> str:
        try:
            with psycopg.connect(
                dsn,
                autocommit=True,
                # libpq's floor is 2 s.
                connect_timeout=max(2, int(DEPENDENCY_TIMEOUT_SECONDS)),
                application_name=application_name,
                options=f"-c statement_timeout={timeout_ms}",
            ) as conn:
                conn.execute("SELECT 1")
        except (psycopg.Error, OSError) as exc:
            return _error(exc)
        return OK

    return check


def redis_check(redis_url: str) -> Check:
    """Ready: Redis answers PING within the timeout (no retries: a probe reports at once)."""
    client = redis.Redis.from_url(
        redis_url,
        socket_timeout=DEPENDENCY_TIMEOUT_SECONDS,
        socket_connect_timeout=DEPENDENCY_TIMEOUT_SECONDS,
        retry=Retry(NoBackoff(), 0),
    )

    def check() -> str:
        try:
            client.ping()
        except (redis.RedisError, OSError) as exc:
            return _error(exc)
        return OK

    return check


class _Server(ThreadingMixIn, WSGIServer):
    # Request threads never keep the process alive at exit.
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        """Probes and scrapes every few seconds are not worth a log line each."""


class ProbeServer:
    """The HTTP server of one process; `start()` serves from a daemon thread."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        liveness: Mapping[str, Check],
        readiness: Mapping[str, Check],
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.host = host
        self.port = port
        self.liveness = dict(liveness)
        self.readiness = dict(readiness)
        self._metrics: WSGIApp = make_wsgi_app(registry)
        self._checks = ThreadPoolExecutor(
            max_workers=max(1, len(self.readiness)), thread_name_prefix="readiness"
        )
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> ProbeServer:
        family, address = _best_family(self.host, self.port)
        server_class = type("ProbeHTTPServer", (_Server,), {"address_family": family})
        self._server = make_server(
            address, self.port, self, server_class=server_class, handler_class=_QuietHandler
        )
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="probe-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self._checks.shutdown(wait=False, cancel_futures=True)

    # --- the WSGI app ----------------------------------------------------------------------

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            checks = {name: _run(check) for name, check in self.liveness.items()}
            return _probe(start_response, checks, "alive")
        if path == "/readyz":
            return _probe(start_response, self._readiness(), "ready")
        if path == "/metrics":
            return self._metrics(environ, start_response)
        return _respond(start_response, 404, error_body("not_found", f"no such path: {path}", None))

    def _readiness(self) -> dict[str, str]:
        """Every dependency at once, so /readyz takes one timeout, not one per dependency."""
        futures = {name: self._checks.submit(_run, check) for name, check in self.readiness.items()}
        deadline = time.monotonic() + _READY_DEADLINE_SECONDS
        checks = {}
        for name, future in futures.items():
            try:
                checks[name] = future.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                checks[name] = "error: timeout"
        return checks


def _run(check: Check) -> str:
    try:
        return check()
    except Exception as exc:  # noqa: BLE001 - a probe reports any failure as "not ok"
        return _error(exc)


def _probe(
    start_response: Callable[..., Any], checks: dict[str, str], state: str
) -> Iterable[bytes]:
    if all(value == OK for value in checks.values()):
        return _respond(
            start_response, 200, success_body({"status": state, "checks": checks}, state)
        )
    body = error_body("service_unavailable", f"not {state}", {"checks": checks})
    return _respond(start_response, 503, body)


def _respond(
    start_response: Callable[..., Any], status: int, body: dict[str, Any]
) -> Iterable[bytes]:
    payload = dumps(body)
    reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
    start_response(
        f"{status} {reason}",
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(payload))),
            ("Cache-Control", "no-store"),
        ],
    )
    return [payload]


def _best_family(host: str, port: int) -> tuple[socket.AddressFamily, str]:
    """IPv4 or IPv6, whichever `host` is ("0.0.0.0", "::", "127.0.0.1", a name)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]
    return family, str(sockaddr[0])
