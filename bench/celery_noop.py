"""The baseline of `python -m bench ai`: a bare Celery app with one no-op task.

Its worker runs as `celery -A bench.celery_noop worker --pool threads --concurrency 8` on the same
Redis as the AI pipeline (broker and result backend), with its own key prefix; the bench process
measures `noop.delay(x).get()` round trips against it. Configuration comes from the environment
(`BENCH_CELERY_REDIS_URL`, `BENCH_CELERY_PREFIX`) because the worker imports this module by name.
"""

from __future__ import annotations

import os

from celery import Celery

TASK = "bench.noop"
QUEUE = "bench-noop"


def make_app(redis_url: str, prefix: str) -> Celery:
    """Celery's defaults, except JSON only, the run's key prefix and results kept 10 minutes."""
    app = Celery("bench_noop", broker=redis_url, backend=redis_url)
    app.conf.update(
        task_default_queue=QUEUE,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=600,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"global_keyprefix": prefix},
        result_backend_transport_options={"global_keyprefix": prefix},
        worker_hijack_root_logger=False,
    )

    @app.task(name=TASK, shared=False)
    def noop(x: int) -> int:
        return x

    return app


app = make_app(
    os.environ.get("BENCH_CELERY_REDIS_URL", "redis://127.0.0.1:6379/0"),
    os.environ.get("BENCH_CELERY_PREFIX", "bench-noop:"),
)
