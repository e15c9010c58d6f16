"""A small OpenAI-compatible LLM server that tests and benchmarks use as the LLM provider.

It speaks the part of the OpenAI HTTP API that `openai`'s `client.chat.completions.create(...)`
uses, so the code under test talks to it through the real SDK:

- `POST /v1/chat/completions`, non-streaming (`choices[0].message.content`, `finish_reason`,
  `usage`) and streaming (`stream: true`: SSE `data: {chunk}` lines, one per token, a chunk with
  the `finish_reason`, with `stream_options.include_usage` a last chunk with `usage` and no
  choices, then `data: [DONE]`);
- `GET /v1/models`; `GET /health`.

Run it as a process: `python -m tests.support.llm_stub --port 8765` (`--port 0` picks a free port;
the line `llm-stub listening on http://127.0.0.1:<port>` on stdout says it is ready), or in a
thread of the test process: `with start_in_thread() as stub: OpenAI(base_url=stub.base_url, ...)`.
`StubControl(url)` (also `stub.control`) wraps the control API below for tests.

The reply
---------
Deterministic: `"Echo: " + <the last user message>` with `[[...]]` directives removed and runs
of whitespace collapsed to one space (see `expected_reply`), or the fixed `reply` text when one is
set. Streams send it as one piece per word (`stream_pieces`: each piece is a word with the
whitespace before it, so the pieces concatenate to the reply exactly).

The token-count rule
--------------------
A token is a whitespace-separated word (`count_tokens(text) == len(text.split())`):

- `completion_tokens` = words of the reply sent (= number of streamed content pieces);
- `prompt_tokens` = words of the text content of all request messages, as sent (directives
  included; a list content counts its `text` parts);
- `total_tokens` = their sum.

`max_tokens` (or `max_completion_tokens`) below the reply's length truncates it to that many words,
with `finish_reason: "length"`; otherwise `finish_reason` is `"stop"`.

Steering it: the control API
----------------------------
`POST /control` with a JSON behaviour replaces the current one (fields not given take their
defaults; unknown fields are a 422), and answers `{"behaviour": {...}, "remaining": n|null}`:

    {"mode": "ok",                  # ok | reply | fail | hang | drop_stream_after
     "delay_seconds": 0.0,          # from the request's arrival to the response headers
     "token_delay_seconds": 0.0,    # between tokens (non-streaming: waits as long in total)
     "reply": null,                 # fixed reply text instead of the echo (mode "reply" needs it)
     "status": 500,                 # fail: the HTTP status (429, 500, 503, any 4xx/5xx)
     "retry_after": null,           # fail: Retry-After seconds (429 defaults to 1)
     "tokens": 0,                   # drop_stream_after: content tokens sent before the drop
     "times": null,                 # fail/hang/drop_stream_after: only for the next N chat
                                    # requests, then mode "ok" (other fields kept); null = always
     "usage_in_stream": true}       # false: streams never carry usage (like llama.cpp's server)

- `fail` answers the status with an OpenAI-shaped error body (`{"error": {"message", "type",
  "param", "code"}}`), with `Retry-After` (whole seconds, rounded up) and `retry-after-ms` headers
  when `retry_after` applies;
- `hang` accepts the request and answers nothing until the client gives up (or the stub stops);
- `drop_stream_after` sends the role chunk and `tokens` content chunks (all of them if the reply
  is shorter, but never the finish chunk), then closes the connection without ending the response
  (a non-streaming request gets half its body, then the close). The SDK raises
  `openai.APIConnectionError` (cause: httpx's "peer closed connection without sending complete
  message body").

`GET /control` shows the behaviour; `POST /control/reset` restores the default behaviour and
clears the recorded requests, the directive counters and the stats.

`GET /control/requests[?contains=S][&outcome=O]` → `{"requests": [record, ...]}`, oldest first,
each record:

    {"id": 1, "received_at": 1700000000.0, "finished_at": 1700000000.1,
     "path": "/v1/chat/completions", "model": "m", "messages": [...], "temperature": 0.2,
     "max_tokens": null, "max_completion_tokens": null, "stream": true,
     "stream_options": {"include_usage": true},
     "headers": {"authorization": "Bearer test", ...},   # all request headers, lower-case names
     "body": {...},                                      # the whole JSON body
     "directives": {"fail": "500"}, "action": "ok|fail|hang|drop", "source": "global|marker",
     "reply": "Echo: hi", "sent": "Echo: hi", "sent_tokens": 2,
     "outcome": "in_progress|completed|failed|dropped|client_disconnected|shutdown|rejected|error"}

`GET /control/wait?count=N[&contains=S][&outcome=O][&timeout=T]` waits (server side, no polling)
until at least N recorded requests match, then answers `{"requests": [...]}`; 408 with the same
shape when T seconds (default 10) pass first. `outcome=finished` matches any outcome but
`in_progress`. `GET /control/stats` → `{"total", "in_flight", "max_in_flight"}` (chat requests).

Per-request directives
----------------------
`[[name]]` or `[[name:value]]` in the LAST user message steer that request alone and override the
global behaviour entirely (a request with directives ignores the global mode and does not count
against its `times`), so tests running in parallel do not interfere:

    [[fail:STATUS]]  [[retry_after:S]]  [[hang]]  [[drop:N]]  [[delay:S]]  [[token_delay:S]]
    [[reply:TEXT]]   [[no_usage]]       [[times:N]]

`[[times:N]]` limits fail/hang/drop to the first N requests whose last user message is this exact
text (the retries of one job), later ones are answered normally. An unknown or malformed directive
is a 400 (`openai.BadRequestError`), so a typo cannot silently turn a test into a no-op.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import math
import re
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any, Literal

import anyio
import httpx
import orjson
import uvicorn
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.types import ASGIApp, Receive, Scope, Send

HOST = "127.0.0.1"
DEFAULT_MODEL = "stub-model"
MAX_RECORDS = 10_000
_INCOMPLETE_LOG = "ASGI callable returned without completing response."

Mode = Literal["ok", "reply", "fail", "hang", "drop_stream_after"]
Action = Literal["ok", "fail", "hang", "drop"]
_ACTION_OF_MODE: dict[str, Action] = {
    "ok": "ok",
    "reply": "ok",
    "fail": "fail",
    "hang": "hang",
    "drop_stream_after": "drop",
}


# --- the reply and the token rule -------------------------------------------------------------

_DIRECTIVE = re.compile(r"\[\[\s*([A-Za-z_]*)\s*(?::([^\]]*))?\]\]")
_KNOWN_DIRECTIVES = {
    "fail",
    "retry_after",
    "hang",
    "drop",
    "delay",
    "token_delay",
    "reply",
    "no_usage",
    "times",
}


def count_tokens(text: str) -> int:
    """The stub's token count of `text`: its whitespace-separated words."""
    return len(text.split())


