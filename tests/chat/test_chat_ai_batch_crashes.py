"""A batch regeneration survives workers killed with SIGKILL mid-batch: every selected reply is
regenerated exactly once and the batch completes.

Extra worker processes join the stack's queue with a short broker visibility timeout, so the
tasks a killed worker held come back within seconds; the stack's own worker keeps running.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import httpx
import psycopg

from deploy.local.processes import ManagedProcess
from tests.chat.factories import create_agent, make_replies
from tests.chat.helpers import BATCH_DEADLINE, BATCHES, batch_jobs, ok_data, wait_batch
from tests.harness import Stack, User

REPLIES = 24
KILLS = 2
WORKER_ENV = {
    "AI_WORKER_CONCURRENCY": "4",
    "AI_WORKER_VISIBILITY_TIMEOUT_SECONDS": "8",
    "AI_WORKER_TASK_TIME_LIMIT_SECONDS": "6",
    "AI_WORKER_MAX_DELIVERIES": "10",
}


def test_killing_workers_mid_batch_regenerates_each_reply_exactly_once(
    stack: Stack, http: httpx.Client, admin: User, alice: User, db: psycopg.Connection
) -> None:
    agent: dict[str, Any] = create_agent(http, admin)
    replies = make_replies(http, alice, agent["id"], REPLIES, suffix="[[delay:0.3]]")

    def start_worker() -> ManagedProcess:
        _, process = stack.start_service("ai_worker", **WORKER_ENV)
        return process

    workers = [start_worker(), start_worker()]
    try:
        created = ok_data(
            http.post(
                BATCHES, json={"agent_id": agent["id"], "concurrency": 6}, headers=admin.headers
            ),
            201,
        )
        deadline = time.monotonic() + BATCH_DEADLINE
        kills, next_kill_at = 0, 3
        while kills < KILLS:
            finished = sum(
                job[2] not in ("queued", "running") for job in batch_jobs(db, created["id"])
            )
            assert time.monotonic() < deadline, f"only {finished} jobs finished"
            if finished >= next_kill_at:
                os.kill(workers.pop(0).pid, signal.SIGKILL)
                workers.append(start_worker())
                kills += 1
                next_kill_at = finished + 6
            time.sleep(0.05)  # a polling interval; the loop waits on the job counts
        batch = wait_batch(http, admin, created["id"], "completed", "budget_exhausted")
    finally:
        for process in workers:
            process.stop()

    assert batch["status"] == "completed"
    progress = batch["progress"]
    assert (progress["done"], progress["failed"], progress["remaining"]) == (REPLIES, 0, 0)
    jobs = batch_jobs(db, created["id"])
    assert sorted(job[1] for job in jobs) == sorted(r["message_id"] for r in replies)
    new_replies = db.execute(
        """
        SELECT count(*) FROM chat.messages
        WHERE ai_job_id IN (SELECT id FROM chat.ai_jobs WHERE batch_id = %s)
        """,
        (created["id"],),
    ).fetchone()
    assert new_replies == (REPLIES,)
    superseded = db.execute(
        "SELECT count(*) FROM chat.messages WHERE id = ANY(%s) AND status = 'superseded'",
        ([r["message_id"] for r in replies],),
    ).fetchone()
    assert superseded == (REPLIES,)
    redelivered = db.execute(
        "SELECT count(*) FROM chat.ai_jobs WHERE batch_id = %s AND attempts > 1", (created["id"],)
    ).fetchone()
    assert redelivered is not None and redelivered[0] >= 1, "no kill landed mid-job"
