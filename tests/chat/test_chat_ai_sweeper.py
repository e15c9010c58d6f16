"""The job sweeper (inside every worker process): lost publishes are re-sent, overdue jobs fail."""

from __future__ import annotations

import time
from typing import Any

import httpx
import psycopg

from tests.chat.factories import add_message, create_conversation
from tests.chat.helpers import ok_data
from tests.harness import User

DEADLINE = 60.0


def _wait_final(http: httpx.Client, user: User, job_id: int) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE
    while True:
        job: dict[str, Any] = ok_data(http.get(f"/chat/jobs/{job_id}", headers=user.headers))
        if job["status"] not in ("queued", "running"):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['status']}"


def _insert_job(
    db: psycopg.Connection, conversation_id: int, user_id: int, message_id: int, **columns: str
) -> int:
    """A job as the chat service stores it, but never published (as after a crash)."""
    columns = {"deadline_at": "now() + interval '10 minutes'", **columns}
    names = "".join(f", {name}" for name in columns)
    values = "".join(f", {sql}" for sql in columns.values())
    row = db.execute(
        f"""
        INSERT INTO chat.ai_jobs (conversation_id, user_id, agent_id, prompt_message_id,
                                  model{names})
        SELECT %s, %s, id, %s, model{values}
        FROM chat.agents WHERE is_default
        RETURNING id
        """,
        (conversation_id, user_id, message_id),
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_job_whose_publish_was_lost_is_sent_again(
    http: httpx.Client, alice: User, db: psycopg.Connection
) -> None:
    conversation = create_conversation(http, alice)
    message = add_message(http, alice, conversation["id"], content="was the task ever sent?")
    job_id = _insert_job(
        db,
        conversation["id"],
        alice.id,
        message["message_id"],
        created_at="now() - interval '1 hour'",
    )
    job = _wait_final(http, alice, job_id)
    assert job["status"] == "completed", job
    assert job["attempts"] == 1


def test_an_overdue_job_fails_as_deadline_exceeded(
    http: httpx.Client, alice: User, db: psycopg.Connection
) -> None:
    conversation = create_conversation(http, alice)
    message = add_message(http, alice, conversation["id"], content="too late")
    job_id = _insert_job(
        db,
        conversation["id"],
        alice.id,
        message["message_id"],
        status="'running'",
        attempts="1",
        deadline_at="now() - interval '1 second'",
    )
    job = _wait_final(http, alice, job_id)
    assert (job["status"], job["error_code"]) == ("failed", "deadline_exceeded"), job