def strip_directives(text: str) -> str:
    """`text` without its `[[...]]` directives, runs of whitespace collapsed to one space."""
    return " ".join(_DIRECTIVE.sub(" ", text).split())


def expected_reply(last_user_message: str) -> str:
    """The echo reply the stub gives to a request whose last user message is this text."""
    return " ".join(f"Echo: {strip_directives(last_user_message)}".split())


def stream_pieces(text: str) -> list[str]:
    """The content pieces (tokens) a stream of `text` sends: one per word, each with the
    whitespace before it, so that they concatenate to `text` exactly."""
    pieces = re.findall(r"\s*\S+", text)
    if pieces:
        pieces[-1] += text[sum(map(len, pieces)) :]
    return pieces


def message_text(message: Any) -> str:
    """The text of a chat message's content (a string, or the `text` of its parts)."""
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def last_user_text(messages: Any) -> str:
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return message_text(message)
    return ""


# --- behaviour --------------------------------------------------------------------------------


class Behaviour(BaseModel):
    """What the stub does with the chat requests that carry no directive (`POST /control`)."""

    model_config = ConfigDict(extra="forbid")

    mode: Mode = "ok"
    delay_seconds: float = Field(0.0, ge=0)
    token_delay_seconds: float = Field(0.0, ge=0)
    reply: str | None = None
    status: int = Field(500, ge=400, le=599)
    retry_after: float | None = Field(None, ge=0)
    tokens: int = Field(0, ge=0)
    times: int | None = Field(None, ge=1)
    usage_in_stream: bool = True

    @model_validator(mode="after")
    def _reply_mode_has_text(self) -> Behaviour:
        if self.mode == "reply" and self.reply is None:
            raise ValueError('mode "reply" needs a "reply" text')
        return self


