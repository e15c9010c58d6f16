"""Runs one service's ASGI app under uvicorn, uvloop and httptools (`python -m services.X`).

One process by default. `<SERVICE>_WORKERS` (or uvicorn's `WEB_CONCURRENCY`) above 1 runs that
many uvicorn worker processes on the one port, each importing the app itself, with Prometheus's
multiprocess mode on (shared/metrics.py): in `PROMETHEUS_MULTIPROC_DIR` when set (emptied at
start: one directory per server, never shared by two), else in a temporary directory of its own.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import os
import shutil
import tempfile
from pathlib import Path

import structlog
import uvicorn
from uvicorn.importer import import_from_string

from shared.logs import configure_logging
from shared.settings import ServiceSettings

# Read from the environment before prometheus_client is imported anywhere (the workers import
# it with the app); the name is prometheus_client's.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

log = structlog.get_logger(component="server")


def worker_count(settings: ServiceSettings) -> int:
    """`<SERVICE>_WORKERS`, else `WEB_CONCURRENCY`, else 1."""
    if settings.workers is not None:
        return settings.workers
    value = os.environ.get("WEB_CONCURRENCY", "").strip()
    return max(1, int(value)) if value else 1


def prepare_multiprocess_dir(service: str, *, workers: int) -> Path | None:
    """The directory of Prometheus's multiprocess files, emptied; created (and removed at exit)
    when several workers run and none is named. None: single-process metrics."""
    named = os.environ.get(MULTIPROC_ENV)
    if named:
        directory = Path(named)
        directory.mkdir(parents=True, exist_ok=True)
        # Files of an earlier run would be added to this one's counters.
        for stale in directory.glob("*.db"):
            stale.unlink(missing_ok=True)
        return directory
    if workers <= 1:
        return None
    directory = Path(tempfile.mkdtemp(prefix=f"{service}-prometheus-"))
    os.environ[MULTIPROC_ENV] = str(directory)  # inherited by the workers
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return directory


def serve(app_path: str, service: str, settings: ServiceSettings) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m services.{service}")
    parser.add_argument("--host", default=settings.host)
    parser.add_argument("--port", type=int, default=settings.port)
    args = parser.parse_args()
    configure_logging(service, settings.log_level)
    workers = worker_count(settings)
    metrics_dir = prepare_multiprocess_dir(service, workers=workers)
    options = dict(
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        # Longer than the gateway's pooled client keeps idle connections, so the server never
        # closes one the client is about to reuse.
        timeout_keep_alive=75,
        timeout_graceful_shutdown=20,
        proxy_headers=False,
    )
    if workers > 1:
        # Each worker imports the app (and opens its own database pool) in its own process.
        log.info("server_workers", workers=workers, metrics_dir=str(metrics_dir))
        uvicorn.run(app_path, workers=workers, **options)
        return
    app = import_from_string(app_path)
    # Everything imported so far lives as long as the process: moving it out of the collector's
    # reach, and collecting less often, takes GC pauses off the request path (p99).
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 50)
    uvicorn.run(app, **options)
