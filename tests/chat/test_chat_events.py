"""Events: every change writes its event in the same transaction (the outbox), and the relay
appends it to the Redis stream `chat.events` in order, valid against the shared schema; after
Redis loses its data the retained events are appended again."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
import redis

from shared.events import EVENT_STREAM, InvalidEvent, iso_utc, parse_event, validate_data
from tests.chat.factories import add_message, create_conversation
from tests.chat.helpers import ok_data
from tests.harness import Stack, User

DEADLINE = 20.0


@pytest.fixture
def stream(stack: Stack) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(stack.redis_url)
    yield client
    client.close()


def events_of(stack: Stack, client: redis.Redis, conversation_id: int) -> list[tuple[str, Any]]:
    """(type, data) of the stream's events about one conversation, in stream order."""
    found = []
    for _, fields in client.xrange(f"{stack.redis_prefix}{EVENT_STREAM}"):
        try:
            event, data = parse_event(fields.get(b"event", b""))
        except InvalidEvent:
            continue  # another test's deliberately malformed entry (the stream is shared)
        if getattr(data, "conversation_id", None) == conversation_id:
            found.append((event.type, data))
    return found


def wait_events(
    stack: Stack, client: redis.Redis, conversation_id: int, count: int
) -> list[tuple[str, Any]]:
    deadline = time.monotonic() + DEADLINE
    while len(found := events_of(stack, client, conversation_id)) < count:
        assert time.monotonic() < deadline, f"only {found}"
        time.sleep(0.05)  # a polling interval; the loop waits on the stream's content
    return found


def test_changes_reach_the_stream_in_order_and_valid(
    stack: Stack, http: httpx.Client, alice: User, stream: redis.Redis, db: psycopg.Connection
) -> None:
    conversation = create_conversation(http, alice, title="events")
    cid = conversation["id"]
    http.put(f"/chat/conversations/{cid}", json={"is_pinned": True}, headers=alice.headers)
    add_message(http, alice, cid, content="hello")
    reply = ok_data(
        http.post(
            f"/chat/conversations/{cid}/ai-response",
            json={"message": "answer me"},
            headers=alice.headers,
        )
    )
    ok_data(http.delete(f"/chat/conversations/{cid}", headers=alice.headers))
    found = wait_events(stack, stream, cid, 7)
    assert [kind for kind, _ in found] == [
        "conversation.created",
        "conversation.updated",
        "message.created",
        "message.created",
        "message.created",
        "ai.reply.completed",
        "conversation.deleted",
    ]
    assert found[0][1].title == "events"
    assert found[1][1].changes == {"is_pinned": True}
    assert [data.sender for kind, data in found if kind == "message.created"] == [
        "user",
        "user",
        "agent",
    ]
    completed = found[5][1]
    assert completed.message_id == reply["message_id"] and completed.status == "completed"
    assert completed.input_tokens == reply["input_tokens"]
    assert completed.output_tokens == reply["output_tokens"]
    unpublished = db.execute(
        "SELECT count(*) FROM chat.outbox WHERE published_at IS NULL AND user_id = %s",
        (alice.id,),
    ).fetchone()
    assert unpublished == (0,)


def test_a_failed_write_publishes_nothing(
    stack: Stack, http: httpx.Client, alice: User, bob: User, db: psycopg.Connection
) -> None:
    conversation = create_conversation(http, alice)
    # Bob cannot post into Alice's conversation: 404, and no event for it.
    response = http.post(
        f"/chat/conversations/{conversation['id']}/messages",
        json={"content": "not mine", "sender_type": "user"},
        headers=bob.headers,
    )
    assert response.status_code == 404
    rows = db.execute(
        "SELECT type FROM chat.outbox WHERE (data->>'conversation_id')::int = %s ORDER BY id",
        (conversation["id"],),
    ).fetchall()
    assert rows == [("conversation.created",)]


def test_events_are_appended_again_after_redis_lost_them(
    stack: Stack, http: httpx.Client, alice: User, stream: redis.Redis
) -> None:
    conversation = create_conversation(http, alice)
    wait_events(stack, stream, conversation["id"], 1)
    # As after a Redis restart without persistence: the stream and the relay's marker are gone.
    stream.delete(
        f"{stack.redis_prefix}{EVENT_STREAM}", f"{stack.redis_prefix}{EVENT_STREAM}:relay-marker"
    )
    found = wait_events(stack, stream, conversation["id"], 1)
    assert found[0][0] == "conversation.created"


