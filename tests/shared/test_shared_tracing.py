"""The trace context (shared/tracing.py): W3C `traceparent` parsing and making, the span a hop
runs in, and the events' optional `trace` field (shared/events.py)."""

from __future__ import annotations

import re
import uuid
from typing import Any

import orjson
import pytest
import structlog
import structlog.testing

from shared import tracing
from shared.events import parse_event
from shared.middleware import incoming_context
from shared.stream_consumer import Delivered, log_applied

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
VALID = f"00-{TRACE_ID}-{PARENT_ID}-01"
TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$")


# --- parsing ------------------------------------------------------------------------------------


def test_a_valid_traceparent_is_parsed() -> None:
    assert tracing.parse_traceparent(VALID) == tracing.TraceParent(TRACE_ID, PARENT_ID, "01")
    assert tracing.parse_traceparent(f"00-{TRACE_ID}-{PARENT_ID}-00") == tracing.TraceParent(
        TRACE_ID, PARENT_ID, "00"
    )


def test_surrounding_whitespace_is_allowed() -> None:
    assert tracing.parse_traceparent(f" \t{VALID} ") is not None


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "garbage",
        VALID[:-1],  # flags cut short
        VALID + "0",  # one character too many
        f"00-{TRACE_ID}-{PARENT_ID}-01-extra",  # version 00 has exactly four fields
        f"ff-{TRACE_ID}-{PARENT_ID}-01",  # version ff is forbidden
        f"0g-{TRACE_ID}-{PARENT_ID}-01",  # version not hex
        f"00-{'0' * 32}-{PARENT_ID}-01",  # all-zero trace id
        f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE_ID[:-1]}-{PARENT_ID}-01",  # trace id too short
        f"00-{TRACE_ID}-{PARENT_ID}0-01",  # parent id too long
        f"00-{TRACE_ID.upper()}-{PARENT_ID}-01",  # upper-case hex is not allowed
        f"00-{TRACE_ID}-{PARENT_ID.upper()}-01",
        f"00-{TRACE_ID}-{PARENT_ID}-0A",
        f"00_{TRACE_ID}_{PARENT_ID}_01",  # wrong separators
        f"00-{TRACE_ID}-{PARENT_ID}-1",
    ],
)
def test_an_invalid_traceparent_is_refused(value: str | None) -> None:
    assert tracing.parse_traceparent(value) is None


def test_a_later_version_is_read_as_far_as_version_00_goes() -> None:
    # A later version may add fields after the flags; its first four are read.
    later = f"cc-{TRACE_ID}-{PARENT_ID}-01-what-the-future-holds"
    assert tracing.parse_traceparent(later) == tracing.TraceParent(TRACE_ID, PARENT_ID, "01")
    assert tracing.parse_traceparent(f"cc-{TRACE_ID}-{PARENT_ID}-01") is not None
    # ...but its fields must still be separated by a dash.
    assert tracing.parse_traceparent(f"cc-{TRACE_ID}-{PARENT_ID}-01x") is None


# --- spans --------------------------------------------------------------------------------------


def test_a_child_span_keeps_the_trace_and_gets_an_id_of_its_own() -> None:
    parent = tracing.parse_traceparent(VALID)
    child = tracing.TraceContext.start("req-1", parent)
    assert child.trace_id == TRACE_ID
    assert child.span_id != PARENT_ID
    assert re.fullmatch(r"[0-9a-f]{16}", child.span_id)
    assert child.traceparent == f"00-{TRACE_ID}-{child.span_id}-01"
    assert tracing.parse_traceparent(child.traceparent) == (TRACE_ID, child.span_id, "01")


def test_flags_keep_the_sampled_bit_only() -> None:
    unsampled = tracing.parse_traceparent(f"00-{TRACE_ID}-{PARENT_ID}-00")
    assert tracing.TraceContext.start("r", unsampled).flags == "00"
    unknown_bits = tracing.parse_traceparent(f"00-{TRACE_ID}-{PARENT_ID}-ff")
    assert tracing.TraceContext.start("r", unknown_bits).flags == "01"


def test_without_a_parent_a_new_trace_starts() -> None:
    first = tracing.TraceContext.start("r", None)
    second = tracing.TraceContext.start("r", None)
    assert first.trace_id != second.trace_id
    for context in (first, second):
        assert TRACEPARENT.match(context.traceparent), context.traceparent
        assert tracing.parse_traceparent(context.traceparent) is not None


