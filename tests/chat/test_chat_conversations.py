"""Conversations: create/list/get/update/delete in the seed's fields, validation, 404s, delete
cascade, ordering."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from tests.chat.factories import (
    add_message,
    create_agent,
    create_conversation,
    get_conversation,
    retire_agent,
    update_conversation,
)
from tests.chat.helpers import assert_error, conversation_ids, ok_data, ts
from tests.harness import User

MISSING_ID = 2**31 - 1

SUMMARY_FIELDS = {
    "id",
    "title",
    "user_id",
    "agent_id",
    "conversation_type",
    "status",
    "is_archived",
    "is_pinned",
    "total_messages",
    "unread_count",
    "last_message_at",
    "created_at",
    "updated_at",
}


# --- create / get / list -------------------------------------------------------------------------


def test_create_then_get_returns_the_seed_fields(http: httpx.Client, alice: User) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    response = http.post(
        "/chat/conversations", json={"title": "New Customer Inquiry"}, headers=alice.headers
    )
    body = response.json()
    assert response.status_code == 201, response.text
    assert body["success"] is True
    assert body["message"] == "Conversation created successfully"
    conversation_id = body["data"]["conversation_id"]
    assert isinstance(conversation_id, int) and conversation_id > 0

    got = http.get(f"/chat/conversations/{conversation_id}", headers=alice.headers)
    assert got.json()["message"] == "Conversation found"
    conversation = ok_data(got)
    assert set(conversation) >= SUMMARY_FIELDS
    assert conversation["id"] == conversation_id
    assert conversation["title"] == "New Customer Inquiry"
    assert conversation["user_id"] == alice.id
    assert conversation["agent_id"] is None
    assert conversation["conversation_type"] == "chat"
    assert conversation["status"] == "active"
    assert conversation["is_archived"] is False
    assert conversation["is_pinned"] is False
    assert conversation["total_messages"] == 0
    assert conversation["unread_count"] == 0
    assert conversation["last_message_at"] is None
    created = ts(conversation["created_at"])
    assert before <= created <= datetime.now(UTC) + timedelta(seconds=5)
    assert ts(conversation["updated_at"]) >= created


def test_create_with_agent_and_type(http: httpx.Client, alice: User, admin: User) -> None:
    agent = create_agent(http, admin)
    conversation = create_conversation(
        http, alice, title="  Support  ", agent_id=agent["id"], conversation_type="support"
    )
    assert conversation["agent_id"] == agent["id"]
    assert conversation["conversation_type"] == "support"
    assert conversation["title"] == "Support"  # surrounding whitespace is stripped


def test_title_of_255_characters_is_accepted(http: httpx.Client, alice: User) -> None:
    conversation = create_conversation(http, alice, title="é" * 255)
    assert conversation["title"] == "é" * 255


def test_list_returns_the_callers_conversations_with_paging_fields(
    http: httpx.Client, alice: User
) -> None:
    first = create_conversation(http, alice, title="first")
    second = create_conversation(http, alice, title="second")
    response = http.get("/chat/conversations", headers=alice.headers)
    data = ok_data(response)
    assert response.json()["message"] == "Found 2 conversations"
    assert data["total"] == 2
    assert data["limit"] == 20  # the default
    assert data["offset"] == 0
    assert data["has_more"] is False
    assert data["next_cursor"] is None
    assert [c["id"] for c in data["conversations"]] == [second["id"], first["id"]]
    listed = {c["id"]: c for c in data["conversations"]}
    for expected in (first, second):
        assert set(listed[expected["id"]]) >= SUMMARY_FIELDS
        assert listed[expected["id"]] == expected


def test_list_of_a_new_user_is_empty(http: httpx.Client, alice: User) -> None:
    data = ok_data(http.get("/chat/conversations", headers=alice.headers))
    assert data["conversations"] == []
    assert data["total"] == 0
    assert data["has_more"] is False


def test_list_filters_archived(http: httpx.Client, alice: User) -> None:
    kept = create_conversation(http, alice)
    archived = create_conversation(http, alice, archived=True)
    assert conversation_ids(http, alice, archived="true") == [archived["id"]]
    assert conversation_ids(http, alice, archived="false") == [kept["id"]]
    assert conversation_ids(http, alice) == [archived["id"], kept["id"]]
    data = ok_data(
        http.get("/chat/conversations", params={"archived": "true"}, headers=alice.headers)
    )
    assert data["total"] == 1


def test_requests_without_a_token_are_refused(http: httpx.Client) -> None:
    assert_error(http.get("/chat/conversations"), 401)
    assert_error(http.post("/chat/conversations", json={"title": "x"}), 401)
    assert_error(
        http.get("/chat/conversations", headers={"Authorization": "Bearer not-a-token"}), 401
    )


# --- ordering ------------------------------------------------------------------------------------


def test_list_is_pinned_first_then_newest_first(http: httpx.Client, alice: User) -> None:
    a = create_conversation(http, alice, title="a")
    b = create_conversation(http, alice, title="b", pinned=True)
    c = create_conversation(http, alice, title="c")
    d = create_conversation(http, alice, title="d", pinned=True)
    e = create_conversation(http, alice, title="e")
    assert conversation_ids(http, alice) == [d["id"], b["id"], e["id"], c["id"], a["id"]]
    # Unpinning moves a conversation back among the others by id, not by update time.
    update_conversation(http, alice, d["id"], is_pinned=False)
    assert conversation_ids(http, alice) == [b["id"], e["id"], d["id"], c["id"], a["id"]]


# --- create validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({}, id="missing-title"),
        pytest.param({"agent_id": None}, id="only-agent"),
        pytest.param({"title": ""}, id="empty-title"),
        pytest.param({"title": "   \t "}, id="blank-title"),
        pytest.param({"title": "x" * 256}, id="title-256"),
        pytest.param({"title": None}, id="null-title"),
        pytest.param({"title": 123}, id="int-title"),
        pytest.param({"title": ["a"]}, id="list-title"),
        pytest.param({"title": "ok", "agent_id": "abc"}, id="str-agent"),
        pytest.param({"title": "ok", "agent_id": 0}, id="agent-0"),
        pytest.param({"title": "ok", "agent_id": -5}, id="agent-negative"),
        pytest.param({"title": "ok", "agent_id": 2**31}, id="agent-too-big"),
        pytest.param({"title": "ok", "agent_id": 1.5}, id="agent-float"),
        pytest.param({"title": "ok", "agent_id": MISSING_ID}, id="agent-missing"),
        pytest.param({"title": "ok", "user_id": 1}, id="unknown-user_id"),
        pytest.param({"title": "ok", "total_messages": 7}, id="unknown-total_messages"),
        pytest.param({"title": "ok", "colour": "red"}, id="unknown-field"),
        pytest.param({"title": "ok", "conversation_type": "Bad Type!"}, id="bad-type"),
        pytest.param({"title": "a\x00b"}, id="nul-title"),
        pytest.param([{"title": "ok"}], id="array-body"),
        pytest.param("title", id="string-body"),
    ],
)
def test_create_rejects_bad_bodies(http: httpx.Client, alice: User, body: Any) -> None:
    assert_error(
        http.post("/chat/conversations", json=body, headers=alice.headers), 422, "validation_error"
    )
    assert conversation_ids(http, alice) == []


def test_create_rejects_malformed_json(http: httpx.Client, alice: User) -> None:
    response = http.post(
        "/chat/conversations",
        content=b'{"title": "x"',
        headers={**alice.headers, "Content-Type": "application/json"},
    )
    assert_error(response, 422)
    assert conversation_ids(http, alice) == []


def test_create_with_a_retired_agent_is_422(http: httpx.Client, alice: User, admin: User) -> None:
    agent = create_agent(http, admin)
    retire_agent(http, admin, agent["id"])
    response = http.post(
        "/chat/conversations", json={"title": "x", "agent_id": agent["id"]}, headers=alice.headers
    )
    body = assert_error(response, 422, "validation_error")
    assert "agent_id" in body["message"]
    assert conversation_ids(http, alice) == []


# --- get / 404 -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("GET", "", None),
        ("PUT", "", {"title": "x"}),
        ("DELETE", "", None),
        ("GET", "/messages", None),
        ("POST", "/messages", {"content": "hello"}),
    ],
)
def test_missing_conversation_is_404(
    http: httpx.Client, alice: User, method: str, suffix: str, body: Any
) -> None:
    response = http.request(
        method, f"/chat/conversations/{MISSING_ID}{suffix}", json=body, headers=alice.headers
    )
    assert_error(response, 404, "not_found")


@pytest.mark.parametrize("bad_id", ["0", "-1", "abc", "1.5", str(2**31)])
def test_malformed_conversation_id_is_422(http: httpx.Client, alice: User, bad_id: str) -> None:
    assert_error(http.get(f"/chat/conversations/{bad_id}", headers=alice.headers), 422)


# --- update --------------------------------------------------------------------------------------


def _put(http: httpx.Client, user: User, conversation_id: int, body: Any) -> httpx.Response:
    return http.put(f"/chat/conversations/{conversation_id}", json=body, headers=user.headers)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"title": "Updated Conversation Title"}, {"title": "Updated Conversation Title"}),
        ({"is_pinned": True}, {"is_pinned": True}),
        ({"is_archived": True}, {"is_archived": True}),
        ({"status": "closed"}, {"status": "closed"}),
        (
            {"title": "Both", "is_pinned": True, "status": "closed"},
            {"title": "Both", "is_pinned": True, "status": "closed"},
        ),
    ],
)
def test_update_each_allowed_field(
    http: httpx.Client, alice: User, changes: dict[str, Any], expected: dict[str, Any]
) -> None:
    conversation = create_conversation(http, alice, title="Original")
    response = _put(http, alice, conversation["id"], changes)
    assert ok_data(response)["conversation_id"] == conversation["id"]
    assert response.json()["message"] == "Conversation updated successfully"
    after = get_conversation(http, alice, conversation["id"])
    for name, value in expected.items():
        assert after[name] == value, (name, after)
    untouched = SUMMARY_FIELDS - set(expected) - {"updated_at"}
    for name in untouched:
        assert after[name] == conversation[name], (name, after)
    assert ts(after["updated_at"]) >= ts(conversation["updated_at"])


def test_update_status_back_to_active_and_flags_back_to_false(
    http: httpx.Client, alice: User
) -> None:
    conversation = create_conversation(http, alice, pinned=True, archived=True)
    update_conversation(http, alice, conversation["id"], status="closed")
    update_conversation(
        http, alice, conversation["id"], status="active", is_pinned=False, is_archived=False
    )
    after = get_conversation(http, alice, conversation["id"])
    assert (after["status"], after["is_pinned"], after["is_archived"]) == ("active", False, False)


def test_update_agent_id_set_change_and_clear(http: httpx.Client, alice: User, admin: User) -> None:
    first, second = create_agent(http, admin), create_agent(http, admin)
    conversation = create_conversation(http, alice)
    update_conversation(http, alice, conversation["id"], agent_id=first["id"])
    assert get_conversation(http, alice, conversation["id"])["agent_id"] == first["id"]
    update_conversation(http, alice, conversation["id"], agent_id=second["id"])
    assert get_conversation(http, alice, conversation["id"])["agent_id"] == second["id"]
    update_conversation(http, alice, conversation["id"], agent_id=None)
    assert get_conversation(http, alice, conversation["id"])["agent_id"] is None


def test_update_to_a_missing_or_retired_agent_is_422(
    http: httpx.Client, alice: User, admin: User
) -> None:
    agent = create_agent(http, admin)
    conversation = create_conversation(http, alice, agent_id=agent["id"])
    assert_error(_put(http, alice, conversation["id"], {"agent_id": MISSING_ID}), 422)
    other = create_agent(http, admin)
    retire_agent(http, admin, other["id"])
    assert_error(_put(http, alice, conversation["id"], {"agent_id": other["id"]}), 422)
    assert get_conversation(http, alice, conversation["id"]) == conversation


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({}, id="empty"),
        pytest.param({"user_id": 1}, id="user_id"),
        pytest.param({"total_messages": 99}, id="total_messages"),
        pytest.param({"unread_count": 5}, id="unread_count"),
        pytest.param({"id": 1}, id="id"),
        pytest.param({"created_at": "2020-01-01T00:00:00Z"}, id="created_at"),
        pytest.param({"updated_at": "2020-01-01T00:00:00Z"}, id="updated_at"),
        pytest.param({"last_message_at": "2020-01-01T00:00:00Z"}, id="last_message_at"),
        pytest.param({"conversation_type": "other"}, id="conversation_type"),
        pytest.param({"title": "ok", "user_id": 1}, id="title-plus-user_id"),
        pytest.param({"title": "ok", "total_messages": 99}, id="title-plus-total"),
        pytest.param({"title": ""}, id="empty-title"),
        pytest.param({"title": "  "}, id="blank-title"),
        pytest.param({"title": "x" * 256}, id="long-title"),
        pytest.param({"title": None}, id="null-title"),
        pytest.param({"is_pinned": None}, id="null-pinned"),
        pytest.param({"is_pinned": "maybe"}, id="str-pinned"),
        pytest.param({"is_archived": [True]}, id="list-archived"),
        pytest.param({"status": "deleted"}, id="unknown-status"),
        pytest.param({"status": None}, id="null-status"),
        pytest.param({"agent_id": "abc"}, id="str-agent"),
        pytest.param({"agent_id": 0}, id="zero-agent"),
    ],
)
def test_update_rejects_bad_bodies_and_changes_nothing(
    http: httpx.Client, alice: User, body: dict[str, Any]
) -> None:
    conversation = create_conversation(http, alice, title="Keep me")
    assert_error(_put(http, alice, conversation["id"], body), 422, "validation_error")
    assert get_conversation(http, alice, conversation["id"]) == conversation


# --- delete --------------------------------------------------------------------------------------


def test_delete_removes_the_conversation(http: httpx.Client, alice: User) -> None:
    kept = create_conversation(http, alice)
    doomed = create_conversation(http, alice)
    add_message(http, alice, doomed["id"])
    response = http.delete(f"/chat/conversations/{doomed['id']}", headers=alice.headers)
    assert ok_data(response) == {"conversation_id": doomed["id"]}
    assert response.json()["message"] == "Conversation deleted successfully"
    assert_error(http.get(f"/chat/conversations/{doomed['id']}", headers=alice.headers), 404)
    assert_error(
        http.get(f"/chat/conversations/{doomed['id']}/messages", headers=alice.headers), 404
    )
    assert_error(http.delete(f"/chat/conversations/{doomed['id']}", headers=alice.headers), 404)
    assert conversation_ids(http, alice) == [kept["id"]]


def test_delete_cascades_to_messages_attachments_sessions_and_read_state(
    http: httpx.Client, alice: User, db: psycopg.Connection
) -> None:
    conversation = create_conversation(http, alice)
    other = create_conversation(http, alice)
    message_ids = [add_message(http, alice, conversation["id"])["message_id"] for _ in range(3)]
    other_message = add_message(http, alice, other["id"])["message_id"]
    for message_id in [*message_ids, other_message]:
        db.execute(
            """
            INSERT INTO chat.message_attachments (message_id, file_name, file_type, file_size)
            VALUES (%s, 'notes.txt', 'text/plain', 12)
            """,
            (message_id,),
        )
    # Posting the messages recorded a session each; marking read leaves a read pointer.
    for conversation_id in (conversation["id"], other["id"]):
        ok_data(http.post(f"/chat/conversations/{conversation_id}/read", headers=alice.headers))

    def counts(conversation_id: int, ids: list[int]) -> tuple[int, int, int, int, int]:
        row = db.execute(
            """
            SELECT
              (SELECT count(*) FROM chat.conversations WHERE id = %(c)s),
              (SELECT count(*) FROM chat.messages WHERE conversation_id = %(c)s),
              (SELECT count(*) FROM chat.message_attachments WHERE message_id = ANY(%(m)s)),
              (SELECT count(*) FROM chat.chat_session_history WHERE conversation_id = %(c)s),
              (SELECT count(*) FROM chat.conversation_reads WHERE conversation_id = %(c)s)
            """,
            {"c": conversation_id, "m": ids},
        ).fetchone()
        assert row is not None
        return tuple(int(v) for v in row)  # type: ignore[return-value]

    assert counts(conversation["id"], message_ids) == (1, 3, 3, 1, 1)
    ok_data(http.delete(f"/chat/conversations/{conversation['id']}", headers=alice.headers))
    assert counts(conversation["id"], message_ids) == (0, 0, 0, 0, 0)
    # The other conversation keeps everything.
    assert counts(other["id"], [other_message]) == (1, 1, 1, 1, 1)
