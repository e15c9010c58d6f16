"""asyncpg connection pools: the request paths' driver, chosen for throughput (see
docs/benchmarks.md).
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# What repositories take: a connection of their own or one borrowed from a pool.
Conn = asyncpg.Connection | PoolConnectionProxy


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


async def _keep_session(_: asyncpg.Connection) -> None:
    """Pool release without asyncpg's default reset round trip (`RESET ALL; UNLISTEN *; ...`).

    The services never change session state (no SET, LISTEN, session-level advisory locks or
    cursors outside transactions), so there is nothing to reset; asyncpg still rolls back a
    transaction left open before calling this.
    """


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
        reset=_keep_session,
    )
    assert pool is not None
    return pool
