"""A finished batch job's top-up never waits for the batch's lock: it leaves a note for the
holder and returns; the next top-up that gets the lock clears the note (services/ai_worker/
batches.py). On the real Postgres and Redis of the test stack."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
import redis
from sqlalchemy import create_engine

from services.ai_worker.batches import BatchDispatcher
from shared.db.pool import plain_dsn, sqlalchemy_url
from tests.harness import Stack, User

FAR = 30.0


@pytest.fixture
def client(stack: Stack) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(stack.redis_url, socket_timeout=5)
    yield client
    client.close()


def _running_batch(db: psycopg.Connection, admin: User) -> int:
    """A running batch with nothing left to do: its next top-up finishes it."""
    row = db.execute(
        """
        INSERT INTO chat.ai_batches (key, created_by, selection, concurrency, job_deadline_seconds)
        VALUES (%s, %s, '{}'::jsonb, 4, 600) RETURNING id
        """,
        (f"top-up-{secrets.token_hex(6)}", admin.id),
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_finished_jobs_top_up_leaves_a_note_instead_of_waiting_for_the_lock(
    stack: Stack, db: psycopg.Connection, admin: User, client: redis.Redis
) -> None:
    batch_id = _running_batch(db, admin)
    prefix = f"{stack.redis_prefix}top-up-{secrets.token_hex(4)}:"
    note = f"{prefix}ai:batch-top-up-wanted:{batch_id}"
    engine = create_engine(sqlalchemy_url(stack.database_url), pool_size=2)
    sent: list[int] = []
    dispatcher = BatchDispatcher(engine, sent.append, client, prefix)
    holder = psycopg.connect(plain_dsn(stack.database_url))
    try:
        # Another top-up holds the batch.
        holder.execute("SELECT 1 FROM chat.ai_batches WHERE id = %s FOR UPDATE", (batch_id,))
        done = threading.Event()
        thread = threading.Thread(
            target=lambda: (dispatcher.top_up_after_job(batch_id), done.set())
        )
        thread.start()
        assert done.wait(FAR), "the top-up waited for the batch's lock"
        thread.join(FAR)
        assert client.exists(note), "no note was left for the holder"
        status = db.execute("SELECT status FROM chat.ai_batches WHERE id = %s", (batch_id,))
        assert status.fetchone() == ("running",)
        holder.rollback()

        # With the lock free, a top-up runs: it clears the note and, nothing being left,
        # finishes the batch (the stack's own sweeper may be the one that finishes it).
        dispatcher.top_up_after_job(batch_id)
        assert not client.exists(note)
        deadline = time.monotonic() + FAR
        while db.execute(
            "SELECT status FROM chat.ai_batches WHERE id = %s", (batch_id,)
        ).fetchone() != ("completed",):
            assert time.monotonic() < deadline, "the batch was never finished"
            time.sleep(0.05)  # polling interval, not synchronisation: the deadline decides
        assert sent == []
    finally:
        holder.close()
        engine.dispose()
