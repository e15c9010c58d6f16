"""Small factories that build chat data through the real API (gateway → chat service).

Each is a plain function with keyword defaults: pass only what the test is about.
"""

from __future__ import annotations

import secrets
from typing import Any

import httpx

from tests.chat.helpers import ok_data
from tests.harness import User


def unique_word(prefix: str = "zq") -> str:
    """A letters-only token no other test uses (stems to itself in the english dictionary)."""
    letters = "".join(secrets.choice("bcdfghjklmnpqrstvwxz") for _ in range(10))
    return f"{prefix}{letters}"


def create_conversation(
    http: httpx.Client,
    user: User,
    *,
    title: str | None = None,
    agent_id: int | None = None,
    conversation_type: str | None = None,
    pinned: bool = False,
    archived: bool = False,
) -> dict[str, Any]:
    """Creates a conversation (and pins/archives it when asked); returns it as GET shows it."""
    body: dict[str, Any] = {"title": title or f"Conversation {secrets.token_hex(4)}"}
    if agent_id is not None:
        body["agent_id"] = agent_id
    if conversation_type is not None:
        body["conversation_type"] = conversation_type
    created = ok_data(http.post("/chat/conversations", json=body, headers=user.headers), 201)
    conversation_id = created["conversation_id"]
    changes: dict[str, Any] = {}
    if pinned:
        changes["is_pinned"] = True
    if archived:
        changes["is_archived"] = True
    if changes:
        update_conversation(http, user, conversation_id, **changes)
    return get_conversation(http, user, conversation_id)


def get_conversation(http: httpx.Client, user: User, conversation_id: int) -> dict[str, Any]:
    return ok_data(http.get(f"/chat/conversations/{conversation_id}", headers=user.headers))


def update_conversation(
    http: httpx.Client, user: User, conversation_id: int, **changes: Any
) -> dict[str, Any]:
    return ok_data(
        http.put(f"/chat/conversations/{conversation_id}", json=changes, headers=user.headers)
    )


def add_message(
    http: httpx.Client,
    user: User,
    conversation_id: int,
    *,
    content: str | None = None,
    sender_type: str | None = None,
) -> dict[str, Any]:
    """Posts a message; returns the created message as the API answers it."""
    body: dict[str, Any] = {"content": content or f"message {secrets.token_hex(4)}"}
    if sender_type is not None:
        body["sender_type"] = sender_type
    return ok_data(
        http.post(
            f"/chat/conversations/{conversation_id}/messages", json=body, headers=user.headers
        ),
        201,
    )


def list_messages(
    http: httpx.Client, user: User, conversation_id: int, **params: Any
) -> dict[str, Any]:
    return ok_data(
        http.get(
            f"/chat/conversations/{conversation_id}/messages",
            params={"limit": 100, **params},
            headers=user.headers,
        )
    )


def create_agent(
    http: httpx.Client,
    admin: User,
    *,
    name: str | None = None,
    model: str = "test-model",
    **fields: Any,
) -> dict[str, Any]:
    """Creates an agent as an administrator; returns it."""
    body = {"name": name or f"Agent {secrets.token_hex(4)}", "model": model, **fields}
    return ok_data(http.post("/chat/agents", json=body, headers=admin.headers), 201)


def retire_agent(http: httpx.Client, admin: User, agent_id: int) -> None:
    ok_data(http.delete(f"/chat/agents/{agent_id}", headers=admin.headers))


def search(http: httpx.Client, user: User, query: str, **params: Any) -> dict[str, Any]:
    return ok_data(
        http.get("/chat/search", params={"query": query, **params}, headers=user.headers)
    )


def make_replies(
    http: httpx.Client, user: User, agent_id: int, count: int, *, suffix: str = ""
) -> list[dict[str, Any]]:
    """`count` agent replies (one conversation each) generated through the real pipeline."""
    replies = []
    for i in range(count):
        conversation = create_conversation(http, user, agent_id=agent_id)
        reply = ok_data(
            http.post(
                f"/chat/conversations/{conversation['id']}/ai-response",
                json={"message": f"question {i} {secrets.token_hex(3)} {suffix}".strip()},
                headers=user.headers,
            )
        )
        replies.append({**reply, "conversation_id": conversation["id"]})
    return replies
