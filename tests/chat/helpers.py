"""Assertion helpers shared by the chat tests: envelopes, timestamps, page walking, batches."""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Any

import httpx
import psycopg

from tests.harness import User


def _excerpt(response: httpx.Response, limit: int = 600) -> str:
    text = response.text
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} chars)"


def ok_data(response: httpx.Response, status: int = 200) -> Any:
    """The `data` of a success envelope with exactly `status`; fails with the body otherwise."""
    assert response.status_code == status, (
        f"{response.request.method} {response.request.url}: expected {status}, "
        f"got {response.status_code}: {_excerpt(response)}"
    )
    body = response.json()
    assert body["success"] is True, body
    assert isinstance(body["message"], str) and body["message"], body
    return body["data"]


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """An error envelope with exactly `status` (and `code` when given)."""
    assert response.status_code == status, (
        f"{response.request.method} {response.request.url}: expected {status}, "
        f"got {response.status_code}: {_excerpt(response)}"
    )
    body = response.json()
    assert body["success"] is False, body
    assert body["data"] is None, body
    assert isinstance(body["error"], dict), body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body


def ts(value: str) -> datetime:
    """An API timestamp ("2024-06-29T10:00:00.123456Z") as an aware datetime."""
    assert isinstance(value, str) and re.match(r"^\d{4}-\d\d-\d\dT", value), value
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert parsed.tzinfo is not None, value
    return parsed


def conversation_ids(http: httpx.Client, user: User, **params: Any) -> list[int]:
    """Ids of all the user's conversations in list order (one page of up to 100)."""
    data = ok_data(
        http.get("/chat/conversations", params={"limit": 100, **params}, headers=user.headers)
    )
    assert data["total"] <= 100, "helper only reads one page"
    return [c["id"] for c in data["conversations"]]


def walk_conversation_pages(http: httpx.Client, user: User, *, limit: int) -> list[list[int]]:
    """Follows `next_cursor` from the first page to the end; returns each page's ids."""
    pages: list[list[int]] = []
    cursor: str | None = None
    for _ in range(1000):
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        data = ok_data(http.get("/chat/conversations", params=params, headers=user.headers))
        pages.append([c["id"] for c in data["conversations"]])
        assert data["has_more"] == (data["next_cursor"] is not None), data
        if not data["has_more"]:
            return pages
        cursor = data["next_cursor"]
    raise AssertionError("pagination never ended")


def walk_message_pages(
    http: httpx.Client, user: User, conversation_id: int, *, limit: int, order: str = "desc"
) -> list[list[int]]:
    pages: list[list[int]] = []
    cursor: str | None = None
    for _ in range(1000):
        params: dict[str, Any] = {"limit": limit, "order": order}
        if cursor is not None:
            params["cursor"] = cursor
        data = ok_data(
            http.get(
                f"/chat/conversations/{conversation_id}/messages",
                params=params,
                headers=user.headers,
            )
        )
        pages.append([m["id"] for m in data["messages"]])
        assert data["has_more"] == (data["next_cursor"] is not None), data
        if not data["has_more"]:
            return pages
        cursor = data["next_cursor"]
    raise AssertionError("pagination never ended")


BATCHES = "/chat/admin/regenerations"
BATCH_DEADLINE = 60.0


def wait_batch(http: httpx.Client, admin: User, batch_id: int, *statuses: str) -> dict[str, Any]:
    """Polls the batch until its status is one of `statuses`, within the deadline."""
    deadline = time.monotonic() + BATCH_DEADLINE
    while True:
        batch: dict[str, Any] = ok_data(http.get(f"{BATCHES}/{batch_id}", headers=admin.headers))
        if batch["status"] in statuses:
            return batch
        assert time.monotonic() < deadline, f"batch still {batch['status']}: {batch['progress']}"
        time.sleep(0.05)  # a polling interval; the condition above is what the test waits on


def batch_jobs(db: psycopg.Connection, batch_id: int) -> list[tuple[Any, ...]]:
    return db.execute(
        """
        SELECT id, regenerates_message_id, status, created_at, finished_at,
               input_tokens + output_tokens
        FROM chat.ai_jobs WHERE batch_id = %s ORDER BY id
        """,
        (batch_id,),
    ).fetchall()