@dataclass
class Plan:
    """How one chat request is answered."""

    action: Action = "ok"
    source: Literal["global", "marker"] = "global"
    status: int = 500
    retry_after: float | None = None
    drop_after: int = 0
    delay: float = 0.0
    token_delay: float = 0.0
    reply: str | None = None
    usage_in_stream: bool = True


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def parse_directives(text: str) -> dict[str, str | None]:
    directives: dict[str, str | None] = {}
    for match in _DIRECTIVE.finditer(text):
        name, value = match.group(1), match.group(2)
        if name not in _KNOWN_DIRECTIVES:
            raise BadRequest(f"llm-stub: unknown directive {match.group(0)!r}")
        directives[name] = value.strip() if value is not None and name != "reply" else value
    return directives


def _number(directives: dict[str, str | None], name: str, kind: type[int] | type[float]) -> Any:
    raw = directives.get(name)
    try:
        value = kind(raw) if raw is not None else None
    except ValueError:
        value = None
    if value is None or value < 0 or (isinstance(value, float) and not math.isfinite(value)):
        raise BadRequest(f"llm-stub: directive [[{name}:...]] needs a non-negative number")
    return value


# --- recorded requests ------------------------------------------------------------------------


@dataclass
class Received:
    id: int
    received_at: float
    path: str
    headers: dict[str, str]
    body: Any
    model: Any = None
    messages: Any = None
    temperature: Any = None
    max_tokens: Any = None
    max_completion_tokens: Any = None
    stream: bool = False
    stream_options: Any = None
    directives: dict[str, str | None] = field(default_factory=dict)
    action: Action = "ok"
    source: str = "global"
    reply: str | None = None
    sent: str = ""
    sent_tokens: int = 0
    outcome: str = "in_progress"
    finished_at: float | None = None

    def matches(self, contains: str | None, outcome: str | None) -> bool:
        if contains is not None and contains not in last_user_text(self.messages):
            return False
        if outcome == "finished":
            return self.outcome != "in_progress"
        return outcome is None or self.outcome == outcome


class _DropConnection(Exception):
    """Raised inside a stream to end it by closing the connection."""


class _ExpectedIncompleteFilter(logging.Filter):
    """Hides uvicorn's error line for the responses this stub leaves incomplete on purpose."""

    def __init__(self) -> None:
        super().__init__()
        self.expected = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if self.expected > 0 and record.getMessage() == _INCOMPLETE_LOG:
            self.expected -= 1
            return False
        return True


