"""Fixtures of the analytics tests, on top of the session harness (tests/conftest.py)."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator

import httpx
import psycopg
import pytest

from tests.analytics.support import create_agent
from tests.harness import Stack, User


@pytest.fixture
def db(stack: Stack) -> Iterator[psycopg.Connection]:
    """A psycopg connection (autocommit) on the stack's database, for checks via SQL."""
    dsn = re.sub(r"^postgresql\+\w+://", "postgresql://", stack.database_url)
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def agents(http: httpx.Client, admin: User) -> list[int | None]:
    """Two new agents and the default one (None: the conversation has no agent of its own)."""
    suffix = secrets.token_hex(3)
    return [
        create_agent(http, admin, f"Analyst {suffix}"),
        create_agent(http, admin, f"Helper {suffix}"),
        None,
    ]
