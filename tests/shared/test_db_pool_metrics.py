"""Database pool saturation gauges (shared/db/pool_metrics.py): they follow connections taken
and given back, on asyncpg pools (the HTTP services) and SQLAlchemy pools (the AI worker), and
every process of the stack exports its pool's."""

from __future__ import annotations

import secrets

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import create_engine, text

from shared.db.pool import create_pool, sqlalchemy_url
from shared.db.pool_metrics import observe_asyncpg_pool, watch_sqlalchemy_pool
from tests.harness import Stack


def gauge(pool: str, state: str) -> float | None:
    return REGISTRY.get_sample_value("db_pool_connections", {"pool": pool, "state": state})


async def test_an_asyncpg_pools_gauges_count_connections_in_use(stack: Stack) -> None:
    name = f"test-{secrets.token_hex(3)}"
    pool = await create_pool(stack.database_url, min_size=2, max_size=3, application_name=name)
    try:
        observe_asyncpg_pool(pool, name)
        assert (gauge(name, "in_use"), gauge(name, "idle")) == (0, 2)
        assert REGISTRY.get_sample_value("db_pool_max_connections", {"pool": name}) == 3
        async with pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
            observe_asyncpg_pool(pool, name)
            assert (gauge(name, "in_use"), gauge(name, "idle")) == (1, 1)
        observe_asyncpg_pool(pool, name)
        assert gauge(name, "in_use") == 0
    finally:
        await pool.close()


def test_a_sqlalchemy_pools_gauges_follow_checkouts(stack: Stack) -> None:
    name = f"test-{secrets.token_hex(3)}"
    engine = create_engine(sqlalchemy_url(stack.database_url), pool_size=2, max_overflow=1)
    try:
        watch_sqlalchemy_pool(engine, name, max_connections=3)
        assert REGISTRY.get_sample_value("db_pool_max_connections", {"pool": name}) == 3
        with engine.connect() as first, engine.connect() as second:
            first.execute(text("SELECT 1"))
            second.execute(text("SELECT 1"))
            assert gauge(name, "in_use") == 2
        assert (gauge(name, "in_use"), gauge(name, "idle")) == (0, 2)
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("process", "pool"),
    [(name, name) for name in ("gateway", "chat", "analytics", "ai_worker")],
)
def test_every_process_with_a_database_pool_exports_it(
    stack: Stack, process: str, pool: str
) -> None:
    url = next(s.url for s in stack.services if s.name == process)
    text_ = httpx.get(f"{url}/metrics", timeout=10).text
    assert f'db_pool_max_connections{{pool="{pool}"}}' in text_
    for state in ("in_use", "idle"):
        assert f'db_pool_connections{{pool="{pool}",state="{state}"}}' in text_
