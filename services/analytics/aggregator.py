"""`python -m services.analytics.aggregator`: applies the `chat.events` stream to the rollups.

It reads with the consumer group `analytics` (shared/stream_consumer.py: batches, acknowledgement
after commit, poison isolation, reclaiming a dead aggregator's entries, dead letters), so any
number of aggregators share the stream. Each batch is one transaction: the events' ids go into
`analytics.processed_events` (an id already there is skipped: redeliveries and replays count
once), the conversations the batch is about are locked, and the batch's deltas (rollups.py) are
written with a few set-based upserts. Losing the database connection blocks the batch until the
database answers again (its entries stay pending, never dead-lettered for an outage); a
deadlock or serialization failure is retried at once; any other error fails the batch, which the
consumer loop then applies event by event.

SIGTERM/SIGINT: the batch in hand is finished and acknowledged, then the process exits.
Metrics on ANALYTICS_AGGREGATOR_METRICS_PORT [9103].
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

import psycopg
import redis
import structlog
from prometheus_client import Counter, Histogram

from services.analytics import rollup_repository as repo
from services.analytics.rollups import TABLES, conversation_owners, plan_batch, subtract_stored
from services.analytics.settings import AggregatorSettings
from shared.db.pool import plain_dsn
from shared.logs import configure_logging
from shared.probe_server import Heartbeat, ProbeServer, postgres_check, redis_check
from shared.stream_consumer import Delivered, StreamConsumer

log = structlog.get_logger(component="aggregator")

BATCH_SECONDS = Histogram(
    "analytics_batch_apply_seconds",
    "Time to apply one batch of events (one transaction, commit included).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
# From the commit of the change (the event's occurred_at) to the commit of its aggregate.
EVENT_LAG = Histogram(
    "analytics_event_lag_seconds",
    "Seconds from an event's occurred_at to the commit of the rollups it changed.",
    buckets=(
        0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 1.5, 2, 3, 5,
        10, 30, 60, 300,
    ),
)  # fmt: skip
SKIPPED = Counter(
    "analytics_events_skipped_total",
    "Events that changed nothing: applied before (duplicate), or about a deleted conversation.",
    ["reason"],
)
PRUNED = Counter(
    "analytics_processed_events_pruned_total", "Applied event ids forgotten past the retention."
)
DB_ERRORS = Counter(
    "analytics_aggregator_db_errors_total",
    "Batches that hit a lost database connection or a lock conflict, then were retried.",
    ["kind"],
)

LOCK_RETRIES = 5
PRUNE_SLICE = 10_000
PRUNE_SLICES_PER_CALL = 20


class Aggregator:
    """The consumer's `apply`: one batch of valid events, made durable in one transaction."""

    def __init__(self, settings: AggregatorSettings) -> None:
        self.settings = settings
        self.stopping = threading.Event()
        # The consumer's (build() shares it): waiting for the database is progress, not a wedge.
        self.heartbeat = Heartbeat()
        self._conn: psycopg.Connection[Any] | None = None
        self._next_prune = time.monotonic() + 5.0

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> psycopg.Connection[Any]:
        """The connection, (re)opened when needed; waits while the database is down."""
        delay = 0.2
        while self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(
                    plain_dsn(self.settings.database_url),
                    autocommit=True,
                    application_name="analytics-aggregator",
                    connect_timeout=5,
                )
            except psycopg.OperationalError as exc:
                DB_ERRORS.labels("connect").inc()
                log.warning("aggregator_db_unavailable", error=str(exc).splitlines()[0][:200])
                self.heartbeat.beat()
                if self.stopping.wait(delay):
                    raise
                delay = min(delay * 2, 5.0)
        return self._conn

    def apply(self, batch: Sequence[Delivered]) -> None:
        lock_conflicts = 0
        delay = 0.2
        while True:
            conn = self._connection()
            started = time.perf_counter()
            try:
                applied = self._apply_once(conn, batch)
            except (psycopg.errors.TransactionRollback, psycopg.errors.DeadlockDetected):
                # A deadlock or serialization failure: nothing was written; try again at once.
                DB_ERRORS.labels("lock_conflict").inc()
                lock_conflicts += 1
                if lock_conflicts >= LOCK_RETRIES:
                    raise
                continue
            except psycopg.OperationalError as exc:
                if not conn.closed and not conn.broken:
                    raise  # the statement failed, the connection is fine: not an outage
                DB_ERRORS.labels("connection_lost").inc()
                log.warning("aggregator_db_connection_lost", error=str(exc).splitlines()[0][:200])
                self.close()
                self.heartbeat.beat()
                if self.stopping.wait(delay):
                    raise
                delay = min(delay * 2, 5.0)
                continue
            break
        committed = time.time()
        BATCH_SECONDS.observe(time.perf_counter() - started)
        for one in applied:
            EVENT_LAG.observe(max(0.0, committed - one.event.occurred_at.timestamp()))
        self._maybe_prune(conn)

    def _apply_once(
        self, conn: psycopg.Connection[Any], batch: Sequence[Delivered]
    ) -> list[Delivered]:
        """Applies the batch in one transaction; returns the events that were new."""
        unique: dict[str, Delivered] = {}
        for one in batch:
            unique.setdefault(str(one.event.id), one)
        # Pipeline mode: the writes that need no answer go out together with the next statement
        # whose answer is needed (or the commit): a batch costs a few round trips, not a dozen,
        # which is most of the lag a small batch adds.
        with conn.pipeline(), conn.transaction():
            new = repo.record_events(
                conn, [(event_id, one.event.occurred_at) for event_id, one in unique.items()]
            )
            fresh = [one for event_id, one in unique.items() if event_id in new]
            events = [(one.event, one.data) for one in fresh]
            stored = repo.lock_conversations(conn, conversation_owners(events))
            plan = plan_batch(events, stored)
            if plan.deleted:
                buckets, agents = repo.take_conversation_rows(
                    conn, [state.conversation_id for state in plan.deleted]
                )
                owners = {state.conversation_id: state.user_id for state in plan.deleted}
                subtract_stored(plan.rollups, owners, buckets, agents)
            repo.save_conversations(conn, plan.states)
            repo.apply_rollups(conn, plan.rollups, TABLES)
        duplicates = len(batch) - len(fresh)
        if duplicates:
            SKIPPED.labels("duplicate").inc(duplicates)
        if plan.ignored:
            SKIPPED.labels("deleted_conversation").inc(plan.ignored)
        return fresh

    def _maybe_prune(self, conn: psycopg.Connection[Any]) -> None:
        now = time.monotonic()
        if now < self._next_prune:
            return
        self._next_prune = now + self.settings.prune_interval_seconds
        try:
            for _ in range(PRUNE_SLICES_PER_CALL):
                removed = repo.prune_processed(
                    conn,
                    older_than_seconds=self.settings.processed_retention_seconds,
                    limit=PRUNE_SLICE,
                )
                PRUNED.inc(removed)
                if removed < PRUNE_SLICE:
                    break
        except psycopg.Error as exc:  # housekeeping: the next call tries again
            log.warning("aggregator_prune_failed", error=str(exc).splitlines()[0][:200])


