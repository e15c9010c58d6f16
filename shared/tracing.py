"""One request, followed: its request id and W3C trace context (`traceparent`) across every hop.

The gateway takes the caller's `X-Request-ID` and `traceparent` when they are well-formed (or
makes new ones); each hop (gateway, chat, analytics, the AI worker's task) runs as a span of its
own, a child of the hop before it, and hands `00-<trace id>-<its span id>-<flags>` on: in HTTP
headers, in a Celery task's headers, and in the outbox events it writes (shared/events.py,
field `trace`). While a hop runs, `request_id`, `trace_id` and `span_id` are bound into
structlog's context variables, so every log line it writes carries them.

Only the parts of https://www.w3.org/TR/trace-context/ this platform needs: parsing and making
`traceparent` (`tracestate` is passed on untouched by the gateway, never read). There is no
tracing backend; the ids serve to grep one request's lines out of every service's logs.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, NamedTuple

import structlog

REQUEST_ID_HEADER = "x-request-id"
TRACEPARENT_HEADER = "traceparent"
# Celery task headers (message headers, beside Celery's own).
TASK_REQUEST_ID = "x_request_id"
TASK_TRACEPARENT = "traceparent"

_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# version-traceid-parentid-flags, lowercase hex; a later version may append "-<more>".
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
SAMPLED = "01"


class TraceParent(NamedTuple):
    """A parsed `traceparent`: the trace, the sender's span (our parent) and the flags."""

    trace_id: str
    parent_id: str
    flags: str


def parse_traceparent(value: str | None) -> TraceParent | None:
    """The header's trace context, or None when it is absent or invalid (then a new trace is
    started, as the W3C recommendation says)."""
    if not value:
        return None
    match = _TRACEPARENT.match(value.strip(" \t"))
    if match is None:
        return None
    version, trace_id, parent_id, flags, rest = match.groups()
    # Version ff is forbidden; version 00 has exactly four fields; a later version may have more
    # fields (ignored: we parse it as 00 and send 00 on).
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return TraceParent(trace_id, parent_id, flags)


def valid_request_id(value: str | None) -> str | None:
    """An incoming request id when it is well-formed (short, no spaces or quotes), else None."""
    return value if value is not None and _VALID_REQUEST_ID.match(value) else None


def new_request_id() -> str:
    return uuid.uuid4().hex


def new_trace_id() -> str:
    return uuid.uuid4().hex  # 128 random bits (never all zero in practice; 2^-122)


def new_span_id() -> str:
    while True:
        span_id = os.urandom(8).hex()
        if span_id != _ZERO_SPAN:
            return span_id


@dataclass(frozen=True, slots=True)
class TraceContext:
    """The current hop: the request it serves and its own span in the request's trace."""

    request_id: str
    trace_id: str
    span_id: str
    flags: str = SAMPLED

    @classmethod
    def start(cls, request_id: str, parent: TraceParent | None) -> TraceContext:
        """A new span: a child of `parent` when given, else the root of a new trace."""
        if parent is None:
            return cls(request_id, new_trace_id(), new_span_id())
        # Only the sampled bit is defined in version 00; unknown flags are not passed on.
        flags = "01" if int(parent.flags, 16) & 1 else "00"
        return cls(request_id, parent.trace_id, new_span_id(), flags)

    @property
    def traceparent(self) -> str:
        """The header for the next hop: this span is its parent."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    def http_headers(self) -> list[tuple[str, str]]:
        return [("X-Request-ID", self.request_id), ("traceparent", self.traceparent)]

    def task_headers(self) -> dict[str, str]:
        return {TASK_REQUEST_ID: self.request_id, TASK_TRACEPARENT: self.traceparent}

    def event_trace(self) -> dict[str, str]:
        """The `trace` field of the events this hop writes (shared/events.py)."""
        return {"request_id": self.request_id, "traceparent": self.traceparent}


_current: ContextVar[TraceContext | None] = ContextVar("trace_context", default=None)


def current() -> TraceContext | None:
    """The hop in progress in this task or thread, if any."""
    return _current.get()


def task_headers() -> dict[str, str] | None:
    """Celery headers carrying the current request on to the task it enqueues (None outside
    any request or task)."""
    context = _current.get()
    return context.task_headers() if context is not None else None


def task_headers_of(trace: Any) -> dict[str, str] | None:
    """Celery headers sending a task on behalf of a stored trace (an event's or an AI job's
    `trace`: request id and `traceparent`), so it runs as a span of that request; None when
    the trace names no valid request."""
    if not isinstance(trace, dict):
        return None
    request_id = valid_request_id(_str(trace.get("request_id")))
    if request_id is None:
        return None
    headers = {TASK_REQUEST_ID: request_id}
    traceparent = _str(trace.get("traceparent"))
    if parse_traceparent(traceparent) is not None:
        headers[TASK_TRACEPARENT] = str(traceparent)
    return headers


def event_trace() -> dict[str, str] | None:
    """The `trace` of an event written now (None outside any request or task)."""
    context = _current.get()
    return context.event_trace() if context is not None else None


@contextmanager
def span(request_id: str, parent: TraceParent | None) -> Iterator[TraceContext]:
    """Runs the block as one hop of the request: the context is current and bound into every
    log line, and both are undone afterwards (a pool thread serves other jobs next)."""
    context = TraceContext.start(request_id, parent)
    token = _current.set(context)
    structlog.contextvars.bind_contextvars(
        request_id=context.request_id, trace_id=context.trace_id, span_id=context.span_id
    )
    try:
        yield context
    finally:
        structlog.contextvars.unbind_contextvars("request_id", "trace_id", "span_id")
        _current.reset(token)


def from_task_headers(headers: dict[str, Any] | None) -> tuple[str, TraceParent | None]:
    """The request id and parent of a task from its headers (a job sent by no request, such as
    the sweeper's re-sends, starts a trace of its own)."""
    headers = headers or {}
    request_id = valid_request_id(_str(headers.get(TASK_REQUEST_ID))) or new_request_id()
    return request_id, parse_traceparent(_str(headers.get(TASK_TRACEPARENT)))


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
