"""The webhook process's pure parts: signatures (checked against the `standardwebhooks`
library), the retry schedule, Retry-After, the body of an event, which endpoints want it."""

from __future__ import annotations

import base64
import random
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import orjson
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from services.chat.webhooks import signing
from services.chat.webhooks.process import event_body
from services.chat.webhooks.queue import Endpoint
from services.chat.webhooks.sender import (
    backoff_seconds,
    request_of,
    retry_after_seconds,
    trace_headers,
)
from shared.events import parse_event


def test_secrets_are_standard_webhooks_secrets() -> None:
    secret = signing.new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert secret != signing.new_secret()


def test_signatures_verify_with_the_reference_library() -> None:
    secret, other = signing.new_secret(), signing.new_secret()
    body = b'{"id":"e1","type":"message.created","data":{"text":"h\xc3\xa9"}}'
    now = int(datetime.now(UTC).timestamp())
    headers = signing.headers([secret], msg_id="e1", timestamp=now, body=body)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-id"] == "e1" and headers["webhook-timestamp"] == str(now)
    assert Webhook(secret).verify(body, headers)["id"] == "e1"
    # The library's signature of the same message is ours, byte for byte.
    stamp = datetime.fromtimestamp(now, UTC)
    assert Webhook(secret).sign("e1", stamp, body.decode()) == headers["webhook-signature"]
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + b" ", headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, {**headers, "webhook-id": "e2"})
    # Two secrets (a rotation): either verifies.
    both = signing.headers([secret, other], msg_id="e1", timestamp=now, body=body)
    assert len(both["webhook-signature"].split(" ")) == 2
    assert Webhook(secret).verify(body, both) == Webhook(other).verify(body, both)


def test_backoff_grows_by_the_multiplier_within_the_cap_with_jitter() -> None:
    rng = random.Random(7)
    for attempt in range(1, 12):
        full = min(3600.0, 5.0 * 4 ** (attempt - 1))
        waits = [
            backoff_seconds(attempt, base=5, multiplier=4, cap=3600, rng=rng) for _ in range(200)
        ]
        assert all(full / 2 <= wait <= full for wait in waits), (attempt, min(waits), max(waits))
        assert max(waits) - min(waits) > full / 4  # jittered, not fixed
    assert backoff_seconds(10_000, base=5, multiplier=4, cap=60) <= 60


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert retry_after_seconds("120") == 120
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    assert retry_after_seconds("-5") == 0
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=90), usegmt=True)
    assert 85 <= (retry_after_seconds(later) or 0) <= 91


def test_the_body_is_the_event_exactly_as_the_relay_wrote_it() -> None:
    raw = orjson.dumps(
        {
            "id": str(uuid.uuid4()),
            "type": "conversation.updated",
            "version": 1,
            "occurred_at": datetime.now(UTC),
            "user_id": 3,
            "data": {"conversation_id": 9, "changes": {"title": "é", "is_pinned": True}},
        },
        option=orjson.OPT_UTC_Z,
    )
    event, _ = parse_event(raw)
    assert event_body(event).encode() == raw


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _traced_event(trace: dict[str, str] | None) -> bytes:
    event = {
        "id": str(uuid.uuid4()),
        "type": "conversation.deleted",
        "version": 1,
        "occurred_at": datetime.now(UTC),
        "user_id": 3,
        "data": {"conversation_id": 9, "agent_id": None},
    }
    if trace is not None:
        event["trace"] = trace
    return orjson.dumps(event, option=orjson.OPT_UTC_Z)


def test_a_traced_event_keeps_its_trace_in_the_body_and_names_its_request() -> None:
    raw = _traced_event({"request_id": "req-1", "traceparent": TRACEPARENT})
    event, _ = parse_event(raw)
    assert event_body(event).encode() == raw
    assert request_of(event_body(event)) == {
        "request_id": "req-1",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
    }
    untraced, _ = parse_event(_traced_event(None))
    assert request_of(event_body(untraced)) == {}
    assert request_of("not json") == {} and request_of("[1]") == {}
    assert request_of(_traced_event({"traceparent": "junk"}).decode()) == {}


def test_a_delivery_carries_its_events_traceparent_when_it_is_well_formed() -> None:
    traced = _traced_event({"request_id": "req-1", "traceparent": TRACEPARENT}).decode()
    assert trace_headers(traced) == {"traceparent": TRACEPARENT}
    assert trace_headers(_traced_event({"request_id": "req-1"}).decode()) == {}
    assert trace_headers(_traced_event({"traceparent": "junk"}).decode()) == {}
    assert trace_headers(_traced_event(None).decode()) == {}
    assert trace_headers("not json") == {}


def test_an_endpoint_wants_its_types_since_it_was_registered() -> None:
    registered = datetime(2026, 11, 27, 12, tzinfo=UTC)
    later, earlier = registered + timedelta(seconds=1), registered - timedelta(seconds=1)
    some = Endpoint(1, frozenset({"message.created"}), registered)
    assert some.wants("message.created", later)
    assert not some.wants("conversation.created", later)
    assert not some.wants("message.created", earlier)
    every = Endpoint(2, frozenset({"*"}), registered)
    assert every.wants("ai.reply.failed", later) and not every.wants("ai.reply.failed", earlier)
