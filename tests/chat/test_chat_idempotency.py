"""Idempotency-Key on POST /chat/conversations and POST /chat/conversations/{id}/messages."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import httpx
import pytest

from tests.chat.factories import create_conversation, get_conversation, list_messages
from tests.chat.helpers import assert_error, conversation_ids, ok_data
from tests.harness import User


def _key() -> str:
    return f"key-{secrets.token_hex(8)}"


def _with_key(user: User, key: str) -> dict[str, str]:
    return {**user.headers, "Idempotency-Key": key}


def _conversations_total(http: httpx.Client, user: User) -> int:
    return ok_data(http.get("/chat/conversations", headers=user.headers))["total"]


# --- conversations -------------------------------------------------------------------------------


def test_create_conversation_replays_the_first_answer(http: httpx.Client, alice: User) -> None:
    key = _key()
    body = {"title": "Once only"}
    first = http.post("/chat/conversations", json=body, headers=_with_key(alice, key))
    second = http.post("/chat/conversations", json=body, headers=_with_key(alice, key))
    assert first.status_code == second.status_code == 201
    assert second.json() == first.json()
    assert first.headers.get("Idempotent-Replayed") is None
    assert second.headers.get("Idempotent-Replayed") == "true"
    assert _conversations_total(http, alice) == 1
    conversation_id = first.json()["data"]["conversation_id"]
    assert get_conversation(http, alice, conversation_id)["title"] == "Once only"


def test_without_a_key_each_post_creates(http: httpx.Client, alice: User) -> None:
    for _ in range(2):
        response = http.post("/chat/conversations", json={"title": "twice"}, headers=alice.headers)
        ok_data(response, 201)
        assert response.headers.get("Idempotent-Replayed") is None
    assert _conversations_total(http, alice) == 2


def test_different_keys_create_different_conversations(http: httpx.Client, alice: User) -> None:
    body = {"title": "same body"}
    a = ok_data(http.post("/chat/conversations", json=body, headers=_with_key(alice, _key())), 201)
    b = ok_data(http.post("/chat/conversations", json=body, headers=_with_key(alice, _key())), 201)
    assert a["conversation_id"] != b["conversation_id"]
    assert _conversations_total(http, alice) == 2


async def test_ten_concurrent_requests_with_one_key_create_one_conversation(
    ahttp: httpx.AsyncClient, http: httpx.Client, alice: User
) -> None:
    key = _key()
    responses = await asyncio.gather(
        *(
            ahttp.post("/chat/conversations", json={"title": "race"}, headers=_with_key(alice, key))
            for _ in range(10)
        )
    )
    assert [r.status_code for r in responses] == [201] * 10, [r.text for r in responses]
    ids = {r.json()["data"]["conversation_id"] for r in responses}
    assert len(ids) == 1
    replayed = [r.headers.get("Idempotent-Replayed") for r in responses]
    assert replayed.count("true") == 9
    assert _conversations_total(http, alice) == 1
    assert conversation_ids(http, alice) == list(ids)


def test_same_key_with_a_different_body_is_422(http: httpx.Client, alice: User) -> None:
    key = _key()
    first = ok_data(
        http.post("/chat/conversations", json={"title": "first"}, headers=_with_key(alice, key)),
        201,
    )
    response = http.post(
        "/chat/conversations", json={"title": "second"}, headers=_with_key(alice, key)
    )
    body = assert_error(response, 422, "validation_error")
    assert "Idempotency-Key" in body["message"]
    assert conversation_ids(http, alice) == [first["conversation_id"]]
    assert get_conversation(http, alice, first["conversation_id"])["title"] == "first"


def test_same_key_on_the_other_endpoint_is_422(http: httpx.Client, alice: User) -> None:
    conversation = create_conversation(http, alice)
    key = _key()
    ok_data(
        http.post("/chat/conversations", json={"title": "x"}, headers=_with_key(alice, key)), 201
    )
    response = http.post(
        f"/chat/conversations/{conversation['id']}/messages",
        json={"content": "hello"},
        headers=_with_key(alice, key),
    )
    assert_error(response, 422)
    assert list_messages(http, alice, conversation["id"])["total"] == 0


def test_users_have_separate_key_spaces(http: httpx.Client, alice: User, bob: User) -> None:
    key = _key()
    body = {"title": "shared key"}
    a = http.post("/chat/conversations", json=body, headers=_with_key(alice, key))
    b = http.post("/chat/conversations", json=body, headers=_with_key(bob, key))
    assert a.status_code == b.status_code == 201
    assert b.headers.get("Idempotent-Replayed") is None
    a_id, b_id = a.json()["data"]["conversation_id"], b.json()["data"]["conversation_id"]
    assert a_id != b_id
    assert conversation_ids(http, alice) == [a_id]
    assert conversation_ids(http, bob) == [b_id]
    # Bob's reuse with a different body is judged against Bob's own first request only.
    assert_error(
        http.post("/chat/conversations", json={"title": "other"}, headers=_with_key(bob, key)), 422
    )


def test_a_failed_first_attempt_does_not_burn_the_key(http: httpx.Client, alice: User) -> None:
    key = _key()
    bad = http.post(
        "/chat/conversations",
        json={"title": "x", "agent_id": 2**31 - 1},
        headers=_with_key(alice, key),
    )
    assert_error(bad, 422)
    good = http.post("/chat/conversations", json={"title": "x"}, headers=_with_key(alice, key))
    ok_data(good, 201)
    assert good.headers.get("Idempotent-Replayed") is None
    assert _conversations_total(http, alice) == 1


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("k" * 300, id="300-chars"),
        pytest.param("k" * 256, id="256-chars"),
        pytest.param("has space", id="space"),
        pytest.param("tab\there", id="tab"),
    ],
)
def test_invalid_keys_are_422(http: httpx.Client, alice: User, key: str) -> None:
    response = http.post("/chat/conversations", json={"title": "x"}, headers=_with_key(alice, key))
    body = assert_error(response, 422, "validation_error")
    assert "Idempotency-Key" in body["message"]
    assert _conversations_total(http, alice) == 0


def test_empty_key_is_422(http: httpx.Client, alice: User) -> None:
    response = http.post("/chat/conversations", json={"title": "x"}, headers=_with_key(alice, ""))
    assert_error(response, 422)
    assert _conversations_total(http, alice) == 0


def test_non_ascii_key_is_422(http: httpx.Client, alice: User) -> None:
    headers = [
        (b"authorization", f"Bearer {alice.token}".encode()),
        (b"idempotency-key", "clé-é".encode()),
    ]
    response = http.post("/chat/conversations", json={"title": "x"}, headers=headers)
    assert_error(response, 422)
    assert _conversations_total(http, alice) == 0


def test_longest_valid_key_is_accepted(http: httpx.Client, alice: User) -> None:
    key = "~!" * 127 + "k"  # 255 visible ASCII characters
    first = http.post("/chat/conversations", json={"title": "x"}, headers=_with_key(alice, key))
    second = http.post("/chat/conversations", json={"title": "x"}, headers=_with_key(alice, key))
    assert ok_data(first, 201) == ok_data(second, 201)
    assert second.headers.get("Idempotent-Replayed") == "true"


# --- messages ------------------------------------------------------------------------------------


def _post_message(
    http: httpx.Client, user: User, conversation_id: int, body: dict[str, Any], key: str
) -> httpx.Response:
    return http.post(
        f"/chat/conversations/{conversation_id}/messages", json=body, headers=_with_key(user, key)
    )


def test_add_message_replays_the_first_answer(http: httpx.Client, alice: User) -> None:
    conversation = create_conversation(http, alice)
    key = _key()
    body = {"content": "exactly once"}
    first = _post_message(http, alice, conversation["id"], body, key)
    second = _post_message(http, alice, conversation["id"], body, key)
    assert first.status_code == second.status_code == 201
    assert second.json() == first.json()
    assert second.headers.get("Idempotent-Replayed") == "true"
    assert first.headers.get("Idempotent-Replayed") is None
    listed = list_messages(http, alice, conversation["id"])
    assert listed["total"] == 1
    assert [m["id"] for m in listed["messages"]] == [first.json()["data"]["message_id"]]
    assert get_conversation(http, alice, conversation["id"])["total_messages"] == 1


async def test_ten_concurrent_message_posts_with_one_key_add_one_message(
    ahttp: httpx.AsyncClient, http: httpx.Client, alice: User
) -> None:
    conversation = create_conversation(http, alice)
    key = _key()
    url = f"/chat/conversations/{conversation['id']}/messages"
    responses = await asyncio.gather(
        *(
            ahttp.post(url, json={"content": "race"}, headers=_with_key(alice, key))
            for _ in range(10)
        )
    )
    assert [r.status_code for r in responses] == [201] * 10, [r.text for r in responses]
    assert len({r.json()["data"]["message_id"] for r in responses}) == 1
    assert list_messages(http, alice, conversation["id"])["total"] == 1
    assert get_conversation(http, alice, conversation["id"])["total_messages"] == 1


def test_message_key_with_a_different_body_is_422(http: httpx.Client, alice: User) -> None:
    conversation = create_conversation(http, alice)
    key = _key()
    ok_data(_post_message(http, alice, conversation["id"], {"content": "one"}, key), 201)
    assert_error(_post_message(http, alice, conversation["id"], {"content": "two"}, key), 422)
    # The same body to another conversation is another request, too.
    other = create_conversation(http, alice)
    assert_error(_post_message(http, alice, other["id"], {"content": "one"}, key), 422)
    assert [m["content"] for m in list_messages(http, alice, conversation["id"])["messages"]] == [
        "one"
    ]
    assert list_messages(http, alice, other["id"])["total"] == 0


def test_message_keys_are_per_user(http: httpx.Client, alice: User, bob: User) -> None:
    key = _key()
    alices = create_conversation(http, alice)
    bobs = create_conversation(http, bob)
    ok_data(_post_message(http, alice, alices["id"], {"content": "hi"}, key), 201)
    response = _post_message(http, bob, bobs["id"], {"content": "hi"}, key)
    ok_data(response, 201)
    assert response.headers.get("Idempotent-Replayed") is None
    assert list_messages(http, bob, bobs["id"])["total"] == 1


def test_message_key_of_another_users_conversation_replays_nothing(
    http: httpx.Client, alice: User, bob: User
) -> None:
    """Bob guessing Alice's key gets his own answer (404 for her conversation), not hers."""
    conversation = create_conversation(http, alice)
    key = _key()
    body = {"content": "alice's"}
    ok_data(_post_message(http, alice, conversation["id"], body, key), 201)
    assert_error(_post_message(http, bob, conversation["id"], body, key), 404)
    assert list_messages(http, alice, conversation["id"])["total"] == 1


def test_invalid_key_on_messages_is_422(http: httpx.Client, alice: User) -> None:
    conversation = create_conversation(http, alice)
    assert_error(_post_message(http, alice, conversation["id"], {"content": "x"}, "k" * 300), 422)
    assert list_messages(http, alice, conversation["id"])["total"] == 0
