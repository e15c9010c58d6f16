"""asyncpg connection pools: the request paths' driver, chosen for throughput (see
docs/benchmarks.md).
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import asyncpg


def plain_dsn(url: str) -> str:
    """`postgresql+psycopg://...` (SQLAlchemy style) → `postgresql://...` (libpq style)."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme == "postgres":
        scheme = "postgresql"
    return urlunsplit((scheme, parts.netloc, parts.path, parts.query, parts.fragment))


def sqlalchemy_url(url: str) -> str:
    """The same database as a SQLAlchemy URL on the psycopg 3 driver."""
    parts = urlsplit(plain_dsn(url))
    return urlunsplit(("postgresql+psycopg", parts.netloc, parts.path, parts.query, parts.fragment))


async def create_pool(
    url: str, *, min_size: int, max_size: int, application_name: str
) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        plain_dsn(url),
        min_size=min_size,
        max_size=max_size,
        # Timestamps are rendered in UTC whatever the server's default zone is.
        server_settings={"application_name": application_name, "timezone": "UTC"},
        command_timeout=30,
    )
    assert pool is not None
    return pool
