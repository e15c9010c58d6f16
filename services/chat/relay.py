"""`python -m services.chat.relay`: moves outbox events to the Redis stream, in order, at least
once.

One relay is active at a time (it holds a Postgres advisory lock; others wait as standbys and
take over when its session ends). Each cycle it reads the unpublished outbox rows in id order,
appends them to the stream `chat.events` (approximately trimmed to `CHAT_RELAY_STREAM_MAXLEN`)
in one pipeline, then marks them published. A crash between the append and the mark appends
them again on restart: consumers de-duplicate by event id, so at-least-once is enough.

Redis losing its data (a restart without persistence, a failover) is detected by a marker key
the relay sets next to the stream: when the marker is gone, every event published within
`CHAT_RELAY_RETENTION_SECONDS` is appended again (consumers skip what they already applied).
Published rows are deleted once older than the retention.
"""

from __future__ import annotations

import secrets
import signal
import threading
import time
from types import FrameType
from typing import Any

import orjson
import psycopg
import redis
import structlog
from prometheus_client import Counter, Gauge
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.db.pool import plain_dsn
from shared.events import EVENT_STREAM
from shared.logs import configure_logging
from shared.probe_server import Heartbeat, ProbeServer, postgres_check, redis_check
from shared.settings import ServiceSettings

log = structlog.get_logger(component="relay")

PUBLISHED = Counter(
    "outbox_events_published_total", "Events appended to the stream, by type.", ["type"]
)
REPLAYED = Counter(
    "outbox_replays_total", "Times the relay re-appended retained events after Redis lost data."
)
BACKLOG = Gauge("outbox_backlog_events", "Outbox events not yet appended to the stream.")
OLDEST = Gauge("outbox_oldest_unpublished_age_seconds", "Age of the oldest event not yet appended.")
LEADER = Gauge("outbox_relay_leader", "1 while this relay is the active one, 0 as a standby.")
ERRORS = Counter(
    "outbox_relay_errors_total", "Relay cycles that failed, by dependency.", ["dependency"]
)

LOCK_KEY = "chat.outbox-relay"


class RelaySettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="CHAT_RELAY_", extra="ignore", hide_input_in_errors=True
    )

    metrics_port: int = Field(default=9102, ge=0)
    batch_size: int = Field(default=1000, ge=1, le=10_000)
    # How often an idle relay looks for new events (the floor of the end-to-end lag).
    poll_seconds: float = Field(default=0.05, gt=0)
    stream_maxlen: int = Field(default=1_000_000, ge=1000)
    retention_seconds: int = Field(default=3600, ge=60)


def stream_key(prefix: str) -> str:
    return f"{prefix}{EVENT_STREAM}"


def marker_key(prefix: str) -> str:
    return f"{prefix}{EVENT_STREAM}:relay-marker"