def build(settings: AggregatorSettings) -> tuple[Aggregator, StreamConsumer]:
    aggregator = Aggregator(settings)
    # The socket timeout outlasts the blocking read (block_ms), which is not an error.
    client = redis.Redis.from_url(
        settings.redis_url, socket_timeout=max(5.0, settings.block_ms / 1000 + 5.0)
    )
    consumer = StreamConsumer(
        client,
        prefix=settings.redis_prefix,
        group=settings.group,
        consumer=settings.consumer,
        apply=aggregator.apply,
        batch_size=settings.batch_size,
        block_ms=settings.block_ms,
        claim_idle_ms=settings.claim_idle_ms,
        max_deliveries=settings.max_deliveries,
    )
    consumer.heartbeat = aggregator.heartbeat
    return aggregator, consumer


def main() -> None:
    settings = AggregatorSettings()
    configure_logging("aggregator", settings.log_level)
    aggregator, consumer = build(settings)
    if settings.metrics_port:
        ProbeServer(
            host=settings.host,
            port=settings.metrics_port,
            liveness={"consumer_loop": consumer.heartbeat.check},
            readiness={
                "postgres": postgres_check(
                    settings.database_url, application_name="analytics-aggregator-probe"
                ),
                "redis": redis_check(settings.redis_url),
            },
        ).start()

    def stop(signum: int, _: FrameType | None) -> None:
        log.info("aggregator_stopping", signal=signum)
        consumer.stopping.set()
        aggregator.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("aggregator_started", group=settings.group, consumer=settings.consumer)
    try:
        consumer.run()
    finally:
        aggregator.close()
    log.info("aggregator_stopped")


if __name__ == "__main__":
    main()
