"""Fixtures of the chat tests, on top of the session harness (tests/conftest.py): two fresh
users per test, an async gateway client for concurrency, and a SQL connection."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import psycopg
import pytest

from tests.harness import HTTP_TIMEOUT, Stack, User


@pytest.fixture
def alice(new_user: Callable[..., User]) -> User:
    return new_user()


@pytest.fixture
def bob(new_user: Callable[..., User]) -> User:
    return new_user()


@pytest.fixture
async def ahttp(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """An async HTTP client on the gateway, with room for 100 requests in flight."""
    async with httpx.AsyncClient(
        base_url=stack.gateway_url,
        timeout=HTTP_TIMEOUT,
        trust_env=False,
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
    ) as client:
        yield client


@pytest.fixture
def db(stack: Stack) -> Iterator[psycopg.Connection]:
    """A psycopg connection (autocommit) on the stack's database, for setup and checks via SQL."""
    dsn = re.sub(r"^postgresql\+\w+://", "postgresql://", stack.database_url)
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn
