"""The AI job queue's depth and age, read from Redis and Postgres whenever Prometheus scrapes the
worker (so they are as fresh as the scrape, and cost nothing between scrapes).

- `ai_queue_messages{queue}`: tasks waiting in the broker, not yet taken by a worker: the Redis
  lists kombu keeps for the queue (`<REDIS_PREFIX><queue>`, plus one list per priority step,
  `<REDIS_PREFIX><queue>\\x06\\x16<step>`). This is what the KEDA ScaledObject scales the
  workers on (deploy/k8s/ai-worker.yaml).
- `ai_queue_unacked_messages`: tasks taken by a worker and not acknowledged yet (kombu's
  `<REDIS_PREFIX>unacked` hash): running, reserved, or left by a dead worker until the
  visibility timeout hands them out again.
- `ai_jobs_queued` and `ai_job_oldest_queued_age_seconds`: the `chat.ai_jobs` rows still
  `queued` and how long the oldest has waited: what users feel, including a job whose publish
  was lost (the sweeper re-sends those).

Each source is read with a short timeout; one that fails is left out of that scrape (its gauges
go missing rather than report a wrong 0) and counted in `ai_queue_metrics_errors_total`. Every
worker replica reports the same values: aggregate with `max`, not `sum`.
"""

from __future__ import annotations

from collections.abc import Iterator

import redis
import structlog
from kombu.transport.redis import PRIORITY_STEPS, Channel
from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from services.ai_worker import repository as repo
from shared.jobs import AI_QUEUE

log = structlog.get_logger(component="queue_metrics")

ERRORS = Counter(
    "ai_queue_metrics_errors_total",
    "Scrapes that could not read the queue's depth or age, by dependency.",
    ["dependency"],
)
# The statement that counts queued jobs gives up after this (a scrape must stay fast).
STATEMENT_TIMEOUT_MS = 2000


def broker_queue_keys(prefix: str, queue: str = AI_QUEUE) -> list[str]:
    """The Redis lists kombu's Redis transport keeps for `queue` under the global key prefix:
    the queue's name for priority 0, and `<name><sep><step>` for each higher priority step."""
    keys = [f"{prefix}{queue}"]
    keys += [f"{prefix}{queue}{Channel.sep}{step}" for step in PRIORITY_STEPS if step]
    return keys


def broker_unacked_key(prefix: str) -> str:
    """kombu's hash of delivered, unacknowledged messages (every queue of the prefix)."""
    return f"{prefix}{Channel.unacked_key}"


class QueueCollector(Collector):
    def __init__(
        self, broker: redis.Redis, engine: Engine, *, prefix: str, queue: str = AI_QUEUE
    ) -> None:
        self._broker = broker
        self._engine = engine
        self._queue = queue
        self._queue_keys = broker_queue_keys(prefix, queue)
        self._unacked_key = broker_unacked_key(prefix)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The families without reading anything (registration must not touch Redis or SQL)."""
        yield from self._broker_families()
        yield from self._job_families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            pipe = self._broker.pipeline(transaction=False)
            for key in self._queue_keys:
                pipe.llen(key)
            pipe.hlen(self._unacked_key)
            *lengths, unacked = pipe.execute()
        except redis.RedisError as exc:
            ERRORS.labels("redis").inc()
            log.warning("queue_metrics_redis_failed", error=type(exc).__name__)
        else:
            waiting, in_hand = self._broker_families()
            waiting.add_metric([self._queue], float(sum(lengths)))
            in_hand.add_metric([], float(unacked))
            yield waiting
            yield in_hand
        try:
            with self._engine.begin() as conn:
                conn.execute(text(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"))
                count, oldest = repo.queued_jobs(conn)
        except SQLAlchemyError as exc:
            ERRORS.labels("postgres").inc()
            log.warning("queue_metrics_postgres_failed", error=type(exc).__name__)
        else:
            queued, age = self._job_families()
            queued.add_metric([], float(count))
            age.add_metric([], oldest)
            yield queued
            yield age

    @staticmethod
    def _broker_families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "ai_queue_messages",
                "Tasks waiting in the broker's queue, not yet taken by a worker.",
                labels=["queue"],
            ),
            GaugeMetricFamily(
                "ai_queue_unacked_messages",
                "Tasks taken by workers and not acknowledged yet (running, reserved, or left "
                "by a dead worker until the visibility timeout).",
            ),
        )

    @staticmethod
    def _job_families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("ai_jobs_queued", "AI jobs queued that no worker has started."),
            GaugeMetricFamily(
                "ai_job_oldest_queued_age_seconds",
                "Age of the oldest AI job still queued (0 when none is).",
            ),
        )
