"""The AI worker's database connections cut under it (Postgres restarted or failed over): the
job's statements go on with new connections, so the reply comes from the job's first delivery,
not from the sweeper's re-send minutes later."""

from __future__ import annotations

import secrets
import threading
from typing import Any

import httpx
import psycopg

from tests.chat.factories import create_conversation
from tests.chat.helpers import ok_data
from tests.harness import Stack, User

AI_TIMEOUT = 60.0


def _cut_worker_connections(db: psycopg.Connection) -> int:
    row = db.execute(
        """
        SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
        WHERE application_name = 'ai-worker' AND datname = current_database()
        """
    ).fetchone()
    assert row is not None
    return int(row[0])


def _ask(http: httpx.Client, user: User, conversation_id: int, message: str) -> httpx.Response:
    return http.post(
        f"/chat/conversations/{conversation_id}/ai-response",
        json={"message": message},
        headers=user.headers,
        timeout=AI_TIMEOUT,
    )


def _job(db: psycopg.Connection, job_id: int) -> tuple[Any, ...]:
    row = db.execute(
        "SELECT status, attempts, requeued_at FROM chat.ai_jobs WHERE id = %s", (job_id,)
    ).fetchone()
    assert row is not None
    return tuple(row)


def test_a_job_started_on_a_cut_connection_is_answered_by_its_first_delivery(
    http: httpx.Client, alice: User, db: psycopg.Connection
) -> None:
    conversation = create_conversation(http, alice)
    ok_data(_ask(http, alice, conversation["id"], "warm the worker's pool"))
    assert _cut_worker_connections(db) >= 1

    text = f"after the cut {secrets.token_hex(4)}"
    reply = ok_data(_ask(http, alice, conversation["id"], text))
    assert reply["ai_response"] == f"Echo: {text}"
    assert _job(db, reply["job_id"]) == ("completed", 1, None)  # never re-sent


def test_a_reply_whose_connection_was_cut_during_the_model_call_is_stored(
    stack: Stack, http: httpx.Client, alice: User, db: psycopg.Connection
) -> None:
    """The outcome only: in the test stack the sweeper (every 0.5 s, same pool) usually meets
    a cut connection first, and its failure invalidates the whole pool, so the store gets a
    new connection with or without the job's own retry. The test above is the one that needs
    that retry."""
    assert stack.llm is not None
    conversation = create_conversation(http, alice)
    ok_data(_ask(http, alice, conversation["id"], "warm the worker's pool"))
    marker = secrets.token_hex(4)
    answer: dict[str, httpx.Response] = {}
    asking = threading.Thread(
        target=lambda: answer.setdefault(
            "response", _ask(http, alice, conversation["id"], f"slow one [[delay:1]] {marker}")
        )
    )
    asking.start()
    try:
        # The model is answering: the job has started, its store is still to come.
        stack.llm.control.wait_for_requests(contains=marker, timeout=AI_TIMEOUT)
        assert _cut_worker_connections(db) >= 1
    finally:
        asking.join(AI_TIMEOUT)
    reply = ok_data(answer["response"])
    assert reply["ai_response"] == f"Echo: slow one {marker}"
    assert _job(db, reply["job_id"]) == ("completed", 1, None)