class Relay:
    def __init__(self, settings: RelaySettings) -> None:
        self.settings = settings
        self.redis = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
        self.stream = stream_key(settings.redis_prefix)
        self.marker = marker_key(settings.redis_prefix)
        self.stopping = threading.Event()
        # Beaten by every turn of the loops below (leading, standing by, reconnecting): /healthz.
        self.heartbeat = Heartbeat()
        self._next_cleanup = 0.0

    def run(self) -> None:
        while not self.stopping.is_set():
            self.heartbeat.beat()
            try:
                with psycopg.connect(
                    plain_dsn(self.settings.database_url), autocommit=True, connect_timeout=5
                ) as conn:
                    self._lead(conn)
            except psycopg.Error as exc:
                ERRORS.labels("postgres").inc()
                log.warning("relay_postgres_error", error=type(exc).__name__)
                self.stopping.wait(1.0)  # reconnect backoff
        LEADER.set(0)

    def _lead(self, conn: psycopg.Connection[Any]) -> None:
        while not self.stopping.is_set():
            got = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (LOCK_KEY,)).fetchone()
            if got and got[0]:
                break
            self.heartbeat.beat()
            LEADER.set(0)
            self.stopping.wait(1.0)  # a standby checks again every second
        else:
            return
        LEADER.set(1)
        log.info("relay_leading")
        while not self.stopping.is_set():
            self.heartbeat.beat()
            try:
                self._ensure_marker(conn)
                published = self.publish_batch(conn)
                self._maintain(conn)
            except redis.RedisError as exc:
                ERRORS.labels("redis").inc()
                log.warning("relay_redis_error", error=type(exc).__name__)
                self.stopping.wait(0.5)  # Redis is down or restarting: try again shortly
                continue
            if published < self.settings.batch_size:
                self.stopping.wait(self.settings.poll_seconds)

    def publish_batch(self, conn: psycopg.Connection[Any]) -> int:
        rows = conn.execute(
            """
            SELECT id, event_id, type, version, occurred_at, user_id, data, trace
            FROM chat.outbox WHERE published_at IS NULL ORDER BY id LIMIT %s
            """,
            (self.settings.batch_size,),
        ).fetchall()
        if not rows:
            return 0
        self._append(rows)
        conn.execute(
            "UPDATE chat.outbox SET published_at = now() WHERE id = ANY(%s)",
            ([row[0] for row in rows],),
        )
        for row in rows:
            PUBLISHED.labels(row[2]).inc()
        return len(rows)

    def _append(self, rows: list[tuple[Any, ...]]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for _, event_id, event_type, version, occurred_at, user_id, data, trace in rows:
            event = {
                "id": str(event_id),
                "type": event_type,
                "version": version,
                "occurred_at": occurred_at,
                "user_id": user_id,
                "data": data,
            }
            if trace is not None:
                event["trace"] = trace
            pipe.xadd(
                self.stream,
                {"event": orjson.dumps(event, option=orjson.OPT_UTC_Z)},
                maxlen=self.settings.stream_maxlen,
                approximate=True,
            )
        pipe.execute()

    def _ensure_marker(self, conn: psycopg.Connection[Any]) -> None:
        """Re-appends the retained events when Redis lost its data (the marker is gone)."""
        if self.redis.exists(self.marker):
            return
        replayed = 0
        last_id = 0
        while True:
            rows = conn.execute(
                """
                SELECT id, event_id, type, version, occurred_at, user_id, data, trace
                FROM chat.outbox WHERE published_at IS NOT NULL AND id > %s
                ORDER BY id LIMIT %s
                """,
                (last_id, self.settings.batch_size),
            ).fetchall()
            if not rows:
                break
            self._append(rows)
            replayed += len(rows)
            last_id = rows[-1][0]
        self.redis.set(self.marker, secrets.token_hex(8))
        if replayed:
            REPLAYED.inc()
            log.warning("relay_replayed_after_redis_data_loss", events=replayed)

    def _maintain(self, conn: psycopg.Connection[Any]) -> None:
        """Every few seconds: the backlog gauges, and published rows past their retention."""
        now = time.monotonic()
        if now < self._next_cleanup:
            return
        self._next_cleanup = now + 5.0
        row = conn.execute(
            """
            SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(occurred_at)), 0)
            FROM chat.outbox WHERE published_at IS NULL
            """
        ).fetchone()
        if row is not None:
            BACKLOG.set(row[0])
            OLDEST.set(float(row[1]))
        conn.execute(
            "DELETE FROM chat.outbox WHERE published_at < now() - make_interval(secs => %s)",
            (self.settings.retention_seconds,),
        )


def main() -> None:
    settings = RelaySettings()
    configure_logging("relay", settings.log_level)
    relay = Relay(settings)
    if settings.metrics_port:
        ProbeServer(
            host=settings.host,
            port=settings.metrics_port,
            liveness={"relay_loop": relay.heartbeat.check},
            readiness={
                "postgres": postgres_check(settings.database_url, application_name="relay-probe"),
                "redis": redis_check(settings.redis_url),
            },
        ).start()

    def stop(signum: int, _: FrameType | None) -> None:
        log.info("relay_stopping", signal=signum)
        relay.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    relay.run()


if __name__ == "__main__":
    main()
