"""Celery tasks of the AI worker. Tasks take ids and re-load what they need."""

from __future__ import annotations

import structlog

from services.ai_worker.app import app, resources
from shared.jobs import DISPATCH_BATCH_TASK, GENERATE_REPLY_TASK

log = structlog.get_logger(component="tasks")


@app.task(name=GENERATE_REPLY_TASK, acks_late=True, reject_on_worker_lost=True)
def generate_reply(job_id: int) -> str:
    """Generate and store the reply of one AI job (idempotent: see ReplyService.generate)."""
    structlog.contextvars.bind_contextvars(job_id=job_id)
    try:
        return resources.replies.generate(job_id)
    finally:
        structlog.contextvars.unbind_contextvars("job_id")


@app.task(name=DISPATCH_BATCH_TASK, acks_late=True, reject_on_worker_lost=True)
def dispatch_batch(batch_id: int) -> int:
    """Start a created or resumed batch's first jobs (safe to repeat: see BatchDispatcher)."""
    structlog.contextvars.bind_contextvars(batch_id=batch_id)
    try:
        return len(resources.batches.top_up(batch_id))
    finally:
        structlog.contextvars.unbind_contextvars("batch_id")
