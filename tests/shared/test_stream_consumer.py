"""The shared consumer-group loop (shared/stream_consumer.py) against the real Redis: batches,
acknowledgement after apply, poison isolation, reclaim, dead letters, a lost group."""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import redis

from shared.stream_consumer import Delivered, StreamConsumer, stream_names
from tests.harness import Stack


def event(event_type: str = "conversation.created", **data: Any) -> bytes:
    payload = {
        "conversation_id": 1,
        "agent_id": None,
        "title": "t",
        "created_at": "2026-11-27T00:00:00Z",
        **data,
    }
    return orjson.dumps(
        {
            "id": str(uuid.uuid4()),
            "type": event_type,
            "version": 1,
            "occurred_at": datetime.now(UTC),
            "user_id": 7,
            "data": payload,
        }
    )


@pytest.fixture
def prefix(stack: Stack) -> Iterator[str]:
    name = f"{stack.redis_prefix}consumer-{secrets.token_hex(3)}:"
    yield name
    client = redis.Redis.from_url(stack.redis_url)
    client.delete(*stream_names(name))
    client.close()


@pytest.fixture
def client(stack: Stack) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(stack.redis_url)
    yield connection
    connection.close()


class Recorder:
    """An `apply` that records what it got and fails for conversation ids it is told to."""

    def __init__(self, failing: set[int] | None = None) -> None:
        self.applied: list[Delivered] = []
        self.batches: list[int] = []
        self.failing = failing or set()

    def __call__(self, batch: Sequence[Delivered]) -> None:
        if any(one.data.conversation_id in self.failing for one in batch):
            raise RuntimeError("cannot apply")
        self.batches.append(len(batch))
        self.applied.extend(batch)


def consumer(client: redis.Redis, prefix: str, apply: Recorder, **options: Any) -> StreamConsumer:
    made = StreamConsumer(
        client, prefix=prefix, group="test", consumer="c1", apply=apply, block_ms=10, **options
    )
    made.ensure_group()
    return made


def test_a_batch_is_applied_once_then_acknowledged(client: redis.Redis, prefix: str) -> None:
    stream, _ = stream_names(prefix)
    apply = Recorder()
    loop = consumer(client, prefix, apply)
    for i in range(5):
        client.xadd(stream, {"event": event(conversation_id=i)})
    loop.step()
    assert [one.data.conversation_id for one in apply.applied] == [0, 1, 2, 3, 4]
    assert apply.batches == [5]
    assert client.xpending(stream, "test")["pending"] == 0
    loop.step()
    assert len(apply.applied) == 5


def test_a_bad_entry_is_dead_lettered_and_the_rest_flows(client: redis.Redis, prefix: str) -> None:
    stream, dead = stream_names(prefix)
    apply = Recorder()
    loop = consumer(client, prefix, apply)
    client.xadd(stream, {"event": event(conversation_id=1)})
    client.xadd(stream, {"event": b"{not json"})
    client.xadd(stream, {"event": event("message.created", conversation_id=2)})  # fields missing
    client.xadd(stream, {"other": b"x"})
    client.xadd(stream, {"event": event(conversation_id=3)})
    loop.step()
    assert [one.data.conversation_id for one in apply.applied] == [1, 3]
    letters = client.xrange(dead)
    assert len(letters) == 3
    reasons = [fields[b"reason"].decode() for _, fields in letters]
    assert all(reason.startswith("invalid event") for reason in reasons), reasons
    assert client.xpending(stream, "test")["pending"] == 0


def test_a_failing_event_is_retried_then_dead_lettered_without_holding_others(
    client: redis.Redis, prefix: str
) -> None:
    stream, dead = stream_names(prefix)
    apply = Recorder(failing={2})
    loop = consumer(client, prefix, apply, claim_idle_ms=20, max_deliveries=3)
    for i in (1, 2, 3):
        client.xadd(stream, {"event": event(conversation_id=i)})
    loop.step()
    assert [one.data.conversation_id for one in apply.applied] == [1, 3]
    assert client.xpending(stream, "test")["pending"] == 1
    deadline = time.monotonic() + 10
    while not client.xrange(dead):
        assert time.monotonic() < deadline, "never dead-lettered"
        loop._next_reclaim = 0  # reclaim on every step
        time.sleep(0.03)  # let the entry pass its idle time; the loop waits on the dead letter
        loop.step()
    [(_, fields)] = client.xrange(dead)
    assert fields[b"reason"] == b"not applied after 3 deliveries"
    assert fields[b"group"] == b"test" and int(fields[b"deliveries"]) == 3
    assert client.xpending(stream, "test")["pending"] == 0
    assert [one.data.conversation_id for one in apply.applied] == [1, 3]


def test_an_entry_of_a_crashed_consumer_is_reclaimed(client: redis.Redis, prefix: str) -> None:
    stream, _ = stream_names(prefix)
    client.xadd(stream, {"event": event(conversation_id=9)})
    apply = Recorder()
    loop = consumer(client, prefix, apply, claim_idle_ms=20)
    # Another consumer read it and died before acknowledging.
    client.xreadgroup("test", "crashed", {stream: ">"}, count=10)
    deadline = time.monotonic() + 10
    while not apply.applied:
        assert time.monotonic() < deadline, "never reclaimed"
        loop._next_reclaim = 0
        time.sleep(0.03)  # let the entry pass its idle time; the loop waits on the apply
        loop.step()
    assert apply.applied[0].data.conversation_id == 9
    assert client.xpending(stream, "test")["pending"] == 0


def test_a_stream_deleted_under_a_blocked_read_is_a_lost_group(
    stack: Stack, client: redis.Redis, prefix: str
) -> None:
    """Redis 7 wakes a consumer blocked in XREADGROUP on a deleted key with an UNBLOCKED error:
    the loop must treat it as Redis losing its data (create the group again), not die."""
    stream, _ = stream_names(prefix)
    name = f"blocked-{secrets.token_hex(4)}"
    own = redis.Redis.from_url(stack.redis_url, client_name=name, socket_timeout=30)
    apply = Recorder()
    loop = consumer(own, prefix, apply)
    loop.block_ms = 10_000
    worker = threading.Thread(target=loop.run, daemon=True)
    worker.start()

    def blocked() -> bool:
        return any(
            c.get("name") == name and c.get("cmd") == "xreadgroup" and "b" in c.get("flags", "")
            for c in client.client_list()
        )

    try:
        deadline = time.monotonic() + 10
        while not blocked():
            assert time.monotonic() < deadline, "the consumer never blocked in XREADGROUP"
            time.sleep(0.01)  # a polling interval; the condition above is what is waited on
        client.delete(stream)
        client.xadd(stream, {"event": event(conversation_id=9)})
        while not apply.applied:
            assert worker.is_alive(), "the consumer loop died"
            assert time.monotonic() < deadline + 10, "the event after the loss was not applied"
            time.sleep(0.01)  # a polling interval
    finally:
        loop.block_ms = 10  # the next read returns at once, and the loop sees it should stop
        loop.stopping.set()
        worker.join(timeout=15)
        own.close()
    assert [one.data.conversation_id for one in apply.applied] == [9]


def test_a_lost_group_is_created_again(client: redis.Redis, prefix: str) -> None:
    stream, _ = stream_names(prefix)
    apply = Recorder()
    loop = consumer(client, prefix, apply)
    client.delete(stream)  # Redis lost its data
    with pytest.raises(redis.ResponseError, match="NOGROUP"):
        loop.step()
    client.xadd(stream, {"event": event(conversation_id=5)})
    loop.ensure_group()
    loop.step()
    assert [one.data.conversation_id for one in apply.applied] == [5]
