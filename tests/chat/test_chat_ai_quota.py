"""Per-user AI quotas, enforced before any model call: concurrent jobs and tokens per day."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import httpx
import psycopg

from tests.chat.factories import create_conversation, list_messages
from tests.chat.helpers import assert_error
from tests.harness import Stack, User

AI_TIMEOUT = 60.0


def _use_up_the_day(db: psycopg.Connection, user: User) -> None:
    """A day's worth of usage for the user (the default limit is 1,000,000 tokens)."""
    db.execute(
        """
        INSERT INTO chat.ai_usage (job_id, user_id, model, input_tokens, output_tokens, cost,
                                   latency_seconds)
        VALUES (%s, %s, 'm', 600000, 400000, 0, 1)
        """,
        (-secrets.randbelow(2**40) - 1, user.id),
    )


def test_used_up_daily_tokens_are_429_until_midnight(
    http: httpx.Client, alice: User, db: psycopg.Connection
) -> None:
    conversation = create_conversation(http, alice)
    _use_up_the_day(db, alice)
    response = http.post(
        f"/chat/conversations/{conversation['id']}/ai-response",
        json={"message": "one more please"},
        headers=alice.headers,
        timeout=AI_TIMEOUT,
    )
    error = assert_error(response, 429, "rate_limited")
    assert error["error"]["details"]["quota"] == "daily_tokens"
    assert 1 <= int(response.headers["retry-after"]) <= 86_400
    # Refused before anything was written: no job, no message.
    assert list_messages(http, alice, conversation["id"])["total"] == 0
    row = db.execute("SELECT count(*) FROM chat.ai_jobs WHERE user_id = %s", (alice.id,)).fetchone()
    assert row == (0,)


async def test_more_concurrent_jobs_than_allowed_are_429(
    ahttp: httpx.AsyncClient, http: httpx.Client, alice: User, stack: Stack
) -> None:
    limit = int(stack.env.get("CHAT_AI_MAX_CONCURRENT_JOBS", "4"))
    conversations = [create_conversation(http, alice) for _ in range(limit + 1)]

    async def ask(conversation_id: int) -> httpx.Response:
        return await ahttp.post(
            f"/chat/conversations/{conversation_id}/ai-response",
            # Each reply takes 2 s (under the test LLM timeout of 3 s): all are in flight together.
            json={"message": f"slow one [[delay:2]] {secrets.token_hex(4)}"},
            headers=alice.headers,
            timeout=AI_TIMEOUT,
        )

    responses = await asyncio.gather(*(ask(c["id"]) for c in conversations))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * limit + [429], [r.text for r in responses]
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["details"]["quota"] == "concurrent_jobs"
    assert int(refused.headers["retry-after"]) >= 1


async def test_more_waiting_replies_than_pooled_connections_all_finish(
    ahttp: httpx.AsyncClient, http: httpx.Client, new_user: Any, stack: Stack
) -> None:
    """A request waiting for its reply holds no database connection: more of them than the chat
    service's pool (20 by default) must all be answered, not starve each other."""
    limit = int(stack.env.get("CHAT_AI_MAX_CONCURRENT_JOBS", "4"))
    users = [new_user() for _ in range(8)]
    targets = [(u, create_conversation(http, u)["id"]) for u in users for _ in range(limit)]

    async def ask(user: User, conversation_id: int) -> httpx.Response:
        return await ahttp.post(
            f"/chat/conversations/{conversation_id}/ai-response",
            json={"message": f"wait with me [[delay:1]] {secrets.token_hex(4)}"},
            headers=user.headers,
            timeout=AI_TIMEOUT,
        )

    responses = await asyncio.gather(*(ask(u, c) for u, c in targets))
    assert len(responses) == 32
    assert [r.status_code for r in responses] == [200] * 32, [r.text[:200] for r in responses]


def test_refusals_keep_their_order(
    http: httpx.Client, alice: User, bob: User, db: psycopg.Connection
) -> None:
    """One statement judges quota and agent (services/chat/job_intake.py); the answers keep the
    order of separate checks: someone else's conversation (404), then the quota (429), then the
    agent (422)."""
    conversation = create_conversation(http, alice)
    _use_up_the_day(db, alice)
    path = f"/chat/conversations/{conversation['id']}/ai-response"
    unknown_agent = {"message": "who answers?", "agent_id": 1_999_999_999}
    assert_error(http.post(path, json=unknown_agent, headers=bob.headers), 404, "not_found")
    error = assert_error(
        http.post(path, json=unknown_agent, headers=alice.headers), 429, "rate_limited"
    )
    assert error["error"]["details"] == {
        "quota": "daily_tokens",
        "limit": 1_000_000,
        "used": 1_000_000,
    }
    db.execute("DELETE FROM chat.ai_usage WHERE user_id = %s", (alice.id,))
    error = assert_error(
        http.post(path, json=unknown_agent, headers=alice.headers), 422, "validation_error"
    )
    assert error["message"] == "agent_id: no active agent 1999999999"
    assert list_messages(http, alice, conversation["id"])["total"] == 0
