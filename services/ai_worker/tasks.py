"""Celery tasks of the AI worker. Tasks take ids and re-load what they need.

Each task runs as a span of the request that sent it (its id and `traceparent` come in the
task's headers: shared/tracing.py), so its log lines, the events it writes and the tasks it
sends carry that request's id and trace. The pool is threads: the context is bound in the
thread running the task and undone when it ends.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import structlog
from celery import Task

from services.ai_worker.app import app, resources
from shared import tracing
from shared.jobs import DISPATCH_BATCH_TASK, GENERATE_REPLY_TASK

log = structlog.get_logger(component="tasks")


def _span(task: Task) -> AbstractContextManager[tracing.TraceContext]:
    request = task.request
    return tracing.span(
        *tracing.from_task_headers(
            {key: request.get(key) for key in (tracing.TASK_REQUEST_ID, tracing.TASK_TRACEPARENT)}
        )
    )


@app.task(name=GENERATE_REPLY_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
def generate_reply(self: Task, job_id: int) -> str:
    """Generate and store the reply of one AI job (idempotent: see ReplyService.generate)."""
    with _span(self):
        structlog.contextvars.bind_contextvars(job_id=job_id)
        try:
            return resources.replies.generate(job_id)
        finally:
            structlog.contextvars.unbind_contextvars("job_id")


@app.task(name=DISPATCH_BATCH_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
def dispatch_batch(self: Task, batch_id: int) -> int:
    """Start a created or resumed batch's first jobs (safe to repeat: see BatchDispatcher)."""
    with _span(self):
        structlog.contextvars.bind_contextvars(batch_id=batch_id)
        try:
            return len(resources.batches.top_up(batch_id))
        finally:
            structlog.contextvars.unbind_contextvars("batch_id")
