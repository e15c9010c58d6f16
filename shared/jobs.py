"""The AI-job contract between the chat service (enqueues, waits) and the AI worker (runs, tells).

Both sides name the Celery task and the Redis channel the same way from here; neither imports
the other's internals.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Queue

from shared.broker import TRANSPORT

GENERATE_REPLY_TASK = "ai_worker.generate_reply"
# Starts a batch regeneration's jobs (args: batch id); the worker keeps it topped up after.
DISPATCH_BATCH_TASK = "ai_worker.dispatch_batch"
AI_QUEUE = "ai"


def celery_app(
    name: str,
    *,
    broker_url: str,
    redis_prefix: str,
    visibility_timeout_seconds: int,
    **conf: Any,
) -> Celery:
    """A Celery app on the Redis broker with the platform's key prefix and delivery guarantees."""
    app = Celery(name, broker=broker_url)
    app.conf.update(
        # kombu's Redis transport, minus a client object built per operation (shared/broker.py).
        broker_transport=TRANSPORT,
        task_default_queue=AI_QUEUE,
        task_queues=(Queue(AI_QUEUE),),
        task_serializer="json",
        accept_content=["json"],
        # Acknowledged after the task ran, and requeued if its worker dies: a job is never lost.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "global_keyprefix": redis_prefix,
            "visibility_timeout": visibility_timeout_seconds,
            # Tasks of a worker that died unacknowledged come back once the visibility timeout
            # has passed, at the next sweep; kombu's default sweeps only every ~100 s.
            "unacked_restore_interval": max(1, min(10, visibility_timeout_seconds // 4)),
            "unacked_restore_throttle": 1,
        },
        **conf,
    )
    return app


def job_done_channel(redis_prefix: str, job_id: int) -> str:
    """Where the worker announces that a job reached a final state."""
    return f"{redis_prefix}ai:job-done:{job_id}"


def job_done_pattern(redis_prefix: str) -> str:
    return f"{redis_prefix}ai:job-done:*"


def job_stream_key(redis_prefix: str, job_id: int) -> str:
    """The Redis stream of a job's events (tokens as generated, then its end), kept for an hour
    so a client can resume with Last-Event-ID from any chat process."""
    return f"{redis_prefix}ai:job-stream:{job_id}"


JOB_STREAM_TTL_SECONDS = 3600


def job_cancel_key(redis_prefix: str, job_id: int) -> str:
    """Set when a running job's owner asked to cancel it; the worker polls it while streaming."""
    return f"{redis_prefix}ai:job-cancel:{job_id}"