def test_a_span_is_current_and_bound_into_log_context_only_while_it_runs() -> None:
    structlog.contextvars.clear_contextvars()
    assert tracing.current() is None
    assert tracing.task_headers() is None
    assert tracing.event_trace() is None
    with tracing.span("req-42", tracing.parse_traceparent(VALID)) as context:
        assert tracing.current() is context
        bound = structlog.contextvars.get_contextvars()
        assert bound == {
            "request_id": "req-42",
            "trace_id": TRACE_ID,
            "span_id": context.span_id,
        }
        assert tracing.task_headers() == {
            tracing.TASK_REQUEST_ID: "req-42",
            tracing.TASK_TRACEPARENT: context.traceparent,
        }
        assert tracing.event_trace() == {
            "request_id": "req-42",
            "traceparent": context.traceparent,
        }
    assert tracing.current() is None
    assert structlog.contextvars.get_contextvars() == {}


def test_task_headers_round_trip_and_missing_ones_start_a_new_request() -> None:
    with tracing.span("req-7", None) as sender:
        headers = tracing.task_headers()
    request_id, parent = tracing.from_task_headers(headers)
    assert request_id == "req-7"
    assert parent == (sender.trace_id, sender.span_id, "01")

    request_id, parent = tracing.from_task_headers(None)
    assert parent is None
    assert tracing.valid_request_id(request_id) == request_id
    bad = {tracing.TASK_REQUEST_ID: "has spaces", tracing.TASK_TRACEPARENT: "nonsense"}
    request_id, parent = tracing.from_task_headers(bad)
    assert request_id != "has spaces" and parent is None


def _scope(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {"type": "http", "headers": list(headers)}


def test_the_middleware_reads_request_id_and_traceparent_from_the_request() -> None:
    request_id, parent = incoming_context(
        _scope((b"x-request-id", b"abc-1"), (b"traceparent", VALID.encode()))
    )
    assert (request_id, parent) == ("abc-1", (TRACE_ID, PARENT_ID, "01"))
    request_id, parent = incoming_context(
        _scope((b"x-request-id", b"bad id"), (b"traceparent", VALID.upper().encode()))
    )
    assert request_id != "bad id" and tracing.valid_request_id(request_id)
    assert parent is None


# --- events -------------------------------------------------------------------------------------


def _event(**extra: Any) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "type": "conversation.deleted",
        "version": 1,
        "occurred_at": "2026-11-27T10:00:00Z",
        "user_id": 1,
        "data": {"conversation_id": 1, "agent_id": None},
        **extra,
    }


def test_events_with_and_without_a_trace_validate() -> None:
    old, _ = parse_event(orjson.dumps(_event()))
    assert old.trace is None
    traced, _ = parse_event(
        orjson.dumps(_event(trace={"request_id": "req-9", "traceparent": VALID}))
    )
    assert traced.trace is not None
    assert traced.trace.request_id == "req-9"
    assert traced.trace.trace_id == TRACE_ID
    odd, _ = parse_event(orjson.dumps(_event(trace={"traceparent": "junk"})))
    assert odd.trace is not None and odd.trace.trace_id is None


def test_an_applied_batch_is_logged_with_its_requests() -> None:
    batch = []
    for n in range(120):
        trace = {"request_id": f"req-{n // 2}", "traceparent": f"00-{n // 2:032x}-{PARENT_ID}-01"}
        event, data = parse_event(orjson.dumps(_event(trace=trace)))
        batch.append(Delivered(f"1-{n}", event, data))
    untraced, data = parse_event(orjson.dumps(_event()))
    batch.append(Delivered("2-0", untraced, data))
    with structlog.testing.capture_logs() as lines:
        log_applied("analytics", batch)
    # 60 requests: more than one line holds, so two lines.
    assert [line["event"] for line in lines] == ["events_applied"] * 2
    assert [line["part"] for line in lines] == ["1/2", "2/2"]
    assert all(line["log_level"] == "info" for line in lines)
    request_ids = [rid for line in lines for rid in line["request_ids"]]
    trace_ids = [tid for line in lines for tid in line["trace_ids"]]
    assert request_ids == [f"req-{n}" for n in range(60)]
    assert trace_ids == [f"{n:032x}" for n in range(60)]
    assert all(line["events"] == 121 and line["group"] == "analytics" for line in lines)

    with structlog.testing.capture_logs() as lines:
        log_applied("analytics", batch[:3])
    assert len(lines) == 1 and "part" not in lines[0]
    assert lines[0]["request_ids"] == ["req-0", "req-1"]
