"""Unread state: `unread_count` is the number of agent messages after the owner's read pointer,
which POST /chat/conversations/{id}/read moves forward only, writing a conversation.read event."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import httpx
import psycopg

from tests.chat.factories import add_message, create_conversation, get_conversation
from tests.chat.helpers import assert_error, ok_data
from tests.harness import User

MISSING_ID = 2**31 - 1


def ask(http: httpx.Client, user: User, conversation_id: int) -> dict[str, Any]:
    """One AI reply (the stand-in LLM answers at once): a user message, then an agent one."""
    return ok_data(
        http.post(
            f"/chat/conversations/{conversation_id}/ai-response",
            json={"message": f"question {secrets.token_hex(3)}"},
            headers=user.headers,
        )
    )


def mark_read(
    http: httpx.Client,
    user: User,
    conversation_id: int,
    message_id: int | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return http.post(
        f"/chat/conversations/{conversation_id}/read",
        json=None if message_id is None else {"message_id": message_id},
        headers=headers or user.headers,
    )


def unread(http: httpx.Client, user: User, conversation_id: int) -> int:
    count: int = get_conversation(http, user, conversation_id)["unread_count"]
    return count


def read_events(db: psycopg.Connection, conversation_id: int) -> list[tuple[Any, ...]]:
    return db.execute(
        """
        SELECT user_id, (data->>'last_read_message_id')::int FROM chat.outbox
        WHERE type = 'conversation.read' AND (data->>'conversation_id')::int = %s
        ORDER BY id
        """,
        (conversation_id,),
    ).fetchall()


def test_agent_replies_are_unread_until_marked_read(http: httpx.Client, alice: User) -> None:
    conversation = create_conversation(http, alice)
    cid = conversation["id"]
    assert conversation["unread_count"] == 0
    add_message(http, alice, cid)  # the user's own messages are never unread
    assert unread(http, alice, cid) == 0
    ask(http, alice, cid)
    second = ask(http, alice, cid)
    assert unread(http, alice, cid) == 2

    state = ok_data(mark_read(http, alice, cid))
    assert state == {
        "conversation_id": cid,
        "last_read_message_id": second["message_id"],
        "unread_count": 0,
    }
    assert unread(http, alice, cid) == 0

    ask(http, alice, cid)
    assert unread(http, alice, cid) == 1


def test_admin_posted_agent_messages_count_as_unread(http: httpx.Client, admin: User) -> None:
    conversation = create_conversation(http, admin)
    cid = conversation["id"]
    first = add_message(http, admin, cid, sender_type="agent")
    add_message(http, admin, cid, sender_type="user")
    add_message(http, admin, cid, sender_type="agent")
    assert unread(http, admin, cid) == 2
    # Read up to the first agent message: the later one stays unread.
    state = ok_data(mark_read(http, admin, cid, first["message_id"]))
    assert state["last_read_message_id"] == first["message_id"]
    assert state["unread_count"] == 1
    assert unread(http, admin, cid) == 1


def test_every_answer_carries_the_computed_count(http: httpx.Client, admin: User) -> None:
    """List, get, create and update answers all show the count from the read pointer."""
    counts = {}
    for wanted in (0, 3, 1):
        conversation = create_conversation(http, admin)
        for _ in range(wanted):
            add_message(http, admin, conversation["id"], sender_type="agent")
        counts[conversation["id"]] = wanted
    listed = ok_data(http.get("/chat/conversations", params={"limit": 100}, headers=admin.headers))
    shown = {c["id"]: c["unread_count"] for c in listed["conversations"] if c["id"] in counts}
    assert shown == counts

    cid = next(cid for cid, wanted in counts.items() if wanted == 3)
    updated = ok_data(
        http.put(f"/chat/conversations/{cid}", json={"title": "renamed"}, headers=admin.headers)
    )
    assert updated["conversation"]["unread_count"] == 3
    created = ok_data(
        http.post("/chat/conversations", json={"title": "new"}, headers=admin.headers), 201
    )
    assert created["conversation"]["unread_count"] == 0


def test_the_pointer_never_moves_backwards(
    http: httpx.Client, admin: User, db: psycopg.Connection
) -> None:
    conversation = create_conversation(http, admin)
    cid = conversation["id"]
    first, second = (add_message(http, admin, cid, sender_type="agent") for _ in range(2))
    ok_data(mark_read(http, admin, cid))
    state = ok_data(mark_read(http, admin, cid, first["message_id"]))
    assert state["last_read_message_id"] == second["message_id"]
    assert state["unread_count"] == 0
    assert unread(http, admin, cid) == 0
    # Only the move wrote an event; marking an earlier message changed nothing.
    assert read_events(db, cid) == [(admin.id, second["message_id"])]


def test_marking_writes_one_event_per_move(
    http: httpx.Client, alice: User, db: psycopg.Connection
) -> None:
    conversation = create_conversation(http, alice)
    cid = conversation["id"]
    first = ask(http, alice, cid)
    ok_data(mark_read(http, alice, cid))
    ok_data(mark_read(http, alice, cid))  # already read: no move, no event
    second = ask(http, alice, cid)
    ok_data(mark_read(http, alice, cid, second["message_id"]))
    assert read_events(db, cid) == [
        (alice.id, first["message_id"]),
        (alice.id, second["message_id"]),
    ]


def test_an_empty_conversation_has_nothing_to_mark(
    http: httpx.Client, alice: User, db: psycopg.Connection
) -> None:
    conversation = create_conversation(http, alice)
    state = ok_data(mark_read(http, alice, conversation["id"]))
    assert state == {
        "conversation_id": conversation["id"],
        "last_read_message_id": None,
        "unread_count": 0,
    }
    assert read_events(db, conversation["id"]) == []


def test_another_users_conversation_is_404(
    http: httpx.Client, alice: User, bob: User, db: psycopg.Connection
) -> None:
    conversation = create_conversation(http, alice)
    reply = ask(http, alice, conversation["id"])
    assert_error(mark_read(http, bob, conversation["id"]), 404, "not_found")
    assert_error(mark_read(http, bob, conversation["id"], reply["message_id"]), 404, "not_found")
    assert_error(mark_read(http, bob, MISSING_ID), 404, "not_found")
    assert unread(http, alice, conversation["id"]) == 1
    assert read_events(db, conversation["id"]) == []


def test_a_message_of_another_conversation_is_a_clear_422(
    http: httpx.Client, admin: User, db: psycopg.Connection
) -> None:
    conversation = create_conversation(http, admin)
    other = create_conversation(http, admin)
    add_message(http, admin, conversation["id"], sender_type="agent")
    elsewhere = add_message(http, admin, other["id"], sender_type="agent")
    for message_id in (elsewhere["message_id"], MISSING_ID):
        body = assert_error(mark_read(http, admin, conversation["id"], message_id), 422)
        assert (
            f"message {message_id} is not in conversation {conversation['id']}" in (body["message"])
        )
        assert body["error"]["details"][0]["loc"] == ["body", "message_id"]
    assert unread(http, admin, conversation["id"]) == 1
    assert read_events(db, conversation["id"]) == []


def test_invalid_bodies_are_422(http: httpx.Client, alice: User) -> None:
    conversation = create_conversation(http, alice)
    url = f"/chat/conversations/{conversation['id']}/read"
    for body in ({"message_id": 0}, {"message_id": "x"}, {"last_read": 1}):
        assert_error(http.post(url, json=body, headers=alice.headers), 422)


def test_idempotency_key_replays_the_first_answer(
    http: httpx.Client, alice: User, db: psycopg.Connection
) -> None:
    conversation = create_conversation(http, alice)
    cid = conversation["id"]
    reply = ask(http, alice, cid)
    headers = {**alice.headers, "Idempotency-Key": f"read-{secrets.token_hex(8)}"}
    first = mark_read(http, alice, cid, headers=headers)
    ask(http, alice, cid)
    second = mark_read(http, alice, cid, headers=headers)
    assert second.json() == first.json()
    assert second.headers.get("Idempotent-Replayed") == "true"
    assert ok_data(first)["last_read_message_id"] == reply["message_id"]
    # The replay wrote nothing: the newer reply is still unread.
    assert unread(http, alice, cid) == 1
    assert read_events(db, cid) == [(alice.id, reply["message_id"])]


async def test_concurrent_marks_end_at_the_furthest_message(
    ahttp: httpx.AsyncClient, http: httpx.Client, admin: User, db: psycopg.Connection
) -> None:
    conversation = create_conversation(http, admin)
    cid = conversation["id"]
    ids = [add_message(http, admin, cid, sender_type="agent")["message_id"] for _ in range(8)]
    responses = await asyncio.gather(
        *(
            ahttp.post(
                f"/chat/conversations/{cid}/read", json={"message_id": mid}, headers=admin.headers
            )
            for mid in reversed(ids)
        )
    )
    assert [r.status_code for r in responses] == [200] * len(ids), [r.text for r in responses]
    assert ok_data(mark_read(http, admin, cid))["last_read_message_id"] == ids[-1]
    assert unread(http, admin, cid) == 0
    # Every event is a forward move, ending at the furthest message.
    moves = [mid for _, mid in read_events(db, cid)]
    assert moves == sorted(moves) and moves[-1] == ids[-1]
