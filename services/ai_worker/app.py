"""The AI worker's Celery app and the objects its tasks share (engine, LLM client, Redis)."""

from __future__ import annotations

import time
from functools import cached_property
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import Engine, create_engine, event, exc

from services.ai_worker.batches import BatchDispatcher
from services.ai_worker.llm import LLMClient
from services.ai_worker.queue_metrics import QueueCollector
from services.ai_worker.service import ReplyService
from services.ai_worker.settings import WorkerSettings
from shared import tracing
from shared.db.pool import sqlalchemy_url
from shared.db.pool_metrics import watch_sqlalchemy_pool
from shared.jobs import AI_QUEUE, GENERATE_REPLY_TASK, celery_app

settings = WorkerSettings()

app = celery_app(
    "ai_worker",
    broker_url=settings.redis_url,
    redis_prefix=settings.redis_prefix,
    visibility_timeout_seconds=settings.visibility_timeout_seconds,
    # Below the broker's visibility timeout (checked by the settings), so a task is never
    # redelivered while its first run is still going.
    task_time_limit=settings.task_time_limit_seconds,
    # The soft limit first (a clean failure the task can record), then the hard one.
    task_soft_time_limit=settings.task_time_limit_seconds
    - max(1, min(5, settings.task_time_limit_seconds // 10)),
    # Our JSON logging stays in charge: Celery neither replaces the root logger's handlers nor
    # wraps stdout (which would re-log each JSON line inside another).
    worker_hijack_root_logger=False,
    worker_redirect_stdouts=False,
    include=["services.ai_worker.tasks"],
)


IDLE_PING_SECONDS = 10.0


def ping_when_idle(engine: Engine, idle_seconds: float = IDLE_PING_SECONDS) -> None:
    """Checks a pooled connection before use when it sat idle for `idle_seconds` (a restarted
    or failed-over Postgres, a firewall's idle cut), instead of before every use as
    `pool_pre_ping` does: that ping is a round trip per statement of a busy worker's hot path.
    A connection that fails its ping is replaced (SQLAlchemy retries the checkout); one that
    breaks between uses fails its statement and the pool is invalidated; the job's own statements
    are tried once more on a new connection then (ReplyService), others fail their task or sweep
    once."""

    @event.listens_for(engine, "checkin")
    def _stamp(_: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_connection: Any, record: Any, _: Any) -> None:
        if time.monotonic() - record.info.get("idle_since", 0.0) < idle_seconds:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as error:
            raise exc.DisconnectionError(f"idle connection failed its ping: {error}") from error


class Resources:
    """Created on first use inside the worker process (never at import, so the Celery parent
    and tools importing this module open no connections)."""

    @cached_property
    def engine(self) -> Engine:
        overflow = 4
        engine = create_engine(
            sqlalchemy_url(settings.database_url),
            pool_size=settings.concurrency,
            max_overflow=overflow,
            # Named in pg_stat_activity, as the services' pools are.
            connect_args={"application_name": "ai-worker"},
        )
        ping_when_idle(engine)
        watch_sqlalchemy_pool(engine, "ai_worker", max_connections=settings.concurrency + overflow)
        return engine

    @cached_property
    def batches(self) -> BatchDispatcher:
        return BatchDispatcher(
            self.engine,
            # Sent on behalf of the request, task or sweep in progress (its trace context).
            lambda job_id: app.send_task(
                GENERATE_REPLY_TASK,
                args=[job_id],
                queue=AI_QUEUE,
                headers=tracing.task_headers(),
            ),
            self.redis,
            settings.redis_prefix,
        )

    @cached_property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(settings.redis_url, socket_timeout=5)

    @cached_property
    def replies(self) -> ReplyService:
        return ReplyService(
            settings,
            self.engine,
            LLMClient(settings),
            self.redis,
            self.batches,
        )

    @cached_property
    def queue_collector(self) -> QueueCollector:
        # Its own connection and short timeouts: a scrape never waits for a pool that busy
        # jobs hold, nor hangs on a slow dependency.
        engine = create_engine(
            sqlalchemy_url(settings.database_url),
            pool_size=1,
            max_overflow=0,
            pool_timeout=2,
            pool_pre_ping=True,
            connect_args={"connect_timeout": 2},
        )
        # No retries either: a scrape that cannot read Redis at once reports the error.
        broker = redis.Redis.from_url(
            settings.redis_url,
            socket_timeout=2,
            socket_connect_timeout=2,
            retry=Retry(NoBackoff(), 0),
        )
        return QueueCollector(broker, engine, prefix=settings.redis_prefix)


resources = Resources()
