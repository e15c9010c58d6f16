"""The queue exporter (services/ai_worker/queue_metrics.py) against the real broker layout: tasks
published through Celery/kombu with the platform's key prefix are counted, priorities included;
the oldest queued job is read from chat.ai_jobs; a dependency that fails drops its gauges from
the scrape instead of failing it."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator

import httpx
import pytest
import redis
from prometheus_client import REGISTRY, CollectorRegistry
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import Engine, create_engine, text

from services.ai_worker import repository as repo
from services.ai_worker.queue_metrics import QueueCollector, broker_queue_keys
from shared.db.pool import sqlalchemy_url
from shared.jobs import AI_QUEUE, GENERATE_REPLY_TASK, celery_app
from tests.harness import Stack


@pytest.fixture
def engine(stack: Stack) -> Iterator[Engine]:
    engine = create_engine(sqlalchemy_url(stack.database_url), pool_size=1)
    yield engine
    engine.dispose()


@pytest.fixture
def prefix(stack: Stack) -> str:
    """A key space of its own inside the run's (no worker reads it; dropped with the run's)."""
    return f"{stack.redis_prefix}queue-metrics-{secrets.token_hex(4)}:"


def _registry(collector: QueueCollector) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    return registry


def test_tasks_published_through_celery_are_counted_at_every_priority(
    stack: Stack, engine: Engine, prefix: str
) -> None:
    client = redis.Redis.from_url(stack.redis_url)
    registry = _registry(QueueCollector(client, engine, prefix=prefix))
    assert registry.get_sample_value("ai_queue_messages", {"queue": AI_QUEUE}) == 0

    app = celery_app(
        "queue-metrics-test",
        broker_url=stack.redis_url,
        redis_prefix=prefix,
        visibility_timeout_seconds=300,
    )
    try:
        app.send_task(GENERATE_REPLY_TASK, args=[1], queue=AI_QUEUE)
        app.send_task(GENERATE_REPLY_TASK, args=[2], queue=AI_QUEUE)
        app.send_task(GENERATE_REPLY_TASK, args=[3], queue=AI_QUEUE, priority=9)
    finally:
        app.close()

    # kombu put them where the exporter looks (a separate list for the priority), and nowhere
    # else under the prefix that looks like a queue.
    lists = {
        key.decode() for key in client.scan_iter(match=f"{prefix}*") if client.type(key) == b"list"
    }
    assert lists == {f"{prefix}{AI_QUEUE}", f"{prefix}{AI_QUEUE}\x06\x169"}
    assert lists <= set(broker_queue_keys(prefix))
    assert registry.get_sample_value("ai_queue_messages", {"queue": AI_QUEUE}) == 3
    assert registry.get_sample_value("ai_queue_unacked_messages") == 0
    assert registry.get_sample_value("ai_jobs_queued") is not None
    assert registry.get_sample_value("ai_job_oldest_queued_age_seconds") is not None


def test_oldest_queued_job_age_comes_from_the_jobs_table(engine: Engine) -> None:
    # Inside a transaction that is rolled back: the running worker never sees these rows.
    with engine.connect() as conn, conn.begin() as transaction:
        count_before, _ = repo.queued_jobs(conn)
        conversation = conn.execute(
            text(
                """
                WITH u AS (
                    INSERT INTO auth.users (email, password_hash, name)
                    VALUES (:email, 'x', 'Queue metrics') RETURNING id
                )
                INSERT INTO chat.conversations (user_id, title)
                SELECT id, 'queue metrics' FROM u RETURNING id, user_id
                """
            ),
            {"email": f"queue-{secrets.token_hex(6)}@example.com"},
        ).one()
        for age_seconds, status in ((7200, "queued"), (30, "queued"), (9000, "running")):
            conn.execute(
                text(
                    """
                    INSERT INTO chat.ai_jobs (conversation_id, user_id, status, model,
                                              created_at, deadline_at)
                    VALUES (:cid, :uid, :status, 'default',
                            now() - make_interval(secs => :age), now() + interval '1 hour')
                    """
                ),
                {
                    "cid": conversation.id,
                    "uid": conversation.user_id,
                    "status": status,
                    "age": age_seconds,
                },
            )
        count, oldest = repo.queued_jobs(conn)
        transaction.rollback()
    assert count == count_before + 2  # the running job is not queued
    # The 2-hour-old job is the oldest: no real job of a test run is that old.
    assert 7200 <= oldest < 7300


def test_a_failing_dependency_drops_its_gauges_and_is_counted(engine: Engine, prefix: str) -> None:
    # Nothing listens on port 1: every Redis call fails at once.
    unreachable = redis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )
    collector = QueueCollector(unreachable, engine, prefix=prefix)
    errors_before = _redis_errors()

    scraped = {family.name for family in collector.collect()}  # one scrape

    assert scraped == {"ai_jobs_queued", "ai_job_oldest_queued_age_seconds"}
    assert _redis_errors() == errors_before + 1


def _redis_errors() -> float:
    labels = {"dependency": "redis"}
    return REGISTRY.get_sample_value("ai_queue_metrics_errors_total", labels) or 0.0


def test_the_worker_serves_the_queue_gauges(stack: Stack) -> None:
    worker = next(s for s in stack.services if s.name == "ai_worker")
    assert worker.url is not None
    body = httpx.get(f"{worker.url}/metrics", timeout=10).text
    for series in (
        f'ai_queue_messages{{queue="{AI_QUEUE}"}}',
        "ai_queue_unacked_messages",
        "ai_jobs_queued",
        "ai_job_oldest_queued_age_seconds",
    ):
        assert re.search(rf"^{re.escape(series)} [0-9.e+]+$", body, re.MULTILINE), series
