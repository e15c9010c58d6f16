"""Each seed example (tests/contract/seed/seed-examples.json) of an endpoint built so far, replayed
through the gateway: the request the seed shows (its body, the query string of chat-api.md's
fetch call), on data the test creates first, with real ids in place of the example's ids. The
answer must have the example's shape (seed_contract.py: every key, same JSON types, recursively;
extra keys allowed) and be about that data. The analytics answers are polled until the events of
that data are applied (the aggregator runs a moment behind the changes).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.contract.seed_contract import assert_seed_shape, example, seed_examples
from tests.harness import User

NewUser = Callable[..., User]

COVERED = {
    ("GET", "/chat/conversations"),
    ("POST", "/chat/conversations"),
    ("GET", "/chat/conversations/{id}"),
    ("PUT", "/chat/conversations/{id}"),
    ("DELETE", "/chat/conversations/{id}"),
    ("GET", "/chat/conversations/{id}/messages"),
    ("POST", "/chat/conversations/{id}/messages"),
    ("GET", "/chat/search"),
    ("POST", "/chat/conversations/{id}/ai-response"),
    ("GET", "/chat/analytics/dashboard"),
    ("GET", "/chat/analytics/global"),
}


def _body(response: httpx.Response, what: str, status: tuple[int, ...] = (200,)) -> Any:
    assert response.status_code in status, f"{what}: HTTP {response.status_code}: {response.text}"
    body = response.json()
    assert isinstance(body, dict) and body.get("success") is True, f"{what}: {body}"
    return body


def _default_agent_id(http: httpx.Client, user: User) -> int:
    agents = _body(http.get("/chat/agents", headers=user.headers), "GET /chat/agents")
    listed = agents["data"]["agents"]
    chosen = next((a for a in listed if a.get("is_default")), listed[0] if listed else None)
    assert chosen is not None, f"no agent to use: {agents}"
    return int(chosen["id"])


def _seed_request(method: str, path: str, **real_ids: Any) -> dict[str, Any]:
    """The example's request body, its ids replaced by real ones."""
    body = dict(example(method, path)["request"])
    for key, value in real_ids.items():
        assert key in body, f"the seed's {method} {path} body has no {key}"
        body[key] = value
    return body


def _create_conversation(http: httpx.Client, user: User) -> int:
    body = _seed_request("POST", "/chat/conversations", agent_id=_default_agent_id(http, user))
    created = _body(
        http.post("/chat/conversations", json=body, headers=user.headers),
        "POST /chat/conversations",
        (200, 201),
    )
    return int(created["data"]["conversation_id"])


def _add_message(http: httpx.Client, user: User, conversation_id: int, content: str) -> int:
    path = f"/chat/conversations/{conversation_id}/messages"
    body = {"content": content, "sender_type": "user"}
    added = _body(http.post(path, json=body, headers=user.headers), f"POST {path}", (200, 201))
    return int(added["data"]["message_id"])


def test_seed_has_these_examples() -> None:
    assert {(e["method"], e["path"]) for e in seed_examples()} == COVERED


# 1. GET /chat/conversations?limit=20&offset=0
def test_list_conversations(http: httpx.Client, new_user: NewUser) -> None:
    user = new_user()
    conversation_id = _create_conversation(http, user)
    _add_message(http, user, conversation_id, "Hello, I need help with my order")

    response = http.get(
        "/chat/conversations", params={"limit": 20, "offset": 0}, headers=user.headers
    )
    body = _body(response, "GET /chat/conversations")
    assert_seed_shape(body, example("GET", "/chat/conversations")["response"], "list")
    data = body["data"]
    assert [c["id"] for c in data["conversations"]] == [conversation_id], data
    assert data["conversations"][0]["user_id"] == user.id
    assert data["conversations"][0]["total_messages"] == 1
    assert (data["total"], data["limit"], data["offset"]) == (1, 20, 0), data


# 2. POST /chat/conversations
def test_create_conversation(http: httpx.Client, new_user: NewUser) -> None:
    user = new_user()
    agent_id = _default_agent_id(http, user)
    request = _seed_request("POST", "/chat/conversations", agent_id=agent_id)

    response = http.post("/chat/conversations", json=request, headers=user.headers)
    body = _body(response, "POST /chat/conversations", (200, 201))
    assert_seed_shape(body, example("POST", "/chat/conversations")["response"], "create")
    conversation_id = body["data"]["conversation_id"]

    stored = _body(
        http.get(f"/chat/conversations/{conversation_id}", headers=user.headers), "GET it back"
    )["data"]
    assert (stored["title"], stored["agent_id"], stored["user_id"]) == (
        request["title"],
        agent_id,
        user.id,
    ), stored


