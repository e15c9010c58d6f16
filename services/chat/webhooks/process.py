"""`python -m services.chat.webhooks`: the webhook delivery process.

Two halves, decoupled by the delivery queue in Postgres, so a slow or dead receiver never holds
back the event stream:

- **Enqueueing.** A consumer of `chat.events` in the group `webhooks` (shared/stream_consumer.py:
  batches, acknowledgement after commit, poison isolation, reclaim, dead letters) turns each
  batch of events, in one transaction, into one delivery per matching active endpoint. The
  (endpoint, event id) key makes a redelivered event a no-op.
- **Sending.** `CHAT_WEBHOOKS_CONCURRENCY` sender threads claim due deliveries (`FOR UPDATE SKIP
  LOCKED`: any number of processes share the work), POST them signed, and record the outcome:
  delivered, failed (retried with backoff) or dead after `CHAT_WEBHOOKS_MAX_ATTEMPTS`.

The main thread keeps the backlog gauges and deletes finished deliveries past retention.
Metrics (these and the consumer's) are served on `CHAT_WEBHOOKS_METRICS_PORT`, with /healthz
(the consumer, every sender and the maintenance loop run and made progress recently) and /readyz
(Postgres and Redis answer).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Sequence
from types import FrameType

import orjson
import psycopg
import redis
import structlog

from services.chat.webhooks import queue
from services.chat.webhooks.metrics import BACKLOG, ENQUEUED, ERRORS, OLDEST_DUE
from services.chat.webhooks.sender import Sender
from services.chat.webhooks.settings import WebhookSettings
from shared.db.pool import plain_dsn
from shared.events import Event
from shared.logs import configure_logging
from shared.probe_server import (
    Check,
    Heartbeat,
    ProbeServer,
    all_of,
    postgres_check,
    redis_check,
    thread_check,
)
from shared.stream_consumer import Delivered, StreamConsumer

log = structlog.get_logger(component="webhooks")

GROUP = "webhooks"
GAUGE_INTERVAL_SECONDS = 5.0
CLEANUP_INTERVAL_SECONDS = 600.0


def event_body(event: Event) -> str:
    """The event as its webhook body: the very JSON object of the stream (shared/events.py),
    `trace` included when it has one (the receiver can tie the event to the API request, its
    X-Request-ID, that caused it)."""
    return orjson.dumps(event.model_dump(exclude_unset=True), option=orjson.OPT_UTC_Z).decode()


class Enqueuer:
    """The stream consumer's `apply`: events → deliveries, in one transaction per batch."""

    def __init__(self, settings: WebhookSettings, wakeup: threading.Event) -> None:
        self.settings = settings
        self.wakeup = wakeup
        self._conn: queue.Conn | None = None

    def __call__(self, batch: Sequence[Delivered]) -> None:
        conn = self._connection()
        try:
            with conn.transaction():
                endpoints = queue.active_endpoints(conn)
                deliveries = self._deliveries(batch, endpoints)
                created = queue.enqueue(conn, deliveries)
        except psycopg.OperationalError:
            # A broken connection is not reused: the next batch (or the retry of this one, as
            # the consumer isolates the failure) connects again.
            ERRORS.labels("postgres").inc()
            self.close()
            raise
        if created:
            ENQUEUED.inc(created)
            self.wakeup.set()  # this process's senders start now rather than at their next poll

    @staticmethod
    def _deliveries(
        batch: Sequence[Delivered], endpoints: Sequence[queue.Endpoint]
    ) -> list[queue.NewDelivery]:
        out: dict[tuple[int, str], queue.NewDelivery] = {}
        for one in batch:
            event = one.event
            wanting = [e for e in endpoints if e.wants(event.type, event.occurred_at)]
            if not wanting:
                continue
            body = event_body(event)
            for endpoint in wanting:
                # A batch may hold the same event twice (the relay appends at least once).
                out[(endpoint.id, str(event.id))] = queue.NewDelivery(
                    endpoint.id, event.id, event.type, event.occurred_at, body
                )
        return list(out.values())

    def _connection(self) -> queue.Conn:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                plain_dsn(self.settings.database_url), autocommit=True, connect_timeout=5
            )
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class WebhookProcess:
    def __init__(self, settings: WebhookSettings) -> None:
        self.settings = settings
        self.stopping = threading.Event()
        self.wakeup = threading.Event()
        self.enqueuer = Enqueuer(settings, self.wakeup)
        self.consumer = StreamConsumer(
            redis.Redis.from_url(settings.redis_url, socket_timeout=5),
            prefix=settings.redis_prefix,
            group=GROUP,
            consumer=f"{socket.gethostname()}-{os.getpid()}",
            apply=self.enqueuer,
            batch_size=settings.batch_size,
            claim_idle_ms=settings.claim_idle_ms,
            max_deliveries=settings.max_deliveries,
        )
        self.senders = [
            Sender(settings, name=f"sender-{i}", stopping=self.stopping, wakeup=self.wakeup)
            for i in range(settings.concurrency)
        ]
        self._consumer_thread = threading.Thread(target=self._consume, name="consumer", daemon=True)
        self.maintenance_heartbeat = Heartbeat()

    def liveness(self) -> dict[str, Check]:
        """What /healthz checks: each thread of the process runs and made progress recently."""
        return {
            "consumer": thread_check(self._consumer_thread, self.consumer.heartbeat),
            "senders": all_of(thread_check(sender, sender.heartbeat) for sender in self.senders),
            "maintenance": self.maintenance_heartbeat.check,
        }

    def run(self) -> None:
        self._consumer_thread.start()
        for sender in self.senders:
            sender.start()
        log.info("webhooks_started", senders=len(self.senders), group=GROUP)
        self._maintain()
        # Senders finish the attempt they are in (bounded by the HTTP timeout).
        deadline = time.monotonic() + self.settings.timeout_seconds + 5
        for thread in [self._consumer_thread, *self.senders]:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.enqueuer.close()
        log.info("webhooks_stopped")

    def stop(self) -> None:
        self.stopping.set()
        self.consumer.stopping.set()
        self.wakeup.set()

    def _consume(self) -> None:
        while not self.stopping.is_set():
            self.consumer.heartbeat.beat()
            try:
                self.consumer.run()
            except (redis.RedisError, psycopg.Error) as exc:
                # The shared loop rides out lost groups and connections; anything else it
                # raises (a Redis timeout, say) is retried here rather than ending the process.
                ERRORS.labels("redis" if isinstance(exc, redis.RedisError) else "postgres").inc()
                log.warning("webhook_consumer_error", error=repr(exc)[:300])
                self.stopping.wait(1.0)

    def _maintain(self) -> None:
        """Until stopped: the backlog gauges every few seconds, retention every few minutes."""
        next_cleanup = time.monotonic() + 60.0
        while not self.stopping.is_set():
            self.maintenance_heartbeat.beat()
            try:
                with psycopg.connect(
                    plain_dsn(self.settings.database_url), autocommit=True, connect_timeout=5
                ) as conn:
                    while not self.stopping.is_set():
                        self.maintenance_heartbeat.beat()
                        due, oldest = queue.backlog(conn)
                        BACKLOG.set(due)
                        OLDEST_DUE.set(oldest)
                        if time.monotonic() >= next_cleanup:
                            next_cleanup = time.monotonic() + CLEANUP_INTERVAL_SECONDS
                            self._delete_finished(conn)
                        self.stopping.wait(GAUGE_INTERVAL_SECONDS)
            except psycopg.Error as exc:
                ERRORS.labels("postgres").inc()
                log.warning("webhook_maintenance_postgres_error", error=type(exc).__name__)
                self.stopping.wait(1.0)

    def _delete_finished(self, conn: queue.Conn) -> None:
        deleted = 0
        while not self.stopping.is_set():
            batch = queue.delete_finished(conn, older_than_days=self.settings.retention_days)
            deleted += batch
            if batch == 0:
                break
        if deleted:
            log.info("webhook_deliveries_deleted", deliveries=deleted)


def main() -> None:
    settings = WebhookSettings()
    configure_logging("webhooks", settings.log_level)
    # Every attempt is logged once, by us, with its delivery; httpx's own line would repeat it.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    process = WebhookProcess(settings)
    if settings.metrics_port:
        ProbeServer(
            host=settings.host,
            port=settings.metrics_port,
            liveness=process.liveness(),
            readiness={
                "postgres": postgres_check(
                    settings.database_url, application_name="webhooks-probe"
                ),
                "redis": redis_check(settings.redis_url),
            },
        ).start()

    def stop(signum: int, _: FrameType | None) -> None:
        log.info("webhooks_stopping", signal=signum)
        process.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    process.run()


if __name__ == "__main__":
    main()
