"""Messages: add and list in the seed's fields, validation, who may post as `agent`, ordering,
and exact counters under concurrent posts."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.chat.factories import add_message, create_conversation, get_conversation, list_messages
from tests.chat.helpers import assert_error, ok_data, ts
from tests.harness import User

MESSAGE_FIELDS = {
    "id",
    "conversation_id",
    "content",
    "content_type",
    "sender",
    "message_type",
    "status",
    "tokens_used",
    "processing_time",
    "created_at",
    "updated_at",
}


def _post(http: httpx.Client, user: User, conversation_id: int, body: Any) -> httpx.Response:
    return http.post(
        f"/chat/conversations/{conversation_id}/messages", json=body, headers=user.headers
    )


def test_add_message_answers_the_seed_fields_and_counts(http: httpx.Client, alice: User) -> None:
    conversation = create_conversation(http, alice)
    before = datetime.now(UTC) - timedelta(seconds=5)
    response = _post(
        http,
        alice,
        conversation["id"],
        {"content": "My order number is #12345", "sender_type": "user"},
    )
    data = ok_data(response, 201)
    assert response.json()["message"] == "Message added successfully"
    assert isinstance(data["message_id"], int) and data["message_id"] > 0
    assert data["conversation_id"] == conversation["id"]
    assert data["content"] == "My order number is #12345"
    assert data["sender"] == "user"
    assert data["content_type"] == "text"
    assert data["message_type"] == "text"
    assert data["status"] == "sent"
    assert data["total_messages"] == 1
    created_at = ts(data["created_at"])
    assert before <= created_at <= datetime.now(UTC) + timedelta(seconds=5)

    after = get_conversation(http, alice, conversation["id"])
    assert after["total_messages"] == 1
    assert ts(after["last_message_at"]) == created_at

    second = add_message(http, alice, conversation["id"], content="second")
    assert second["total_messages"] == 2
    assert get_conversation(http, alice, conversation["id"])["total_messages"] == 2


def test_sender_type_defaults_to_user(http: httpx.Client, alice: User) -> None:
    conversation = create_conversation(http, alice)
    assert add_message(http, alice, conversation["id"], content="hi")["sender"] == "user"


def test_content_is_stored_verbatim(http: httpx.Client, alice: User) -> None:
    conversation = create_conversation(http, alice)
    content = "  Ünïcödé 🎉 <b>bold</b> 'quotes' \"double\" \\ back\nslash\ttab  "
    created = add_message(http, alice, conversation["id"], content=content)
    assert created["content"] == content
    [listed] = list_messages(http, alice, conversation["id"])["messages"]
    assert listed["content"] == content


def test_list_messages_returns_the_seed_fields(http: httpx.Client, alice: User) -> None:
    conversation = create_conversation(http, alice)
    created = add_message(http, alice, conversation["id"], content="Hello, I need help")
    response = http.get(f"/chat/conversations/{conversation['id']}/messages", headers=alice.headers)
    data = ok_data(response)
    assert response.json()["message"] == "Found 1 messages"
    assert data["total"] == 1
    assert data["limit"] == 50  # the default
    assert data["offset"] == 0
    assert data["has_more"] is False
    assert data["next_cursor"] is None
    [message] = data["messages"]
    assert set(message) >= MESSAGE_FIELDS
    assert message["id"] == created["message_id"]
    assert message["conversation_id"] == conversation["id"]
    assert message["content"] == "Hello, I need help"
    assert (message["sender"], message["content_type"], message["message_type"]) == (
        "user",
        "text",
        "text",
    )
    assert message["status"] == "sent"
    assert message["tokens_used"] is None
    assert message["processing_time"] is None
    assert ts(message["created_at"]) == ts(created["created_at"])


def test_list_messages_of_an_empty_conversation(http: httpx.Client, alice: User) -> None:
    conversation = create_conversation(http, alice)
    data = list_messages(http, alice, conversation["id"])
    assert (data["messages"], data["total"], data["has_more"]) == ([], 0, False)


def test_messages_newest_first_by_default_and_oldest_first_with_asc(
    http: httpx.Client, alice: User
) -> None:
    conversation = create_conversation(http, alice)
    ids = [
        add_message(http, alice, conversation["id"], content=f"m{i}")["message_id"]
        for i in range(5)
    ]
    assert ids == sorted(ids)
    newest_first = list_messages(http, alice, conversation["id"])["messages"]
    assert [m["id"] for m in newest_first] == ids[::-1]
    assert [m["content"] for m in newest_first] == ["m4", "m3", "m2", "m1", "m0"]
    explicit = list_messages(http, alice, conversation["id"], order="desc")["messages"]
    assert [m["id"] for m in explicit] == ids[::-1]
    oldest_first = list_messages(http, alice, conversation["id"], order="asc")["messages"]
    assert [m["id"] for m in oldest_first] == ids
    stamps = [ts(m["created_at"]) for m in oldest_first]
    assert stamps == sorted(stamps)


def test_list_messages_rejects_unknown_order(http: httpx.Client, alice: User) -> None:
    conversation = create_conversation(http, alice)
    response = http.get(
        f"/chat/conversations/{conversation['id']}/messages",
        params={"order": "sideways"},
        headers=alice.headers,
    )
    assert_error(response, 422, "validation_error")


# --- who may post as an agent --------------------------------------------------------------------


def test_user_posting_as_agent_is_403_and_nothing_is_written(
    http: httpx.Client, alice: User
) -> None:
    conversation = create_conversation(http, alice)
    response = _post(
        http, alice, conversation["id"], {"content": "I am the AI", "sender_type": "agent"}
    )
    assert_error(response, 403, "forbidden")
    assert list_messages(http, alice, conversation["id"])["total"] == 0
    after = get_conversation(http, alice, conversation["id"])
    assert (after["total_messages"], after["last_message_at"]) == (0, None)


def test_admin_posting_as_agent_is_201(http: httpx.Client, admin: User) -> None:
    conversation = create_conversation(http, admin)
    created = add_message(http, admin, conversation["id"], content="Hello!", sender_type="agent")
    assert created["sender"] == "agent"
    [message] = list_messages(http, admin, conversation["id"])["messages"]
    assert message["sender"] == "agent"
    assert get_conversation(http, admin, conversation["id"])["total_messages"] == 1


# --- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({}, id="missing-content"),
        pytest.param({"content": ""}, id="empty"),
        pytest.param({"content": "   \n\t "}, id="blank"),
        pytest.param({"content": "abc\x00def"}, id="nul"),
        pytest.param({"content": "\x00"}, id="only-nul"),
        pytest.param({"content": None}, id="null"),
        pytest.param({"content": 42}, id="int"),
        pytest.param({"content": ["a"]}, id="list"),
        pytest.param({"content": "ok", "sender_type": "robot"}, id="unknown-sender"),
        pytest.param({"content": "ok", "sender_type": None}, id="null-sender"),
        pytest.param({"content": "ok", "sender": "user"}, id="unknown-field"),
        pytest.param({"content": "ok", "conversation_id": 1}, id="conversation_id-field"),
        pytest.param({"content": "ok", "tokens_used": 5}, id="tokens_used-field"),
        pytest.param({"content": "ok", "content_type": "Not A Slug"}, id="bad-content_type"),
        pytest.param({"content": "ok", "message_type": ""}, id="empty-message_type"),
    ],
)
def test_add_message_rejects_bad_bodies(http: httpx.Client, alice: User, body: Any) -> None:
    conversation = create_conversation(http, alice)
    assert_error(_post(http, alice, conversation["id"], body), 422, "validation_error")
    assert list_messages(http, alice, conversation["id"])["total"] == 0
    assert get_conversation(http, alice, conversation["id"])["total_messages"] == 0


def test_message_longer_than_the_maximum_is_422(http: httpx.Client, alice: User) -> None:
    """32,000 characters is the longest message the service takes (README)."""
    conversation = create_conversation(http, alice)
    ok_data(_post(http, alice, conversation["id"], {"content": "a" * 32_000}), 201)
    assert_error(_post(http, alice, conversation["id"], {"content": "a" * 32_001}), 422)
    assert list_messages(http, alice, conversation["id"])["total"] == 1


# --- counters under concurrency ------------------------------------------------------------------


async def test_fifty_concurrent_posts_count_exactly(
    ahttp: httpx.AsyncClient, http: httpx.Client, alice: User
) -> None:
    conversation = create_conversation(http, alice)
    url = f"/chat/conversations/{conversation['id']}/messages"

    async def post(i: int) -> httpx.Response:
        return await ahttp.post(url, json={"content": f"concurrent {i}"}, headers=alice.headers)

    responses = await asyncio.gather(*(post(i) for i in range(50)))
    created = [ok_data(r, 201) for r in responses]
    message_ids = {c["message_id"] for c in created}
    assert len(message_ids) == 50
    # Each post saw its own count: the counter was taken under a lock, one at a time.
    assert sorted(c["total_messages"] for c in created) == list(range(1, 51))

    after = get_conversation(http, alice, conversation["id"])
    assert after["total_messages"] == 50
    listed = list_messages(http, alice, conversation["id"])
    assert listed["total"] == 50
    assert {m["id"] for m in listed["messages"]} == message_ids
    assert {m["content"] for m in listed["messages"]} == {f"concurrent {i}" for i in range(50)}
    newest_stamp = max(ts(m["created_at"]) for m in listed["messages"])
    assert ts(after["last_message_at"]) == newest_stamp


async def test_concurrent_posts_keep_created_at_in_id_order(
    ahttp: httpx.AsyncClient, http: httpx.Client, alice: User
) -> None:
    """'Newest first' is id order; created_at must not contradict it, and the conversation's
    last_message_at is the created_at of the message the list shows first."""
    conversation = create_conversation(http, alice)
    url = f"/chat/conversations/{conversation['id']}/messages"
    responses = await asyncio.gather(
        *(ahttp.post(url, json={"content": f"c{i}"}, headers=alice.headers) for i in range(50))
    )
    for response in responses:
        ok_data(response, 201)
    oldest_first = list_messages(http, alice, conversation["id"], order="asc")["messages"]
    assert len(oldest_first) == 50
    out_of_order = [
        (earlier["id"], earlier["created_at"], later["id"], later["created_at"])
        for earlier, later in zip(oldest_first, oldest_first[1:], strict=False)
        if ts(later["created_at"]) < ts(earlier["created_at"])
    ]
    assert out_of_order == [], (
        f"{len(out_of_order)} times created_at goes backwards along ids: {out_of_order[:3]}"
    )
    after = get_conversation(http, alice, conversation["id"])
    assert ts(after["last_message_at"]) == ts(oldest_first[-1]["created_at"])
