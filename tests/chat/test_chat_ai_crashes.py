"""Workers killed with SIGKILL mid-job lose nothing: every job ends completed exactly once.

Runs its own pair of worker processes on a queue of its own (its own Redis key prefix), with a
short broker visibility timeout so that the tasks of a killed worker come back quickly.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from deploy.local.processes import ManagedProcess
from shared.jobs import GENERATE_REPLY_TASK, celery_app
from tests.chat.factories import add_message, create_conversation
from tests.harness import Stack, User

JOBS = 100
KILLS = 3
DEADLINE = 180.0
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def crash_env(stack: Stack) -> dict[str, str]:
    return {
        **stack.env,
        "REDIS_PREFIX": f"{stack.redis_prefix}crash-{secrets.token_hex(3)}:",
        "AI_WORKER_METRICS_PORT": "0",
        "AI_WORKER_CONCURRENCY": "8",
        # Unacknowledged tasks of a dead worker are handed out again after this.
        "AI_WORKER_VISIBILITY_TIMEOUT_SECONDS": "8",
        "AI_WORKER_TASK_TIME_LIMIT_SECONDS": "6",
        # Several kills may hit the same job; this test is about redelivery, not giving up.
        "AI_WORKER_MAX_DELIVERIES": "10",
    }


@pytest.fixture
def workers(crash_env: dict[str, str], stack: Stack) -> Iterator[list[ManagedProcess]]:
    started: list[ManagedProcess] = []

    def start() -> ManagedProcess:
        name = f"crash-worker-{len(started) + 1}"
        process = ManagedProcess(
            name,
            [sys.executable, "-m", "services.ai_worker"],
            log_path=stack.log_dir / f"{name}.log",
            env=crash_env,
            cwd=ROOT,
        )
        started.append(process)
        return process

    pool = [start(), start()]
    pool.append(start)  # type: ignore[arg-type]  # the last item starts a replacement
    yield pool
    for process in started:
        process.stop()


def _counts(db: psycopg.Connection, job_ids: list[int]) -> tuple[int, int, int]:
    """(final jobs, completed jobs, agent messages of these jobs)."""
    row = db.execute(
        """
        SELECT count(*) FILTER (WHERE status NOT IN ('queued', 'running')),
               count(*) FILTER (WHERE status = 'completed'),
               (SELECT count(*) FROM chat.messages WHERE ai_job_id = ANY(%s))
        FROM chat.ai_jobs WHERE id = ANY(%s)
        """,
        (job_ids, job_ids),
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def test_killing_workers_mid_job_loses_and_doubles_nothing(
    http: httpx.Client,
    alice: User,
    db: psycopg.Connection,
    crash_env: dict[str, str],
    workers: list[ManagedProcess],
) -> None:
    start_replacement = workers.pop()
    running: list[ManagedProcess] = list(workers)
    conversation = create_conversation(http, alice)
    job_ids = []
    for i in range(JOBS):
        # Each reply takes ~0.3 s of "model time", so kills land mid-job.
        message = add_message(
            http, alice, conversation["id"], content=f"job {i} [[delay:0.3]] {secrets.token_hex(3)}"
        )
        row = db.execute(
            """
            INSERT INTO chat.ai_jobs (conversation_id, user_id, agent_id, prompt_message_id,
                                      model, include_context, deadline_at)
            SELECT %s, %s, id, %s, model, false, now() + interval '10 minutes'
            FROM chat.agents WHERE is_default RETURNING id
            """,
            (conversation["id"], alice.id, message["message_id"]),
        ).fetchone()
        assert row is not None
        job_ids.append(int(row[0]))
    client = celery_app(
        "crash-test",
        broker_url=crash_env["REDIS_URL"],
        redis_prefix=crash_env["REDIS_PREFIX"],
        visibility_timeout_seconds=8,
    )
    for job_id in job_ids:
        client.send_task(GENERATE_REPLY_TASK, args=[job_id])

    deadline = time.monotonic() + DEADLINE
    kills = 0
    next_kill_at = 5  # kill when this many more jobs have finished
    while True:
        final, completed, messages = _counts(db, job_ids)
        if final == JOBS:
            break
        assert time.monotonic() < deadline, f"{final}/{JOBS} final ({completed} completed)"
        if kills < KILLS and final >= next_kill_at:
            victim = running.pop(0)
            os.kill(victim.pid, signal.SIGKILL)
            running.append(start_replacement())  # type: ignore[operator]
            kills += 1
            next_kill_at = final + 15
    final, completed, messages = _counts(db, job_ids)
    assert kills == KILLS
    assert completed == JOBS, f"only {completed} of {JOBS} completed"
    assert messages == JOBS, f"{messages} agent messages for {JOBS} jobs"
