"""HTTP golden-signal metrics shared by every HTTP service, and the /metrics endpoint.

Multiprocess mode: when `PROMETHEUS_MULTIPROC_DIR` is set (shared/server.py sets one when a
service runs several uvicorn workers), every worker writes its samples to files there and
/metrics, whichever worker answers it, reports their sum (prometheus_client's
MultiProcessCollector): counters and histograms add up, the in-progress gauge adds up the live
workers. A worker that exits marks its live gauges dead; one killed (SIGKILL, OOM) is marked dead
by the next scrape, which finds its pid gone. Its counters stay counted: a counter never goes
back. Process metrics (`process_*`) are per process and left out in this mode.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess
from starlette.requests import Request
from starlette.responses import Response

from shared.db.pool_metrics import observe_asyncpg_pool

# Labels are the route template ("/chat/conversations/{conversation_id}"), never a concrete path,
# so the number of series is bounded by the number of routes.
HTTP_REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests answered, by route template, method and status code.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "Time from request start to the last response byte, by route template and method.",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
HTTP_IN_PROGRESS = Gauge(
    "http_requests_in_progress",
    "HTTP requests being served right now, by method.",
    ["method"],
    # In multiprocess mode: the sum over the workers alive (ignored otherwise).
    multiprocess_mode="livesum",
)

UNMATCHED_ROUTE = "<unmatched>"


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The files of live gauges, named by the pid that writes them (prometheus_client's naming).
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")


def multiprocess_dir() -> Path | None:
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user
        return True
    return True


def mark_dead_workers(directory: Path) -> list[int]:
    """Marks dead the workers whose live-gauge files remain but whose process is gone."""
    dead = set()
    for path in directory.glob("gauge_live*.db"):
        match = _LIVE_GAUGE_FILE.match(path.name)
        if match and not _pid_alive(int(match.group(1))):
            dead.add(int(match.group(1)))
    for pid in dead:
        with contextlib.suppress(FileNotFoundError):  # another worker's scrape was first
            prometheus_multiprocess.mark_process_dead(pid, str(directory))
    return sorted(dead)


def exposition() -> bytes:
    """This process's metrics, or in multiprocess mode those of every worker together."""
    directory = multiprocess_dir()
    if directory is None:
        return generate_latest(REGISTRY)
    mark_dead_workers(directory)
    registry = CollectorRegistry()
    prometheus_multiprocess.MultiProcessCollector(registry, path=str(directory))
    return generate_latest(registry)


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus text exposition (of every worker's metrics in multiprocess mode)."""
    pool = getattr(request.app.state, "pool", None)
    if pool is not None:
        # Gauges read at the scrape: this process's pool as it is now.
        observe_asyncpg_pool(pool, request.app.state.pool_name)
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)


if multiprocess_dir() is not None:
    # A worker leaving cleanly takes its live gauges with it.
    atexit.register(prometheus_multiprocess.mark_process_dead, os.getpid())
