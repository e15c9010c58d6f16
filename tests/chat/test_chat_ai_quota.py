"""Per-user AI quotas, enforced before any model call: concurrent jobs and tokens per day."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest

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


def test_regeneration_is_held_to_the_same_quota_after_its_own_checks(
    http: httpx.Client, alice: User, bob: User, db: psycopg.Connection
) -> None:
    """`regenerate` and `ai-response` share one quota rule (chat.ai_quota, migration 0011): a
    used-up day refuses a regeneration too, after its own checks (someone else's conversation
    404, no such reply 404) and before anything is written."""
    conversation = create_conversation(http, alice)
    reply = http.post(
        f"/chat/conversations/{conversation['id']}/ai-response",
        json={"message": f"answer me once {secrets.token_hex(4)}"},
        headers=alice.headers,
        timeout=AI_TIMEOUT,
    )
    assert reply.status_code == 200, reply.text
    base = f"/chat/conversations/{conversation['id']}/messages"
    again = f"{base}/{reply.json()['data']['message_id']}/regenerate"
    _use_up_the_day(db, alice)
    assert_error(http.post(again, headers=bob.headers), 404, "not_found")
    assert_error(http.post(f"{base}/2000000000/regenerate", headers=alice.headers), 404)
    error = assert_error(http.post(again, headers=alice.headers), 429, "rate_limited")
    assert error["error"]["details"]["quota"] == "daily_tokens"
    row = db.execute(
        "SELECT count(*) FROM chat.ai_jobs WHERE conversation_id = %s", (conversation["id"],)
    ).fetchone()
    assert row == (1,)
    assert list_messages(http, alice, conversation["id"])["total"] == 2
    db.execute("DELETE FROM chat.ai_usage WHERE user_id = %s", (alice.id,))
    redone = http.post(again, headers=alice.headers, timeout=AI_TIMEOUT)
    assert redone.status_code == 200, redone.text


def _take(conn: psycopg.Connection, user: User, conversation_id: int, max_jobs: int) -> Any:
    """One call of the intake function as the chat service makes it (chat migration 0011)."""
    cursor = conn.execute(
        "SELECT id, refusal, active_jobs, prompt_message_id "
        "FROM chat.take_ai_request(%s, %s, %s, 1000000, 0, 60, NULL, %s, '30 minutes', true, "
        "NULL)",
        (conversation_id, user.id, max_jobs, "the same question, asked twice at once"),
    )
    return cursor.fetchone()


def _waiting_for_a_lock(db: psycopg.Connection, pid: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        row = db.execute(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).fetchone()
        if row is not None and row[0] == "Lock":
            return True
        time.sleep(0.01)  # polling the server's view with a deadline, not a synchronisation
    return False


@pytest.mark.parametrize(("max_jobs", "same_conversation"), [(1, True), (5, True), (1, False)])
def test_a_request_racing_another_sees_its_message_and_job(
    http: httpx.Client,
    alice: User,
    stack: Stack,
    db: psycopg.Connection,
    max_jobs: int,
    same_conversation: bool,
) -> None:
    """The intake's second statement reads with a snapshot taken after the locks are held: a
    request that waited for another one's locks (the conversation's row, or the user's quota
    lock from another conversation) sees what that one committed. With one job allowed it is
    refused (the first job counts); with more, in the same conversation, it answers the same
    user message instead of storing it a second time. Taking the locks in the statement that
    reads would let both through, and store the message twice."""
    conversation = create_conversation(http, alice)
    other = conversation if same_conversation else create_conversation(http, alice)
    dsn = re.sub(r"^postgresql\+\w+://", "postgresql://", stack.database_url)
    with psycopg.connect(dsn) as first, psycopg.connect(dsn, autocommit=True) as second:
        taken = _take(first, alice, conversation["id"], max_jobs)  # locks held until commit
        assert taken is not None and taken[1] is None and taken[0] is not None
        with ThreadPoolExecutor(1) as pool:
            racing = pool.submit(_take, second, alice, other["id"], max_jobs)
            assert _waiting_for_a_lock(db, second.info.backend_pid, time.monotonic() + 10)
            first.commit()
            raced = racing.result(timeout=10)
    assert raced is not None
    if max_jobs == 1:
        assert (raced[0], raced[1], raced[2]) == (None, "concurrent_jobs", 1)
    else:
        assert raced[1] is None and raced[0] != taken[0]
        assert raced[3] == taken[3]  # the same user message, stored once
    assert list_messages(http, alice, conversation["id"])["total"] == 1
