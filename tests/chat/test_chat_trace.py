"""One request, followed: its X-Request-ID and W3C trace context go from the gateway to chat, into
the Celery task's headers, into the events it causes, and into the aggregator's log lines; every
one of those lines is JSON naming the service, the level, the request id and the trace id."""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg

from tests.chat.factories import add_message, create_conversation
from tests.chat.helpers import ok_data
from tests.harness import Stack, User

LOG_DEADLINE = 30.0
SPAN_ID = re.compile(r"^[0-9a-f]{16}$")
TRACE_ID = re.compile(r"^[0-9a-f]{32}$")


def _lines_mentioning(path: Path, text: str) -> list[dict[str, Any]]:
    """Every line of the log that mentions `text`, each parsed: a line that is not one JSON
    object fails the test."""
    if not path.exists():
        return []
    found = []
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if text in raw:
            try:
                line = json.loads(raw)
            except ValueError:
                raise AssertionError(f"not a JSON line in {path.name}: {raw[:300]}") from None
            assert isinstance(line, dict), raw[:300]
            found.append(line)
    return found


def _wait_for_lines(
    stack: Stack,
    service: str,
    text: str,
    wanted: Callable[[dict[str, Any]], bool],
) -> list[dict[str, Any]]:
    """Polls the service's logs (with a deadline) until a line mentioning `text` is `wanted`;
    returns every line mentioning it. Every process of the service counts: earlier tests may
    have restarted it (`<service>-restarted-N.log`) or started more (`<service>-extra-N.log`)
    that share its work, a consumer group's events say."""
    deadline = time.monotonic() + LOG_DEADLINE
    while True:
        paths = [stack.log_dir / f"{service}.log", *stack.log_dir.glob(f"{service}-*.log")]
        lines = [line for path in paths for line in _lines_mentioning(path, text)]
        if any(wanted(line) for line in lines):
            return lines
        if time.monotonic() > deadline:
            raise AssertionError(
                f"no wanted line mentioning {text} in {[p.name for p in paths]} after "
                f"{LOG_DEADLINE}s; lines mentioning it: {lines}"
            )
        time.sleep(0.05)  # polling interval, not synchronisation: the deadline above decides


def _assert_structured(line: dict[str, Any], service: str) -> None:
    assert line.get("service") == service, line
    assert line.get("level") in ("debug", "info", "warning", "error", "critical"), line
    assert isinstance(line.get("timestamp"), str) and line["timestamp"], line
    assert isinstance(line.get("msg"), str), line


def _assert_in_request(line: dict[str, Any], service: str, request_id: str, trace_id: str) -> None:
    _assert_structured(line, service)
    assert line.get("request_id") == request_id, line
    assert line.get("trace_id") == trace_id, line
    assert SPAN_ID.match(str(line.get("span_id"))), line


def _outbox_traces(db: psycopg.Connection, conversation_id: int) -> list[tuple[str, Any]]:
    rows = db.execute(
        """
        SELECT type, trace FROM chat.outbox
        WHERE (data->>'conversation_id')::int = %s ORDER BY id
        """,
        (conversation_id,),
    ).fetchall()
    return [(row[0], row[1]) for row in rows]


def test_one_request_is_followed_through_every_service(
    stack: Stack, http: httpx.Client, alice: User, db: psycopg.Connection
) -> None:
    conversation = create_conversation(http, alice)
    request_id = f"follow-{secrets.token_hex(10)}"
    trace_id = secrets.token_hex(16)
    caller_span = secrets.token_hex(8)
    message = f"follow me {secrets.token_hex(4)}"
    response = http.post(
        f"/chat/conversations/{conversation['id']}/ai-response",
        json={"message": message},
        headers={
            **alice.headers,
            "X-Request-ID": request_id,
            "traceparent": f"00-{trace_id}-{caller_span}-01",
        },
        timeout=60.0,
    )
    ok_data(response)
    assert response.headers["x-request-id"] == request_id

    gateway = _wait_for_lines(stack, "gateway", request_id, lambda line: line["msg"] == "request")
    chat = _wait_for_lines(stack, "chat", request_id, lambda line: line["msg"] == "request")
    worker = _wait_for_lines(
        stack, "ai_worker", request_id, lambda line: line["msg"] == "reply_stored"
    )
    for service, lines in (("gateway", gateway), ("chat", chat), ("ai_worker", worker)):
        for line in lines:
            _assert_in_request(line, service, request_id, trace_id)
    (worker_line,) = [line for line in worker if line["msg"] == "reply_stored"]
    assert worker_line["message_id"] == response.json()["data"]["message_id"]

    # Each hop is a span of its own in the caller's trace.
    spans = {
        "gateway": {line["span_id"] for line in gateway},
        "chat": {line["span_id"] for line in chat},
        "ai_worker": {line["span_id"] for line in worker},
    }
    assert all(len(ids) == 1 for ids in spans.values()), spans
    gateway_span, chat_span, worker_span = (ids.pop() for ids in spans.values())
    assert len({caller_span, gateway_span, chat_span, worker_span}) == 4, spans

    # The model provider's request is a child of the worker's span, in the caller's trace.
    assert stack.llm is not None
    [sent] = stack.llm.control.requests(contains=message)
    assert sent["headers"]["traceparent"] == f"00-{trace_id}-{worker_span}-01"

    # The events it caused carry it: the user's message (written by chat) and the reply's two
    # (written by the worker), each with the traceparent of the span that wrote it.
    events = _outbox_traces(db, conversation["id"])
    assert [kind for kind, _ in events] == [
        "conversation.created",
        "message.created",
        "message.created",
        "ai.reply.completed",
    ], events
    created_by = [chat_span, chat_span, worker_span, worker_span]
    for (kind, trace), span in zip(events[1:], created_by[1:], strict=True):
        assert trace == {
            "request_id": request_id,
            "traceparent": f"00-{trace_id}-{span}-01",
        }, (kind, trace)
    # The conversation was created by another request, with a trace of its own.
    assert events[0][1]["request_id"] != request_id
    # The job keeps it too, for the sweeper to send the job again on this request's behalf.
    job_trace = db.execute(
        "SELECT trace FROM chat.ai_jobs WHERE id = %s", (response.json()["data"]["job_id"],)
    ).fetchone()
    chat_parent = f"00-{trace_id}-{chat_span}-01"
    assert job_trace == ({"request_id": request_id, "traceparent": chat_parent},)

    # The aggregator names the request (and its trace) in the line of each batch it applied.
    def names_request(line: dict[str, Any]) -> bool:
        return line["msg"] == "events_applied" and request_id in line["request_ids"]

    aggregator = _wait_for_lines(stack, "aggregator", request_id, names_request)
    for line in aggregator:
        _assert_structured(line, "aggregator")
        assert names_request(line), line
        assert line["trace_ids"][line["request_ids"].index(request_id)] == trace_id, line


