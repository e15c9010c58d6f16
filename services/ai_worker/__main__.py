"""`python -m services.ai_worker`: a Celery worker for AI jobs, with its metrics and probes
(/healthz, /readyz: services/ai_worker/probes.py) on a port.

The pool is threads: a job spends nearly all its time waiting on the LLM, so one process keeps
AI_WORKER_CONCURRENCY calls in flight without a process per call; the GIL is not the limit.
"""

from __future__ import annotations

import logging

from prometheus_client import REGISTRY

from services.ai_worker.app import app, resources, settings
from services.ai_worker.probes import ConsumerProbe
from services.ai_worker.sweeper import JobSweeper
from shared.logs import configure_logging
from shared.probe_server import ProbeServer, postgres_check, redis_check, thread_check


def main() -> None:
    configure_logging("ai_worker", settings.log_level)
    if settings.log_level != "DEBUG":
        # Celery's "Task received" / "Task succeeded" lines and httpx's line per model call
        # repeat what the job's own reply_stored / reply_failed line says, three per job.
        for name in ("celery.app.trace", "celery.worker.strategy", "httpx"):
            logging.getLogger(name).setLevel(logging.WARNING)
    sweeper = JobSweeper(app, resources.replies, resources.batches)
    consumer = ConsumerProbe()
    consumer.connect()
    if settings.metrics_port:
        # The queue's depth and age, read at each scrape (services/ai_worker/queue_metrics.py).
        REGISTRY.register(resources.queue_collector)
        ProbeServer(
            host=settings.host,
            port=settings.metrics_port,
            liveness={
                "consumer": consumer.alive,
                "sweeper": thread_check(sweeper, sweeper.heartbeat),
            },
            readiness={
                "consumer": consumer.ready,
                "redis": redis_check(settings.redis_url),
                "postgres": postgres_check(
                    settings.database_url, application_name="ai-worker-probe"
                ),
            },
        ).start()
    sweeper.start()
    app.worker_main(
        [
            "worker",
            "--pool=threads",
            f"--concurrency={settings.concurrency}",
            "--queues=ai",
            f"--loglevel={settings.log_level}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )


if __name__ == "__main__":
    main()
