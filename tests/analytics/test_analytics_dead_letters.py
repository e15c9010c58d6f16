"""Entries the aggregator cannot apply go to the dead-letter stream with the reason, and the
events after them still apply; the aggregator's metrics say so."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import redis

from shared.stream_consumer import stream_names
from tests.analytics.support import EventWriter, dashboard, wait_for
from tests.chat.factories import add_message, create_conversation
from tests.harness import Stack, User

GROUP = "analytics"


@pytest.fixture
def client(stack: Stack) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(stack.redis_url)
    yield connection
    connection.close()


def dead_letter(
    client: redis.Redis, stack: Stack, match: Callable[[dict[bytes, Any]], bool]
) -> dict[bytes, Any] | None:
    _, dead = stream_names(stack.redis_prefix)
    for _, fields in client.xrange(dead):
        if fields.get(b"group") == GROUP.encode() and match(fields):
            return dict(fields)
    return None


def test_a_malformed_event_is_dead_lettered_and_the_stream_keeps_flowing(
    stack: Stack, http: httpx.Client, client: redis.Redis, new_user: Callable[..., User]
) -> None:
    stream, _ = stream_names(stack.redis_prefix)
    entry = client.xadd(stream, {"event": b'{"id": "not an event"'}).decode()
    try:
        user = new_user()
        conversation = create_conversation(http, user)
        add_message(http, user, conversation["id"])

        found = wait_for(
            lambda: dead_letter(client, stack, lambda f: f[b"entry_id"] == entry.encode()),
            "the malformed entry in the dead-letter stream",
        )
        assert found[b"reason"].startswith(b"invalid event"), found
        assert found[b"event"] == b'{"id": "not an event"'
        wait_for(lambda: dashboard(http, user)["total_messages"] == 1, "the events after it")
    finally:
        # Other tests read the whole stream and expect only valid events in it.
        client.xdel(stream, entry)


def test_an_event_that_cannot_be_applied_is_dead_lettered_after_its_retries(
    stack: Stack, http: httpx.Client, client: redis.Redis, new_user: Callable[..., User]
) -> None:
    user = new_user()
    writer = EventWriter.open(stack, user.id)
    # Valid against the event schema, but its id does not fit the rollups' integer columns:
    # every attempt to apply it fails.
    writer.conversation_id = 2**40
    try:
        event_id = writer.message(datetime.now(UTC))
    finally:
        writer.close()
    # While it is retried, the events after it go through.
    conversation = create_conversation(http, user)
    add_message(http, user, conversation["id"])
    wait_for(lambda: dashboard(http, user)["total_messages"] == 1, "the events after it")

    found = wait_for(
        lambda: dead_letter(client, stack, lambda f: event_id.encode() in f[b"event"]),
        "the unappliable event in the dead-letter stream",
    )
    assert re.match(rb"not applied after \d+ deliveries", found[b"reason"]), found
    assert int(found[b"deliveries"]) >= 5
    assert dashboard(http, user)["total_messages"] == 1


def test_the_aggregator_exposes_its_metrics(
    stack: Stack, http: httpx.Client, new_user: Callable[..., User]
) -> None:
    url = next(service.url for service in stack.services if service.name == "aggregator")
    assert url is not None
    # Enough events that this aggregator gets some even when others share the stream.
    user = new_user()
    conversation = create_conversation(http, user)
    for _ in range(10):
        add_message(http, user, conversation["id"])

    def scrape() -> str | None:
        text = httpx.get(f"{url}/metrics", timeout=10, trust_env=False).text
        wanted = ('events_consumer_pending_entries{group="analytics"}', "events_consumed_total{")
        return text if all(name in text for name in wanted) else None

    text = wait_for(scrape, "the consumer's metrics")
    for name in (
        'events_consumed_total{group="analytics",type=',
        'events_consumer_lag_entries{group="analytics"}',
        'events_consumer_oldest_unacked_age_seconds{group="analytics"}',
        "analytics_event_lag_seconds_bucket",
        "analytics_batch_apply_seconds_bucket",
    ):
        assert name in text, name
