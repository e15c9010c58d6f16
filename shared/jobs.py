"""The AI-job contract between the chat service (enqueues, waits) and the AI worker (runs, tells).

Both sides name the Celery task and the Redis channel the same way from here; neither imports
the other's internals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
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


@dataclass(frozen=True, slots=True)
class JobDone:
    """What a job-done announcement says: the job's final status, and for a job that stored a
    reply, that reply's row as the chat service reads it (keys of `REPLY_FIELDS`), so the
    request waiting for it answers without reading it back. The row is the truth; a waiter
    without the reply in the announcement reads it."""

    outcome: str
    reply: dict[str, Any] | None = None

    def encode(self) -> str:
        if self.reply is None:
            return self.outcome
        return orjson.dumps({"outcome": self.outcome, "reply": self.reply}).decode()

    @classmethod
    def decode(cls, data: bytes | str) -> JobDone:
        text = data.decode() if isinstance(data, bytes) else data
        if not text.startswith("{"):
            return cls(text)  # a bare outcome (a job that ended without a reply)
        try:
            body = orjson.loads(text)
            reply = body.get("reply")
            if isinstance(reply, dict) and not reply.keys() >= REPLY_FIELDS:
                reply = None
            return cls(str(body["outcome"]), reply if isinstance(reply, dict) else None)
        except (orjson.JSONDecodeError, KeyError, AttributeError):
            return cls("unknown")


REPLY_FIELDS = frozenset(
    {
        "status", "model", "error_code", "error", "input_tokens", "output_tokens", "cost",
        "processing_time", "reply_message_id", "reply_content", "reply_created_at",
    }
)  # fmt: skip


def job_stream_key(redis_prefix: str, job_id: int) -> str:
    """The Redis stream of a job's events (tokens as generated, then its end), kept for an hour
    so a client can resume with Last-Event-ID from any chat process."""
    return f"{redis_prefix}ai:job-stream:{job_id}"


JOB_STREAM_TTL_SECONDS = 3600


def job_cancel_key(redis_prefix: str, job_id: int) -> str:
    """Set when a running job's owner asked to cancel it; the worker polls it while streaming."""
    return f"{redis_prefix}ai:job-cancel:{job_id}"