def _get_with(
    http: httpx.Client, user: User, path: str, request_id: str, traceparent: str | None
) -> None:
    headers = {**user.headers, "X-Request-ID": request_id}
    if traceparent is not None:
        headers["traceparent"] = traceparent
    ok_data(http.get(path, headers=headers))


def test_an_invalid_or_missing_traceparent_starts_a_new_trace_that_the_services_share(
    stack: Stack, http: httpx.Client, alice: User
) -> None:
    invalid_trace = "A" * 32  # upper-case hex: not a valid trace id
    cases = [
        ("chat", "/chat/conversations", f"00-{invalid_trace}-{secrets.token_hex(8)}-01"),
        ("analytics", "/chat/analytics/dashboard", f"00-{'0' * 32}-{secrets.token_hex(8)}-01"),
        ("chat", "/chat/conversations", None),
    ]
    for service, path, traceparent in cases:
        request_id = f"fresh-{secrets.token_hex(10)}"
        _get_with(http, alice, path, request_id, traceparent)
        gateway = _wait_for_lines(
            stack, "gateway", request_id, lambda line: line["msg"] == "request"
        )
        upstream = _wait_for_lines(
            stack, service, request_id, lambda line: line["msg"] == "request"
        )
        (gateway_line,) = gateway
        (upstream_line,) = upstream
        trace_id = gateway_line["trace_id"]
        assert TRACE_ID.match(trace_id) and trace_id not in (invalid_trace.lower(), "0" * 32)
        _assert_in_request(gateway_line, "gateway", request_id, trace_id)
        _assert_in_request(upstream_line, service, request_id, trace_id)
        assert upstream_line["span_id"] != gateway_line["span_id"]


def test_a_job_the_sweeper_sends_again_runs_in_the_request_that_created_it(
    stack: Stack, http: httpx.Client, alice: User, db: psycopg.Connection
) -> None:
    conversation = create_conversation(http, alice)
    message = add_message(http, alice, conversation["id"], content="was my task ever sent?")
    request_id = f"lost-{secrets.token_hex(10)}"
    trace_id, span = secrets.token_hex(16), secrets.token_hex(8)
    # Stored by its request, but its publish was lost (a crash): only the sweeper sends it.
    row = db.execute(
        """
        INSERT INTO chat.ai_jobs (conversation_id, user_id, agent_id, prompt_message_id, model,
                                  deadline_at, created_at, trace)
        SELECT %s, %s, id, %s, model, now() + interval '10 minutes', now() - interval '1 hour',
               %s::jsonb
        FROM chat.agents WHERE is_default
        RETURNING id
        """,
        (
            conversation["id"],
            alice.id,
            message["message_id"],
            json.dumps({"request_id": request_id, "traceparent": f"00-{trace_id}-{span}-01"}),
        ),
    ).fetchone()
    assert row is not None
    job_id = int(row[0])

    def stored(line: dict[str, Any]) -> bool:
        return line["msg"] == "reply_stored" and line.get("job_id") == job_id

    lines = _wait_for_lines(stack, "ai_worker", request_id, stored)
    for line in lines:
        _assert_in_request(line, "ai_worker", request_id, trace_id)
        assert line["span_id"] != span  # a span of its own, a child of the request's
