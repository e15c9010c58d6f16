"""The job sweeper (inside every worker process): lost publishes are re-sent, overdue jobs fail."""

from __future__ import annotations

import secrets
import time
from typing import Any

import httpx
import psycopg
import redis

from shared.jobs import job_stream_key
from tests.chat.factories import add_message, create_conversation
from tests.chat.helpers import ok_data
from tests.harness import Stack, User

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


def test_a_reply_that_comes_after_its_job_failed_at_the_deadline_is_not_stored(
    http: httpx.Client, alice: User, db: psycopg.Connection, stack: Stack
) -> None:
    conversation = create_conversation(http, alice)
    marker = secrets.token_hex(5)
    job = ok_data(
        http.post(
            f"/chat/conversations/{conversation['id']}/ai-response",
            json={"message": f"slow {marker} [[delay:2]]"},
            headers={**alice.headers, "Prefer": "respond-async"},
        ),
        202,
    )
    assert stack.llm is not None
    stack.llm.control.wait_for_requests(1, contains=marker, timeout=DEADLINE)
    # The model is answering; the job's deadline passes meanwhile and the sweeper fails it.
    db.execute("UPDATE chat.ai_jobs SET deadline_at = now() - interval '1 second' WHERE id = %s",
               (job["id"],))  # fmt: skip
    failed = _wait_final(http, alice, job["id"])
    assert (failed["status"], failed["error_code"]) == ("failed", "deadline_exceeded"), failed

    # The worker then gets the answer: it finds the job final and stores nothing.
    stream = redis.Redis.from_url(stack.redis_url)
    key = job_stream_key(stack.redis_prefix, job["id"])
    deadline = time.monotonic() + DEADLINE
    try:
        # The worker's end of the job says it found the job final ("duplicate"), not that it
        # stored a reply ("completed").
        while b"duplicate" not in (outcomes := [f.get(b"outcome") for _, f in stream.xrange(key)]):
            assert b"completed" not in outcomes, "the late reply was stored"
            assert time.monotonic() < deadline, f"the worker never ended the job: {outcomes}"
            time.sleep(0.05)  # a polling interval; the job's event stream is what is waited on
    finally:
        stream.close()
    job_now = ok_data(http.get(f"/chat/jobs/{job['id']}", headers=alice.headers))
    assert (job_now["status"], job_now["error_code"]) == ("failed", "deadline_exceeded")
    assert job_now["reply_message_id"] is None
    agent_messages = db.execute(
        "SELECT count(*) FROM chat.messages WHERE conversation_id = %s AND sender = 'agent'",
        (conversation["id"],),
    ).fetchone()
    assert agent_messages == (0,)
    events = db.execute(
        "SELECT type FROM chat.outbox WHERE (data->>'job_id')::bigint = %s ORDER BY id",
        (job["id"],),
    ).fetchall()
    assert [row[0] for row in events] == ["ai.reply.failed"]
