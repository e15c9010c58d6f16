"""The Postgres and Redis servers a run uses: the configured ones, else throwaway ones.

`deploy/local/servers.py` (the local runner's helper) starts throwaway servers when nothing
listens at DATABASE_URL / REDIS_URL; when it is not there the configured URLs (or the usual ports
on 127.0.0.1) are used as they are.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def with_database(url: str, database: str) -> str:
    """`url` (any driver suffix) pointing at `database`, as a libpq URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme == "postgres":
        scheme = "postgresql"
    return urlunsplit((scheme, parts.netloc, "/" + database, parts.query, ""))


@dataclass
class Servers:
    postgres_url: str
    redis_url: str
    started: list[str] = field(default_factory=list)
    _stops: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def database_url(self, database: str) -> str:
        return with_database(self.postgres_url, database)

    def _admin(self) -> psycopg.Connection:
        return psycopg.connect(self.database_url("postgres"), autocommit=True, connect_timeout=5)

    def create_database(self, name: str) -> None:
        with self._admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def drop_database(self, name: str) -> None:
        with self._admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def stop(self) -> None:
        """Stops the throwaway servers this run started (none when it used running ones)."""
        while self._stops:
            stop = self._stops.pop()
            with contextlib.suppress(Exception):
                stop()


def connect_servers(workdir: Path) -> Servers:
    try:
        helper = importlib.import_module("deploy.local.servers")
    except ImportError:
        helper = None
    if helper is None or not hasattr(helper, "ensure_postgres"):
        return Servers(
            postgres_url=os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL,
            redis_url=os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL,
        )
    postgres = helper.ensure_postgres(workdir)
    servers = Servers(postgres_url=postgres.dsn("postgres"), redis_url="")
    servers._stops.append(postgres.stop)
    if postgres.embedded:
        servers.started.append("postgres")
    try:
        redis = helper.ensure_redis(workdir)
    except BaseException:
        servers.stop()
        raise
    servers.redis_url = redis.url
    servers._stops.append(redis.stop)
    if redis.embedded:
        servers.started.append("redis")
    return servers