def test_an_ai_requests_message_event_is_the_one_a_post_writes(
    http: httpx.Client, alice: User, db: psycopg.Connection
) -> None:
    """The AI request builds its user message's event in SQL (services/chat/job_intake.py): the
    data must be what `validate_data` makes of the stored message, as for a post."""
    conversation = create_conversation(http, alice)
    ok_data(
        http.post(
            f"/chat/conversations/{conversation['id']}/ai-response",
            json={"message": "an event, please"},
            headers={**alice.headers, "Prefer": "respond-async"},
        ),
        202,
    )
    message = db.execute(
        "SELECT id, created_at FROM chat.messages WHERE conversation_id = %s",
        (conversation["id"],),
    ).fetchone()
    assert message is not None
    stored = db.execute(
        """
        SELECT data, trace FROM chat.outbox
        WHERE type = 'message.created' AND user_id = %s AND (data->>'message_id')::int = %s
        """,
        (alice.id, message[0]),
    ).fetchall()
    expected = {
        "conversation_id": conversation["id"],
        "message_id": message[0],
        "sender": "user",
        "agent_id": None,
        "created_at": message[1],
    }
    assert [data for data, _ in stored] == [validate_data("message.created", expected)]
    assert stored[0][1]["request_id"]


def test_an_ai_replys_events_are_the_ones_python_would_write(
    http: httpx.Client, alice: User, db: psycopg.Connection
) -> None:
    """The worker stores its reply's two events in the reply's statement, with the message's id
    and time set in SQL (services/ai_worker/repository.py): the data must be what
    `validate_data` makes of the stored rows."""
    conversation = create_conversation(http, alice)
    reply = ok_data(
        http.post(
            f"/chat/conversations/{conversation['id']}/ai-response",
            json={"message": "two events, please"},
            headers=alice.headers,
            timeout=60.0,
        )
    )
    row = db.execute(
        """
        SELECT m.created_at, j.agent_id, j.model, j.input_tokens, j.output_tokens, j.cost,
               j.processing_time, j.time_to_first_token
        FROM chat.messages m JOIN chat.ai_jobs j ON j.id = m.ai_job_id WHERE m.id = %s
        """,
        (reply["message_id"],),
    ).fetchone()
    assert row is not None
    created_at, agent_id, model, input_tokens, output_tokens, cost, ptime, ttft = row
    stored = db.execute(
        """
        SELECT type, data FROM chat.outbox
        WHERE user_id = %s AND (data->>'message_id')::int = %s ORDER BY id
        """,
        (alice.id, reply["message_id"]),
    ).fetchall()
    assert stored == [
        (
            "message.created",
            validate_data(
                "message.created",
                {
                    "conversation_id": conversation["id"],
                    "message_id": reply["message_id"],
                    "sender": "agent",
                    "agent_id": agent_id,
                    "created_at": created_at,
                },
            ),
        ),
        (
            "ai.reply.completed",
            validate_data(
                "ai.reply.completed",
                {
                    "job_id": reply["job_id"],
                    "conversation_id": conversation["id"],
                    "agent_id": agent_id,
                    "model": model,
                    "status": "completed",
                    "message_id": reply["message_id"],
                    "input_tokens": input_tokens,
                    "output_tokens": output_tokens,
                    "cost": cost,
                    "processing_time": ptime,
                    "time_to_first_token": ttft,
                    "batch_id": None,
                },
            ),
        ),
    ]


@pytest.mark.parametrize("microseconds", [0, 1, 120_000, 999_999])
def test_sql_built_event_times_are_written_as_pydantic_writes_them(
    db: psycopg.Connection, microseconds: int
) -> None:
    """Consumers parse either form, but a SQL-built event should not differ from a Python-built
    one: no fraction when it is zero, six digits otherwise, UTC as `Z`, whatever the session's
    time zone."""
    at = datetime(2026, 11, 27, 23, 59, 59, tzinfo=UTC) + timedelta(microseconds=microseconds)
    with db.transaction():
        db.execute("SET LOCAL TimeZone = 'Asia/Kathmandu'")
        row = db.execute(f"SELECT {iso_utc('%(at)s::timestamptz')}", {"at": at}).fetchone()
    fields = {"conversation_id": 1, "message_id": 1, "sender": "user", "agent_id": None}
    assert row == (validate_data("message.created", {**fields, "created_at": at})["created_at"],)