# 3. GET /chat/conversations/{id}
def test_get_conversation(http: httpx.Client, new_user: NewUser) -> None:
    user = new_user()
    conversation_id = _create_conversation(http, user)
    _add_message(http, user, conversation_id, "Hello, I need help with my order")

    response = http.get(f"/chat/conversations/{conversation_id}", headers=user.headers)
    body = _body(response, "GET /chat/conversations/{id}")
    assert_seed_shape(body, example("GET", "/chat/conversations/{id}")["response"], "get")
    data = body["data"]
    assert (data["id"], data["user_id"], data["total_messages"]) == (conversation_id, user.id, 1)
    assert data["title"] == example("POST", "/chat/conversations")["request"]["title"]


# 4. GET /chat/conversations/{id}/messages?limit=50&offset=0
def test_list_messages(http: httpx.Client, new_user: NewUser) -> None:
    user = new_user()
    conversation_id = _create_conversation(http, user)
    seed = example("GET", "/chat/conversations/{id}/messages")["response"]
    content = seed["data"]["messages"][0]["content"]
    message_id = _add_message(http, user, conversation_id, content)

    path = f"/chat/conversations/{conversation_id}/messages"
    response = http.get(path, params={"limit": 50, "offset": 0}, headers=user.headers)
    body = _body(response, f"GET {path}")
    assert_seed_shape(body, seed, "messages")
    data = body["data"]
    assert [
        (m["id"], m["conversation_id"], m["content"], m["sender"]) for m in data["messages"]
    ] == [(message_id, conversation_id, content, "user")], data
    assert (data["total"], data["limit"], data["offset"]) == (1, 50, 0), data


# 5. POST /chat/conversations/{id}/messages
def test_add_message(http: httpx.Client, new_user: NewUser) -> None:
    user = new_user()
    conversation_id = _create_conversation(http, user)
    request = _seed_request("POST", "/chat/conversations/{id}/messages")

    path = f"/chat/conversations/{conversation_id}/messages"
    response = http.post(path, json=request, headers=user.headers)
    body = _body(response, f"POST {path}", (200, 201))
    assert_seed_shape(
        body, example("POST", "/chat/conversations/{id}/messages")["response"], "add message"
    )
    data = body["data"]
    assert (data["conversation_id"], data["content"], data["sender"]) == (
        conversation_id,
        request["content"],
        "user",
    ), data


# 7. PUT /chat/conversations/{id}
def test_update_conversation(http: httpx.Client, new_user: NewUser) -> None:
    user = new_user()
    conversation_id = _create_conversation(http, user)
    request = _seed_request("PUT", "/chat/conversations/{id}")

    path = f"/chat/conversations/{conversation_id}"
    body = _body(http.put(path, json=request, headers=user.headers), f"PUT {path}")
    assert_seed_shape(body, example("PUT", "/chat/conversations/{id}")["response"], "update")
    assert body["data"]["conversation_id"] == conversation_id

    stored = _body(http.get(path, headers=user.headers), "GET it back")["data"]
    assert (stored["title"], stored["is_pinned"]) == (request["title"], request["is_pinned"])


# 8. DELETE /chat/conversations/{id}
def test_delete_conversation(http: httpx.Client, new_user: NewUser) -> None:
    user = new_user()
    conversation_id = _create_conversation(http, user)

    path = f"/chat/conversations/{conversation_id}"
    body = _body(http.delete(path, headers=user.headers), f"DELETE {path}")
    assert_seed_shape(body, example("DELETE", "/chat/conversations/{id}")["response"], "delete")
    assert body["data"]["conversation_id"] == conversation_id

    gone = http.get(path, headers=user.headers)
    assert gone.status_code == 404, f"GET after DELETE: HTTP {gone.status_code}: {gone.text}"


