"""Object-level access: another user's conversations look missing (404) and stay unchanged;
lists and search never show another user's rows; agent administration is for admins."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.chat.factories import (
    add_message,
    create_agent,
    create_conversation,
    get_conversation,
    list_messages,
    search,
    unique_word,
)
from tests.chat.helpers import assert_error, conversation_ids, ok_data
from tests.harness import User


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("GET", "", None),
        ("PUT", "", {"title": "stolen"}),
        ("PUT", "", {"is_pinned": True, "is_archived": True, "status": "closed"}),
        ("DELETE", "", None),
        ("GET", "/messages", None),
        ("POST", "/messages", {"content": "intruder"}),
        ("POST", "/read", None),
        ("POST", "/read", {"message_id": 1}),
        ("GET", "/sessions", None),
    ],
)
def test_other_users_conversation_is_404_and_unchanged(
    http: httpx.Client, alice: User, bob: User, method: str, suffix: str, body: Any
) -> None:
    conversation = create_conversation(http, alice, title="Alice's")
    add_message(http, alice, conversation["id"], content="private note")
    before = get_conversation(http, alice, conversation["id"])
    messages_before = list_messages(http, alice, conversation["id"])

    response = http.request(
        method, f"/chat/conversations/{conversation['id']}{suffix}", json=body, headers=bob.headers
    )
    error = assert_error(response, 404, "not_found")
    # Indistinguishable from a conversation that does not exist.
    missing = assert_error(
        http.request(
            method, f"/chat/conversations/{2**31 - 1}{suffix}", json=body, headers=bob.headers
        ),
        404,
    )
    assert error["error"]["code"] == missing["error"]["code"]

    assert get_conversation(http, alice, conversation["id"]) == before
    assert list_messages(http, alice, conversation["id"]) == messages_before
    assert conversation_ids(http, bob) == []


def test_lists_and_search_only_show_own_rows(http: httpx.Client, alice: User, bob: User) -> None:
    word = unique_word()
    alices = [create_conversation(http, alice, title=f"alice {i}") for i in range(3)]
    for conversation in alices:
        add_message(http, alice, conversation["id"], content=f"secret {word}")
    bobs = create_conversation(http, bob, title="bob")
    add_message(http, bob, bobs["id"], content=f"public {word}")

    bob_list = ok_data(http.get("/chat/conversations", headers=bob.headers))
    assert [c["id"] for c in bob_list["conversations"]] == [bobs["id"]]
    assert bob_list["total"] == 1
    assert all(c["user_id"] == bob.id for c in bob_list["conversations"])
    for params in ({"archived": "false"}, {"limit": 100}, {"limit": 1, "offset": 0}):
        assert conversation_ids(http, bob, **params) == [bobs["id"]]

    found = search(http, bob, word)
    assert found["total"] == 1
    assert [r["conversation_id"] for r in found["results"]] == [bobs["id"]]
    # Naming Alice's conversation does not widen Bob's search.
    scoped = search(http, bob, word, conversation_id=alices[0]["id"])
    assert (scoped["total"], scoped["results"]) == (0, [])

    alice_found = search(http, alice, word)
    assert alice_found["total"] == 3
    assert {r["conversation_id"] for r in alice_found["results"]} == {c["id"] for c in alices}


def test_other_users_message_cursor_reveals_nothing(
    http: httpx.Client, alice: User, bob: User
) -> None:
    conversation = create_conversation(http, alice)
    for i in range(3):
        add_message(http, alice, conversation["id"], content=f"m{i}")
    page = list_messages(http, alice, conversation["id"], limit=1)
    assert page["next_cursor"]
    response = http.get(
        f"/chat/conversations/{conversation['id']}/messages",
        params={"limit": 1, "cursor": page["next_cursor"]},
        headers=bob.headers,
    )
    assert_error(response, 404)


def _all_agent_names(http: httpx.Client, admin: User) -> set[str]:
    names: set[str] = set()
    offset = 0
    while True:
        page = ok_data(
            http.get(
                "/chat/agents",
                params={"limit": 100, "offset": offset, "include_inactive": "true"},
                headers=admin.headers,
            )
        )
        names.update(agent["name"] for agent in page["agents"])
        offset += 100
        if offset >= page["total"]:
            return names


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/chat/agents", {"name": "{name} sneaky", "model": "m"}),
        ("PUT", "/chat/agents/{id}", {"name": "{name} renamed"}),
        ("DELETE", "/chat/agents/{id}", None),
        ("GET", "/chat/agents?include_inactive=true", None),
    ],
)
def test_agent_administration_is_403_for_users(
    http: httpx.Client, alice: User, admin: User, method: str, path: str, body: Any
) -> None:
    name = f"Guarded {unique_word()}"
    agent = create_agent(http, admin, name=name)
    if body is not None:
        body = {k: v.format(name=name) if isinstance(v, str) else v for k, v in body.items()}
    response = http.request(method, path.format(id=agent["id"]), json=body, headers=alice.headers)
    assert_error(response, 403, "forbidden")
    assert ok_data(http.get(f"/chat/agents/{agent['id']}", headers=admin.headers)) == agent
    assert [n for n in _all_agent_names(http, admin) if n.startswith(name)] == [name]
