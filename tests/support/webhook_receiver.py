"""A webhook receiver for tests: an HTTP server in a thread of the test process that records
every request and answers as the test tells it (fail, redirect, hang, accept).

    with WebhookReceiver(lambda request, nth: 500 if nth <= 2 else 200) as receiver:
        ... register receiver.url ...
        receiver.wait_for(lambda: len(receiver.successes()) == 2, "two deliveries")

`respond(request, nth)` gets the request and how many requests carried its `webhook-id` so far
(1 for the first), and answers a status, or a `Reply` with headers and a delay.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

WAIT_SECONDS = 30.0


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    # Waits before answering (a receiver slower than the sender's timeout).
    delay_seconds: float = 0.0
    # Waits for this event (at most `delay_seconds`) instead of sleeping the whole delay.
    until: threading.Event | None = None


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    arrived: float  # time.monotonic()
    nth: int  # requests with this webhook-id so far, this one included
    status: int | None = None  # what the receiver answered (None while answering)

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")

    def json(self) -> Any:
        return orjson.loads(self.body)


Respond = Callable[[Received, int], "int | Reply"]


class WebhookReceiver:
    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self._lock = threading.Lock()
        self._requests: list[Received] = []
        self._per_id: dict[str, int] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                receiver._handle(self)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # keep the test output clean

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hooks"

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("content-length") or 0)
        body = handler.rfile.read(length)
        headers = {k.lower(): v for k, v in handler.headers.items()}
        with self._lock:
            webhook_id = headers.get("webhook-id", "")
            self._per_id[webhook_id] = nth = self._per_id.get(webhook_id, 0) + 1
            request = Received(handler.path, headers, body, time.monotonic(), nth)
            self._requests.append(request)
        answer = self.respond(request, nth)
        reply = answer if isinstance(answer, Reply) else Reply(status=answer)
        if reply.until is not None:
            reply.until.wait(reply.delay_seconds)
        elif reply.delay_seconds:
            time.sleep(reply.delay_seconds)  # the behaviour under test: a slow receiver
        request.status = reply.status
        try:
            handler.send_response(reply.status)
            for name, value in reply.headers.items():
                handler.send_header(name, value)
            handler.send_header("content-type", "text/plain")
            handler.send_header("content-length", "2")
            handler.end_headers()
            handler.wfile.write(b"ok")
        except OSError:
            pass  # the sender gave up waiting (its timeout) and closed the connection

    # --- what it got -------------------------------------------------------------------------

    def requests(self, where: Callable[[Received], bool] | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self._requests if where is None or where(r)]

    def successes(self, where: Callable[[Received], bool] | None = None) -> list[Received]:
        return [r for r in self.requests(where) if r.status is not None and 200 <= r.status < 300]

    def wait_for(
        self, condition: Callable[[], bool], what: str, timeout: float = WAIT_SECONDS
    ) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, (
                f"{what}: not within {timeout} s; received "
                f"{[(r.path, r.webhook_id, r.status) for r in self.requests()]}"
            )
            time.sleep(0.02)  # a polling interval; the condition is what is waited on

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> WebhookReceiver:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
