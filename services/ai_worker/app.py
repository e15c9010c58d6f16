"""The AI worker's Celery app and the objects its tasks share (engine, LLM client, Redis)."""

from __future__ import annotations

from functools import cached_property

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import Engine, create_engine

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
            pool_pre_ping=True,
        )
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
        )

    @cached_property
    def replies(self) -> ReplyService:
        return ReplyService(
            settings,
            self.engine,
            LLMClient(settings),
            redis.Redis.from_url(settings.redis_url, socket_timeout=5),
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
