"""Batch regeneration's dispatcher: keeps a batch's jobs in flight up to its concurrency.

A batch is a snapshot of agent replies (`chat.ai_batch_items`, written by the chat service).
`top_up` turns the next items into ordinary AI jobs on the same queue as interactive replies:
up to `concurrency` of them calling the model (services/ai_worker/gate.py holds that limit) and
as many more ready to take a slot the moment one frees (`gate.lookahead`), and never one that
would take the batch past its token or cost budget (what finished jobs used plus the estimate
of those in flight). It runs after each batch job finishes (in the worker thread that
finished it), when the batch is created or resumed (the `dispatch_batch` task), and at every
sweep, which is what resumes a batch after any crash: all its state is in Postgres.

Concurrent top-ups of one batch serialise on its row lock; an item gets at most one job (its
`job_id` is set in the same transaction, and a unique index on the job backs that). A finished
job does not wait for that lock (at concurrency 16 most worker threads were queued on it): it
leaves a note in Redis and tries the lock without waiting; whoever holds it clears the note
before counting and looks for a new one after its commit, so a job that finished meanwhile is
topped up by the holder's next round (`top_up_after_job`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import redis
import structlog
from prometheus_client import Counter
from sqlalchemy import Connection, Engine, RowMapping

from services.ai_worker import repository as repo
from services.ai_worker.gate import lookahead

log = structlog.get_logger(component="batches")

# How long a finished job's request for a top-up stays: a holder that died before reading it
# leaves it to the next job's end or the sweep anyway.
NOTE_SECONDS = 60

BATCH_JOBS = Counter("ai_batch_jobs_dispatched_total", "Jobs that batch regenerations started.")
BATCHES_FINISHED = Counter(
    "ai_batches_finished_total", "Batch regenerations that ended, by status.", ["status"]
)


def within_budget(
    batch: RowMapping, committed_tokens: int, committed_cost: Decimal, item: RowMapping
) -> bool:
    """Whether one more item (at its estimate) keeps the batch within its budget."""
    if batch["max_tokens"] is not None and committed_tokens + int(item["estimated_tokens"]) > int(
        batch["max_tokens"]
    ):
        return False
    return batch["max_cost"] is None or committed_cost + Decimal(item["estimated_cost"]) <= Decimal(
        batch["max_cost"]
    )


class BatchDispatcher:
    def __init__(
        self, engine: Engine, send: Callable[[int], Any], redis_client: redis.Redis, prefix: str
    ) -> None:
        self._engine = engine
        self._send = send
        self._redis = redis_client
        self._prefix = prefix

    def top_up(self, batch_id: int) -> list[int]:
        """Starts as many of the batch's jobs as its concurrency and budget allow (or marks it
        finished); returns the jobs it sent. Waits for a concurrent top-up of the batch."""
        return self._top_up(batch_id, note=None) or []

    def top_up_after_job(self, batch_id: int) -> None:
        """The top-up after one of the batch's jobs finished: done here, or by the thread that
        holds the batch now (which this asks to go again), without waiting for it."""
        note = f"{self._prefix}ai:batch-top-up-wanted:{batch_id}"
        try:
            self._redis.set(note, "1", ex=NOTE_SECONDS)
        except redis.RedisError:
            self.top_up(batch_id)  # no note can be left: wait for the lock instead
            return
        while self._top_up(batch_id, note=note) is not None:
            try:
                if not self._redis.exists(note):
                    return
            except redis.RedisError:
                return  # a note left meanwhile waits for the next job's end or the sweep

    def _top_up(self, batch_id: int, *, note: str | None) -> list[int] | None:
        """`top_up`; with a `note`, without waiting: None when another transaction holds the
        batch (or it is not running), else the note is cleared before anything is counted."""
        with self._engine.begin() as conn:
            batch = repo.lock_running_batch(conn, batch_id, skip_locked=note is not None)
            if batch is None:
                return None
            if note is not None:
                # Left in place if Redis fails: one more round than needed.
                with contextlib.suppress(redis.RedisError):
                    self._redis.delete(note)
            concurrency = int(batch["concurrency"])
            cap = concurrency + lookahead(concurrency)
            deadline = int(batch["job_deadline_seconds"])
            blocked = False
            in_flight: int | None
            if batch["max_tokens"] is None and batch["max_cost"] is None:
                # No budget: only the count of unfinished jobs matters, one statement.
                job_ids = repo.create_next_batch_jobs(
                    conn, batch_id=batch_id, cap=cap, deadline_seconds=deadline
                )
                # Whether any job is unfinished matters only when none started: is it over?
                in_flight = None if job_ids else repo.batch_in_flight(conn, batch_id)
            else:
                job_ids, blocked, in_flight = self._top_up_within_budget(conn, batch, cap, deadline)
            if not job_ids and in_flight == 0:
                # Nothing runs and nothing more may start: the batch is over, done or stopped
                # by its budget with items left (which a resume with a larger budget takes up).
                status = "budget_exhausted" if blocked else "completed"
                if blocked or not repo.has_pending_batch_items(conn, batch_id):
                    repo.finish_batch(conn, batch_id=batch_id, status=status)
                    BATCHES_FINISHED.labels(status).inc()
                    log.info("batch_finished", batch_id=batch_id, status=status)
        # After the commit, so workers find the rows; a send lost here leaves the job queued
        # and unstarted, which the sweeper re-sends.
        for job_id in job_ids:
            self._send(job_id)
        BATCH_JOBS.inc(len(job_ids))
        return job_ids

    @staticmethod
    def _top_up_within_budget(
        conn: Connection, batch: RowMapping, cap: int, deadline: int
    ) -> tuple[list[int], bool, int]:
        """The next jobs that fit the batch's budget: (their ids, whether the budget stopped
        one, the unfinished jobs before them)."""
        batch_id = int(batch["id"])
        load = repo.batch_load(conn, batch_id)
        in_flight = int(load["in_flight"])
        chosen: list[int] = []
        blocked = False
        free = cap - in_flight
        if free > 0:
            tokens = int(load["spent_tokens"]) + int(load["reserved_tokens"])
            cost = Decimal(load["spent_cost"]) + Decimal(load["reserved_cost"])
            for item in repo.pending_batch_items(conn, batch_id, free):
                if not within_budget(batch, tokens, cost, item):
                    blocked = True
                    break
                chosen.append(int(item["message_id"]))
                tokens += int(item["estimated_tokens"])
                cost += Decimal(item["estimated_cost"])
        job_ids = (
            repo.create_batch_jobs(
                conn, batch_id=batch_id, message_ids=chosen, deadline_seconds=deadline
            )
            if chosen
            else []
        )
        return job_ids, blocked, in_flight

    def top_up_running(self) -> int:
        """Every running batch (the sweep): returns how many jobs were started."""
        with self._engine.connect() as conn:
            batch_ids = repo.running_batches(conn)
        return sum(len(self.top_up(batch_id)) for batch_id in batch_ids)
