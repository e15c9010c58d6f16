"""The job sweeper: nothing stays queued or running forever.

Every `AI_WORKER_SWEEP_INTERVAL_SECONDS` each worker process fails the jobs past their deadline
(`deadline_exceeded`, announced to waiters like any outcome) and re-sends the jobs that sat
queued without any worker starting them (a publish lost between the chat service's commit and
its send); then it tops up every running batch regeneration, which resumes a batch whose
dispatch was interrupted by a crash anywhere. Several workers sweep at once safely: rows are
taken with SKIP LOCKED, and a re-sent job that was already running is a duplicate delivery,
which the task ignores.
"""

from __future__ import annotations

import threading

import structlog
from celery import Celery
from prometheus_client import Counter
from sqlalchemy.exc import SQLAlchemyError

from services.ai_worker import repository as repo
from services.ai_worker.batches import BatchDispatcher
from services.ai_worker.service import ReplyService
from shared import tracing
from shared.jobs import AI_QUEUE, GENERATE_REPLY_TASK, JobDone
from shared.probe_server import STALL_SECONDS, Heartbeat

log = structlog.get_logger(component="sweeper")

SWEPT = Counter("ai_jobs_swept_total", "Jobs the sweeper acted on, by action.", ["action"])


class JobSweeper(threading.Thread):
    def __init__(self, app: Celery, replies: ReplyService, batches: BatchDispatcher) -> None:
        super().__init__(name="ai-job-sweeper", daemon=True)
        self._app = app
        self._replies = replies
        self._batches = batches
        self._stop_requested = threading.Event()
        # /healthz: a sweep that has not come round for three periods (and a minute) is stuck.
        interval = replies.settings.sweep_interval_seconds
        self.heartbeat = Heartbeat(stall_seconds=STALL_SECONDS + 3 * interval)

    def stop(self) -> None:
        self._stop_requested.set()

    def run(self) -> None:
        interval = self._replies.settings.sweep_interval_seconds
        # Event.wait is the sweep period (and wakes at once on stop), not synchronisation.
        while not self._stop_requested.wait(interval):
            try:
                # A sweep is a request of its own: the jobs it fails or re-sends and the batch
                # jobs it starts carry its id (shared/tracing.py).
                with tracing.span(tracing.new_request_id(), None):
                    self.sweep()
            except SQLAlchemyError as exc:
                log.warning("sweep_failed", error=type(exc).__name__)
            self.heartbeat.beat()

    def sweep(self) -> None:
        settings = self._replies.settings
        with self._replies.engine.begin() as conn:
            expired = repo.expire_overdue_jobs(conn)
            resend = repo.claim_unstarted_jobs(
                conn, older_than_seconds=settings.requeue_after_seconds, limit=500
            )
        for job_id in expired:
            SWEPT.labels("expired").inc()
            self._replies.announce(job_id, JobDone("failed"))
        for job_id, trace in resend:
            SWEPT.labels("requeued").inc()
            # On behalf of the request that created the job, when it is known.
            headers = tracing.task_headers_of(trace) or tracing.task_headers()
            self._app.send_task(GENERATE_REPLY_TASK, args=[job_id], queue=AI_QUEUE, headers=headers)
        dispatched = self._batches.top_up_running()
        if expired or resend or dispatched:
            log.info("swept", expired=len(expired), requeued=len(resend), batch_jobs=dispatched)