class StubState:
    """Behaviour, records and counters of one stub; used only on the server's event loop."""

    def __init__(self, behaviour: Behaviour | None = None, max_records: int = MAX_RECORDS) -> None:
        self.default = behaviour or Behaviour()
        self.behaviour = self.default
        self.remaining = self.behaviour.times
        self.records: deque[Received] = deque(maxlen=max_records)
        self.ids = itertools.count(1)
        self.marker_counts: dict[str, int] = {}
        self.total = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.shutdown = asyncio.Event()
        self._changed = asyncio.Event()
        self.log_filter = _ExpectedIncompleteFilter()

    # behaviour

    def configure(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.remaining = behaviour.times

    def reset(self) -> None:
        self.configure(self.default)
        self.records.clear()
        self.marker_counts.clear()
        self.total = 0
        self.max_in_flight = self.in_flight
        self.notify()

    def control_view(self) -> dict[str, Any]:
        return {"behaviour": self.behaviour.model_dump(), "remaining": self.remaining}

    def plan(self, directives: dict[str, str | None], last_user: str) -> Plan:
        if directives:
            return self._marker_plan(directives, last_user)
        b = self.behaviour
        action = _ACTION_OF_MODE[b.mode]
        if action != "ok" and self.remaining is not None:
            self.remaining -= 1
            if self.remaining <= 0:
                self.behaviour = b.model_copy(update={"mode": "ok" if b.reply is None else "reply"})
                self.remaining = None
        retry_after = b.retry_after
        if retry_after is None and b.status == 429:
            retry_after = 1.0
        return Plan(
            action=action,
            status=b.status,
            retry_after=retry_after,
            drop_after=b.tokens,
            delay=b.delay_seconds,
            token_delay=b.token_delay_seconds,
            reply=b.reply,
            usage_in_stream=b.usage_in_stream,
        )

    def _marker_plan(self, directives: dict[str, str | None], last_user: str) -> Plan:
        plan = Plan(source="marker")
        effects = [name for name in ("fail", "hang", "drop") if name in directives]
        if len(effects) > 1:
            raise BadRequest(f"llm-stub: directives {effects} cannot be combined")
        if "fail" in directives:
            status = _number(directives, "fail", int)
            if not 400 <= status <= 599:
                raise BadRequest("llm-stub: [[fail:STATUS]] needs a 4xx or 5xx status")
            plan.action, plan.status = "fail", status
            plan.retry_after = 1.0 if status == 429 else None
        if "hang" in directives:
            plan.action = "hang"
        if "drop" in directives:
            plan.action, plan.drop_after = "drop", _number(directives, "drop", int)
        if "retry_after" in directives:
            plan.retry_after = _number(directives, "retry_after", float)
        if "delay" in directives:
            plan.delay = _number(directives, "delay", float)
        if "token_delay" in directives:
            plan.token_delay = _number(directives, "token_delay", float)
        if "reply" in directives:
            plan.reply = directives["reply"] or ""
        if "no_usage" in directives:
            plan.usage_in_stream = False
        if "times" in directives:
            times = _number(directives, "times", int)
            seen = self.marker_counts.get(last_user, 0)
            self.marker_counts[last_user] = seen + 1
            if seen >= times:
                plan.action = "ok"
        return plan

    # records

    def record(self, request: Request, body: Any) -> Received:
        headers: dict[str, str] = {}
        for name, value in request.headers.items():
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        rec = Received(
            id=next(self.ids),
            received_at=getattr(request.state, "arrived_at", None) or time.time(),
            path=request.url.path,
            headers=headers,
            body=body,
        )
        if isinstance(body, dict):
            rec.model = body.get("model")
            rec.messages = body.get("messages")
            rec.temperature = body.get("temperature")
            rec.max_tokens = body.get("max_tokens")
            rec.max_completion_tokens = body.get("max_completion_tokens")
            rec.stream = body.get("stream") is True
            rec.stream_options = body.get("stream_options")
        self.records.append(rec)
        self.total += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.notify()
        return rec

    def finish(self, rec: Received, outcome: str) -> None:
        if rec.outcome != "in_progress":
            return
        rec.outcome = outcome
        rec.finished_at = time.time()
        self.in_flight -= 1
        self.notify()

    def select(self, contains: str | None, outcome: str | None) -> list[Received]:
        return [rec for rec in self.records if rec.matches(contains, outcome)]

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(
        self, count: int, contains: str | None, outcome: str | None, seconds: float
    ) -> list[Received] | None:
        """The matching records once there are `count` of them; None after `seconds`."""
        deadline = time.monotonic() + seconds
        while True:
            found = self.select(contains, outcome)
            if len(found) >= count:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)

    # waiting

    async def pause(self, request: Request | None, seconds: float | None) -> str:
        """Wait `seconds` (None: forever) unless the client disconnects (only watched when
        `request` is given and its body is read) or the stub shuts down first.
        Returns "elapsed", "client_disconnected" or "shutdown"."""
        if seconds is not None and seconds <= 0:
            return "shutdown" if self.shutdown.is_set() else "elapsed"
        waiters: dict[asyncio.Future[Any], str] = {
            asyncio.ensure_future(self.shutdown.wait()): "shutdown"
        }
        if request is not None:
            waiters[asyncio.ensure_future(_until_disconnect(request))] = "client_disconnected"
        try:
            done, _ = await asyncio.wait(
                waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in waiters:
                task.cancel()
        for task in done:
            return waiters[task]
        return "elapsed"


async def _until_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


# --- responses --------------------------------------------------------------------------------


def _error(
    status: int,
    message: str,
    *,
    kind: str,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _failure(plan: Plan) -> JSONResponse:
    headers: dict[str, str] = {}
    if plan.retry_after is not None:
        headers["retry-after"] = str(math.ceil(plan.retry_after))
        headers["retry-after-ms"] = str(round(plan.retry_after * 1000))
    if plan.status == 429:
        return _error(
            429,
            "llm-stub: rate limit reached",
            kind="requests",
            code="rate_limit_exceeded",
            headers=headers,
        )
    if plan.status >= 500:
        return _error(
            plan.status,
            f"llm-stub: server error {plan.status}",
            kind="server_error",
            headers=headers,
        )
    return _error(
        plan.status,
        f"llm-stub: failure {plan.status}",
        kind="invalid_request_error",
        headers=headers,
    )


class _SSEResponse(StreamingResponse):
    """A StreamingResponse that can end by dropping the connection, and records the outcome."""

    def __init__(
        self, content: AsyncIterator[bytes], state: StubState, rec: Received, **kwargs: Any
    ) -> None:
        super().__init__(content, media_type="text/event-stream", **kwargs)
        self._content = content
        self._state = state
        self._rec = rec

    async def stream_response(self, send: Send) -> None:
        outcome = "client_disconnected"
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            try:
                async for chunk in self.body_iterator:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except _DropConnection:
                # Return without the final body message: uvicorn closes the connection mid-body.
                outcome = "shutdown" if self._state.shutdown.is_set() else "dropped"
                self._state.log_filter.expected += 1
                return
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            outcome = "completed"
        finally:
            self._state.finish(self._rec, outcome)
            aclose = getattr(self._content, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()


class _TruncatedResponse(Response):
    """Starts a JSON response, sends half its body, then leaves it unfinished (dropped)."""

    def __init__(self, content: bytes, state: StubState) -> None:
        super().__init__(content, media_type="application/json")
        self._state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        half = self.body[: len(self.body) // 2]
        await send({"type": "http.response.body", "body": half, "more_body": True})
        self._state.log_filter.expected += 1


def _sse(data: dict[str, Any]) -> bytes:
    # orjson: the stub's own CPU time counts in the pipeline benchmark (bench/ai.py).
    return b"data: " + orjson.dumps(data) + b"\n\n"


# --- the app ----------------------------------------------------------------------------------


class _ArrivalStamp:
    """Notes when a request's headers arrived, before routing and reading the body: a request's
    `received_at`, from which its delay runs, so the stub's own work is inside the delay."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})["arrived_at"] = time.time()
        await self.app(scope, receive, send)


def create_app(behaviour: Behaviour | None = None, *, max_records: int = MAX_RECORDS) -> FastAPI:
    """The stub as an ASGI app; its state lives in `app.state.stub`."""
    state = StubState(behaviour, max_records)
    app = FastAPI(title="llm-stub", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.stub = state
    app.add_middleware(_ArrivalStamp)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": DEFAULT_MODEL, "object": "model", "created": 0, "owned_by": "llm-stub"}
            ],
        }

    @app.get("/control")
    async def get_control() -> dict[str, Any]:
        return state.control_view()

    @app.post("/control")
    async def set_control(request: Request) -> Response:
        try:
            raw = await request.json()
            new = Behaviour.model_validate(raw)
        except ValidationError as exc:
            return JSONResponse({"detail": json.loads(exc.json())}, status_code=422)
        except ValueError:
            return JSONResponse({"detail": "the body must be a JSON object"}, status_code=422)
        state.configure(new)
        return JSONResponse(state.control_view())

    @app.post("/control/reset")
    async def reset_control() -> dict[str, Any]:
        state.reset()
        return state.control_view()

    @app.get("/control/requests")
    async def get_requests(contains: str | None = None, outcome: str | None = None) -> Any:
        return {"requests": [asdict(rec) for rec in state.select(contains, outcome)]}

    @app.get("/control/wait")
    async def wait_requests(
        count: int = 1,
        contains: str | None = None,
        outcome: str | None = None,
        seconds: float = Query(10.0, alias="timeout", ge=0),
    ) -> Response:
        found = await state.wait_for(count, contains, outcome, seconds)
        if found is None:
            current = [asdict(rec) for rec in state.select(contains, outcome)]
            detail = f"fewer than {count} matching requests after {seconds}s"
            return JSONResponse({"detail": detail, "requests": current}, status_code=408)
        return JSONResponse({"requests": [asdict(rec) for rec in found]})

    @app.get("/control/stats")
    async def stats() -> dict[str, int]:
        return {
            "total": state.total,
            "in_flight": state.in_flight,
            "max_in_flight": state.max_in_flight,
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        raw = await request.body()
        try:
            body: Any = orjson.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        rec = state.record(request, body)
        try:
            return await _answer(state, request, rec, body)
        except BadRequest as exc:
            state.finish(rec, "rejected")
            return _error(400, exc.message, kind="invalid_request_error", param=exc.param)
        except asyncio.CancelledError:
            state.finish(rec, "client_disconnected")
            raise
        except Exception:
            state.finish(rec, "error")
            raise

    return app


def _validate(body: Any) -> None:
    if not isinstance(body, dict):
        raise BadRequest("llm-stub: the body must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise BadRequest("you must provide a model parameter", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array", "messages")
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest("each message needs a 'role'", "messages")
    temperature = body.get("temperature")
    if temperature is not None and (
        not isinstance(temperature, int | float) or not 0 <= temperature <= 2
    ):
        raise BadRequest("'temperature' must be a number between 0 and 2", "temperature")
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise BadRequest(f"'{name}' must be a positive integer", name)


async def _answer(state: StubState, request: Request, rec: Received, body: Any) -> Response:
    _validate(body)
    messages = body["messages"]
    last_user = last_user_text(messages)
    rec.directives = parse_directives(last_user)
    plan = state.plan(rec.directives, last_user)
    rec.action, rec.source = plan.action, plan.source

    full = plan.reply if plan.reply is not None else expected_reply(last_user)
    pieces = stream_pieces(full)
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    finish_reason = "stop"
    if limit is not None and len(pieces) > limit:
        pieces, finish_reason = pieces[:limit], "length"
    reply = "".join(pieces)
    rec.reply = reply
    prompt_tokens = sum(count_tokens(message_text(m)) for m in messages)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": len(pieces),
        "total_tokens": prompt_tokens + len(pieces),
    }
    model = body["model"]
    completion_id = f"chatcmpl-stub{rec.id}"
    created = int(rec.received_at)

    # The delay runs from the request's arrival: the stub's own parsing is part of it, so a
    # stand-in "with 100 ms latency" answers 100 ms after it was asked, not 100 ms + its work.
    delay = (
        None if plan.action == "hang" else max(0.0, plan.delay - (time.time() - rec.received_at))
    )
    waited = await state.pause(request, delay)
    if waited != "elapsed":
        state.finish(rec, waited)
        return _error(503, "llm-stub: shutting down", kind="server_error")
    if plan.action == "fail":
        state.finish(rec, "failed")
        return _failure(plan)

    if rec.stream:
        options = body.get("stream_options")
        include_usage = (
            isinstance(options, dict)
            and options.get("include_usage") is True
            and plan.usage_in_stream
        )
        stream = _Stream(model, completion_id, created, usage if include_usage else None)
        if plan.token_delay == 0 and plan.action != "drop":
            # Every token is ready at once: the whole stream in one plain response (the client
            # reads the same events), without a streaming response's per-write and per-task
            # cost, which would count as the stand-in provider's latency.
            content = stream.whole(pieces, finish_reason)
            rec.sent, rec.sent_tokens = "".join(pieces), len(pieces)
            state.finish(rec, "completed")
            return Response(
                content, media_type="text/event-stream", headers={"cache-control": "no-cache"}
            )
        chunks = _stream_chunks(state, rec, plan, pieces, finish_reason, stream)
        return _SSEResponse(chunks, state, rec, headers={"cache-control": "no-cache"})

    generation = plan.token_delay * max(0, len(pieces) - 1)
    waited = await state.pause(request, generation)
    if waited != "elapsed":
        state.finish(rec, waited)
        return _error(503, "llm-stub: shutting down", kind="server_error")
    payload = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage,
    }
    content = orjson.dumps(payload)
    if plan.action == "drop":
        state.finish(rec, "dropped")
        return _TruncatedResponse(content, state)
    rec.sent, rec.sent_tokens = reply, len(pieces)
    state.finish(rec, "completed")
    return Response(content, media_type="application/json")


@dataclass(frozen=True, slots=True)
class _Stream:
    """The events of one streamed answer."""

    model: str
    completion_id: str
    created: int
    usage: dict[str, int] | None  # sent in a last chunk when the request asked for it

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _sse(self._data(delta, finish))

    def _data(self, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self.usage is not None:
            data["usage"] = None
        return data

    def first(self) -> bytes:
        return self.chunk({"role": "assistant", "content": ""})

    def last(self, finish_reason: str) -> bytes:
        """The finish chunk, the usage chunk when asked for, and the end."""
        events = [self.chunk({}, finish_reason)]
        if self.usage is not None:
            final = self._data({}, None)
            final["choices"], final["usage"] = [], self.usage
            events.append(_sse(final))
        events.append(b"data: [DONE]\n\n")
        return b"".join(events)

    def whole(self, pieces: list[str], finish_reason: str) -> bytes:
        events = [self.first(), *(self.chunk({"content": piece}) for piece in pieces)]
        return b"".join(events) + self.last(finish_reason)


async def _stream_chunks(
    state: StubState,
    rec: Received,
    plan: Plan,
    pieces: list[str],
    finish_reason: str,
    stream: _Stream,
) -> AsyncIterator[bytes]:
    yield stream.first()
    for index, piece in enumerate(pieces):
        if plan.action == "drop" and index >= plan.drop_after:
            raise _DropConnection
        if (
            index > 0
            and plan.token_delay > 0
            and await state.pause(None, plan.token_delay) != ("elapsed")
        ):
            raise _DropConnection
        yield stream.chunk({"content": piece})
        rec.sent += piece
        rec.sent_tokens += 1
    if plan.action == "drop":
        raise _DropConnection
    yield stream.last(finish_reason)


# --- running it -------------------------------------------------------------------------------


class _StubServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: StubState) -> None:
        super().__init__(config)
        self.state = state
        self.ready = threading.Event()
        self.on_ready: list[Any] = []

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets)
            for callback in self.on_ready:
                callback()
        finally:
            self.ready.set()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Release hanging requests and stalled streams, or uvicorn would wait for them.
        self.state.shutdown.set()
        await super().shutdown(sockets)


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def _server(
    app: FastAPI, *, log_level: str, access_log: bool, graceful_seconds: float
) -> _StubServer:
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=access_log,
        lifespan="off",
        timeout_graceful_shutdown=max(1, math.ceil(graceful_seconds)),
        backlog=2048,
    )
    state: StubState = app.state.stub
    logging.getLogger("uvicorn.error").addFilter(state.log_filter)
    return _StubServer(config, state)


class StubControl:
    """A client of a running stub's control API."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def configure(self, mode: Mode = "ok", **fields: Any) -> dict[str, Any]:
        """Replace the behaviour (see the module docstring); returns the control view."""
        response = httpx.post(
            f"{self.url}/control", json={"mode": mode, **fields}, timeout=self.timeout
        )
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def reset(self) -> None:
        httpx.post(f"{self.url}/control/reset", timeout=self.timeout).raise_for_status()

    def requests(
        self, *, contains: str | None = None, outcome: str | None = None
    ) -> list[dict[str, Any]]:
        params = {k: v for k, v in {"contains": contains, "outcome": outcome}.items() if v}
        response = httpx.get(f"{self.url}/control/requests", params=params, timeout=self.timeout)
        response.raise_for_status()
        found: list[dict[str, Any]] = response.json()["requests"]
        return found

    def wait_for_requests(
        self,
        count: int = 1,
        *,
        contains: str | None = None,
        outcome: str | None = None,
        timeout: float = 10.0,
    ) -> list[dict[str, Any]]:
        """Wait until at least `count` recorded requests match; TimeoutError after `timeout`."""
        params: dict[str, Any] = {"count": count, "timeout": timeout}
        params.update({k: v for k, v in {"contains": contains, "outcome": outcome}.items() if v})
        response = httpx.get(f"{self.url}/control/wait", params=params, timeout=timeout + 10)
        if response.status_code == 408:
            seen = response.json()["requests"]
            raise TimeoutError(
                f"llm-stub: {len(seen)} of {count} requests (contains={contains!r}, "
                f"outcome={outcome!r}) after {timeout}s: {seen!r}"
            )
        response.raise_for_status()
        found: list[dict[str, Any]] = response.json()["requests"]
        return found

    def stats(self) -> dict[str, int]:
        response = httpx.get(f"{self.url}/control/stats", timeout=self.timeout)
        response.raise_for_status()
        result: dict[str, int] = response.json()
        return result


class RunningStub:
    """A stub served by a background thread of this process (`start_in_thread`)."""

    def __init__(self, server: _StubServer, thread: threading.Thread, port: int) -> None:
        self._server = server
        self._thread = thread
        self.port = port
        self.url = f"http://{HOST}:{port}"
        self.control = StubControl(self.url)

    @property
    def base_url(self) -> str:
        """What to give `openai.OpenAI(base_url=...)`."""
        return f"{self.url}/v1"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving (hanging requests are released) and wait for the thread to end."""
        self._server.should_exit = True
        self._thread.join(timeout)
        logging.getLogger("uvicorn.error").removeFilter(self._server.state.log_filter)
        if self._thread.is_alive():
            raise RuntimeError(f"llm-stub at {self.url} did not stop within {timeout}s")

    def __enter__(self) -> RunningStub:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_in_thread(
    behaviour: dict[str, Any] | None = None,
    *,
    ready_timeout: float = 10.0,
    log_level: str = "warning",
) -> RunningStub:
    """Start a stub on a free port of 127.0.0.1 in a daemon thread; returns once it serves."""
    app = create_app(Behaviour.model_validate(behaviour or {}))
    server = _server(app, log_level=log_level, access_log=False, graceful_seconds=2)
    sock = _bind(HOST, 0)
    port = sock.getsockname()[1]
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            errors.append(exc)
        finally:
            sock.close()
            server.ready.set()

    thread = threading.Thread(target=serve, name=f"llm-stub-{port}", daemon=True)
    thread.start()
    if not server.ready.wait(ready_timeout) or not server.started:
        server.should_exit = True
        raise RuntimeError(f"llm-stub did not start on port {port}: {errors or 'timeout'}")
    return RunningStub(server, thread, port)


@contextlib.contextmanager
def running_stub(behaviour: dict[str, Any] | None = None) -> Iterator[RunningStub]:
    """`start_in_thread` as a context manager."""
    stub = start_in_thread(behaviour)
    try:
        yield stub
    finally:
        stub.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.llm_stub",
        description="An OpenAI-compatible stand-in LLM for tests and benchmarks.",
    )
    parser.add_argument("--port", type=int, default=0, help="port (0: a free one)")
    parser.add_argument("--host", default=HOST, help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--control",
        default="{}",
        help="initial behaviour as control JSON (also what /control/reset restores)",
    )
    parser.add_argument("--delay-seconds", type=float, help="shorthand for control delay_seconds")
    parser.add_argument(
        "--token-delay-seconds", type=float, help="shorthand for control token_delay_seconds"
    )
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--access-log", action="store_true")
    parser.add_argument("--max-records", type=int, default=MAX_RECORDS)
    args = parser.parse_args(argv)

    control = json.loads(args.control)
    if args.delay_seconds is not None:
        control["delay_seconds"] = args.delay_seconds
    if args.token_delay_seconds is not None:
        control["token_delay_seconds"] = args.token_delay_seconds
    app = create_app(Behaviour.model_validate(control), max_records=args.max_records)
    server = _server(app, log_level=args.log_level, access_log=args.access_log, graceful_seconds=2)
    sock = _bind(args.host, args.port)
    url = f"http://{args.host}:{sock.getsockname()[1]}"
    server.on_ready.append(lambda: print(f"llm-stub listening on {url}", flush=True))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if not server.started:
        sys.exit(1)


if __name__ == "__main__":
    main()