# 11. GET /chat/search?query=order&limit=20
def test_search_messages(http: httpx.Client, new_user: NewUser) -> None:
    user = new_user()
    conversation_id = _create_conversation(http, user)
    seed = example("GET", "/chat/search")["response"]
    content = seed["data"]["results"][0]["content"]
    message_id = _add_message(http, user, conversation_id, content)
    _add_message(http, user, conversation_id, "Nothing to see here")

    query = seed["data"]["query"]
    response = http.get("/chat/search", params={"query": query, "limit": 20}, headers=user.headers)
    body = _body(response, "GET /chat/search")
    assert_seed_shape(body, seed, "search")
    data = body["data"]
    assert data["query"] == query
    assert [(r["message_id"], r["conversation_id"], r["content"]) for r in data["results"]] == [
        (message_id, conversation_id, content)
    ], data
    assert data["total"] == 1, data


# 6. POST /chat/conversations/{id}/ai-response
def test_generate_ai_response(http: httpx.Client, new_user: NewUser) -> None:
    user = new_user()
    conversation_id = _create_conversation(http, user)
    request = _seed_request(
        "POST", "/chat/conversations/{id}/ai-response", agent_id=_default_agent_id(http, user)
    )

    path = f"/chat/conversations/{conversation_id}/ai-response"
    body = _body(http.post(path, json=request, headers=user.headers), f"POST {path}")
    assert_seed_shape(
        body, example("POST", "/chat/conversations/{id}/ai-response")["response"], "AI response"
    )
    # The stand-in LLM echoes; the history holds the user's message and the reply, in order.
    assert body["data"]["ai_response"] == f"Echo: {request['message']}"
    listed = _body(
        http.get(f"/chat/conversations/{conversation_id}/messages?order=asc", headers=user.headers),
        "GET messages",
    )["data"]["messages"]
    assert [(m["sender"], m["content"]) for m in listed] == [
        ("user", request["message"]),
        ("agent", body["data"]["ai_response"]),
    ]
    assert listed[1]["id"] == body["data"]["message_id"]


def _with_ai_reply(http: httpx.Client, user: User) -> tuple[int, int]:
    """A conversation with the default agent and one AI reply; (conversation id, agent id)."""
    agent_id = _default_agent_id(http, user)
    conversation_id = _create_conversation(http, user)
    path = f"/chat/conversations/{conversation_id}/ai-response"
    body = {"message": "My order number is #12345", "agent_id": agent_id, "include_context": True}
    _body(http.post(path, json=body, headers=user.headers, timeout=60), f"POST {path}")
    return conversation_id, agent_id


def _poll(fetch: Callable[[], Any], ready: Callable[[Any], bool], what: str) -> Any:
    deadline = time.monotonic() + 60
    while not ready(value := fetch()):
        assert time.monotonic() < deadline, f"{what}: {value}"
        time.sleep(0.1)  # a polling interval; the condition above is what the test waits on
    return value


# 9. GET /chat/analytics/dashboard
def test_get_analytics(http: httpx.Client, new_user: NewUser) -> None:
    user = new_user()
    _, agent_id = _with_ai_reply(http, user)

    body = _poll(
        lambda: _body(http.get("/chat/analytics/dashboard", headers=user.headers), "dashboard"),
        lambda b: b["data"]["total_messages"] == 2,
        "the dashboard never counted the two messages",
    )
    assert_seed_shape(body, example("GET", "/chat/analytics/dashboard")["response"], "dashboard")
    data = body["data"]
    assert (data["total_conversations"], data["total_messages"]) == (1, 2), data
    assert data["most_active_agent"]["agent_id"] == agent_id
    assert data["most_active_agent"]["message_count"] == 1
    assert data["average_response_time"] >= 0
    assert data["daily_stats"][-1]["conversations"] == 1
    assert data["daily_stats"][-1]["messages"] == 2


# 10. GET /chat/analytics/global
def test_get_global_analytics(http: httpx.Client, new_user: NewUser, admin: User) -> None:
    user = new_user()
    _, agent_id = _with_ai_reply(http, user)

    def fetch() -> Any:
        return _body(http.get("/chat/analytics/global", headers=admin.headers), "global")

    body = _poll(
        fetch,
        lambda b: any(
            a["agent_id"] == agent_id and a["success_rate"] is not None
            for a in b["data"]["top_performing_agents"]
        ),
        "the global view never showed the agent's reply",
    )
    assert_seed_shape(body, example("GET", "/chat/analytics/global")["response"], "global")
    data = body["data"]
    assert data["total_conversations_all_users"] >= 1
    assert data["total_messages_all_users"] >= 2
    assert data["average_conversations_per_user"] >= 1
    forbidden = http.get("/chat/analytics/global", headers=user.headers)
    assert forbidden.status_code == 403, forbidden.text
