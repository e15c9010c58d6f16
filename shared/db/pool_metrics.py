"""Database pool saturation for every process: connections in use and idle, and the most the
pool may open, by pool (the service's name). A pool at its maximum with requests waiting is the
first thing an SRE looks at when latency climbs (docs/operations.md).

asyncpg pools (the HTTP services) offer no events: their figures are read at each scrape of this
process and every few seconds (`watch_asyncpg_pool`), which keeps them current in multiprocess
mode too, where another worker may answer the scrape. SQLAlchemy pools (the AI worker) update
the gauges on their own checkout and checkin events.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import asyncpg
from prometheus_client import Gauge

if TYPE_CHECKING:
    from sqlalchemy import Engine

DB_POOL_CONNECTIONS = Gauge(
    "db_pool_connections",
    "Database pool connections by pool and state (in_use, idle); in multiprocess mode the sum "
    "over the live workers.",
    ["pool", "state"],
    multiprocess_mode="livesum",
)
DB_POOL_MAX = Gauge(
    "db_pool_max_connections",
    "The most connections the pool may open (in multiprocess mode, summed over live workers).",
    ["pool"],
    multiprocess_mode="livesum",
)

REFRESH_SECONDS = 5.0


def observe_asyncpg_pool(pool: asyncpg.Pool, name: str) -> None:
    size, idle = pool.get_size(), pool.get_idle_size()
    DB_POOL_CONNECTIONS.labels(name, "in_use").set(size - idle)
    DB_POOL_CONNECTIONS.labels(name, "idle").set(idle)
    DB_POOL_MAX.labels(name).set(pool.get_max_size())


@contextlib.asynccontextmanager
async def watch_asyncpg_pool(pool: asyncpg.Pool, name: str) -> AsyncIterator[None]:
    """Keeps the pool's gauges current while the block runs."""

    async def refresh() -> None:
        while True:
            observe_asyncpg_pool(pool, name)
            await asyncio.sleep(REFRESH_SECONDS)  # a refresh period, not synchronisation

    task = asyncio.create_task(refresh(), name=f"db-pool-metrics-{name}")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def watch_sqlalchemy_pool(engine: Engine, name: str, *, max_connections: int) -> None:
    """Counts the engine's pool's connections from its events: opened and closed, checked out
    and in (the pool's own counters lag its checkin event, which fires before the return)."""
    # Imported here: the HTTP services use asyncpg and need not load SQLAlchemy for this.
    from sqlalchemy import event

    DB_POOL_MAX.labels(name).set(max_connections)
    lock = threading.Lock()
    counts = {"open": 0, "in_use": 0}

    def change(key: str, by: int) -> Callable[..., None]:
        def listener(*_: Any) -> None:
            with lock:
                counts[key] += by
                in_use, idle = counts["in_use"], counts["open"] - counts["in_use"]
            DB_POOL_CONNECTIONS.labels(name, "in_use").set(in_use)
            DB_POOL_CONNECTIONS.labels(name, "idle").set(idle)

        return listener

    pool = engine.pool
    event.listen(pool, "connect", change("open", 1))
    event.listen(pool, "close", change("open", -1))
    event.listen(pool, "detach", change("open", -1))
    event.listen(pool, "checkout", change("in_use", 1))
    event.listen(pool, "checkin", change("in_use", -1))
    change("open", 0)()
