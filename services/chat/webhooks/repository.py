"""Every SQL statement of the webhook admin API (asyncpg, like services/chat/repository.py).
The delivery process's statements are in `queue.py`."""

from __future__ import annotations

from typing import Any

import asyncpg

from shared.db.pool import Conn

Record = asyncpg.Record

# The previous secret's expiry only while it still signs.
_ENDPOINT_COLUMNS = """
    id, url, description, event_types, is_active, created_by, created_at, updated_at,
    CASE WHEN previous_secret_expires_at > now() THEN previous_secret_expires_at END
        AS previous_secret_expires_at
"""
# event_id as text: asyncpg's own UUID type is not one orjson serialises.
_DELIVERY_COLUMNS = """
    id, endpoint_id AS webhook_id, event_id::text AS event_id, event_type, occurred_at, status,
    attempts, last_status_code, last_error, next_attempt_at, last_attempt_at, delivered_at,
    created_at, updated_at
"""

# --- endpoints -----------------------------------------------------------------------------------


async def insert_endpoint(
    conn: Conn,
    *,
    url: str,
    event_types: list[str],
    description: str,
    is_active: bool,
    secret: str,
    created_by: int,
) -> Record:
    row = await conn.fetchrow(
        f"""
        INSERT INTO chat.webhook_endpoints
            (url, event_types, description, is_active, secret, created_by)
        VALUES ($1, $2, $3, $4, $5, $6)
        RETURNING {_ENDPOINT_COLUMNS}, secret
        """,
        url,
        event_types,
        description,
        is_active,
        secret,
        created_by,
    )
    assert row is not None
    return row


async def list_endpoints(conn: Conn, *, limit: int, offset: int) -> tuple[list[Record], int]:
    rows = await conn.fetch(
        f"SELECT {_ENDPOINT_COLUMNS} FROM chat.webhook_endpoints ORDER BY id DESC "
        "LIMIT $1 OFFSET $2",
        limit,
        offset,
    )
    total = await conn.fetchval("SELECT count(*) FROM chat.webhook_endpoints")
    return list(rows), int(total)


async def get_endpoint(conn: Conn, *, endpoint_id: int) -> Record | None:
    return await conn.fetchrow(
        f"SELECT {_ENDPOINT_COLUMNS} FROM chat.webhook_endpoints WHERE id = $1", endpoint_id
    )


async def lock_endpoint(conn: Conn, *, endpoint_id: int) -> Record | None:
    """The endpoint, locked until the transaction ends (updates read-modify-write it)."""
    return await conn.fetchrow(
        "SELECT id, is_active FROM chat.webhook_endpoints WHERE id = $1 FOR UPDATE", endpoint_id
    )


async def update_endpoint(conn: Conn, *, endpoint_id: int, changes: dict[str, Any]) -> Record:
    names = sorted(changes)
    assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(names, start=2))
    row = await conn.fetchrow(
        f"""
        UPDATE chat.webhook_endpoints SET {assignments}, updated_at = now() WHERE id = $1
        RETURNING {_ENDPOINT_COLUMNS}
        """,
        endpoint_id,
        *(changes[name] for name in names),
    )
    assert row is not None  # locked by the caller
    return row


async def pause_deliveries(conn: Conn, *, endpoint_id: int) -> None:
    """An endpoint made inactive: its unfinished deliveries wait (no due time) rather than
    being skipped on every claim."""
    await conn.execute(
        """
        UPDATE chat.webhook_deliveries SET next_attempt_at = NULL, updated_at = now()
        WHERE endpoint_id = $1 AND status IN ('pending', 'failed') AND next_attempt_at IS NOT NULL
        """,
        endpoint_id,
    )


async def resume_deliveries(conn: Conn, *, endpoint_id: int) -> None:
    """An endpoint made active again: its paused deliveries are due now."""
    await conn.execute(
        """
        UPDATE chat.webhook_deliveries SET next_attempt_at = now(), updated_at = now()
        WHERE endpoint_id = $1 AND status IN ('pending', 'failed') AND next_attempt_at IS NULL
        """,
        endpoint_id,
    )


async def delete_endpoint(conn: Conn, *, endpoint_id: int) -> bool:
    """Deletes the endpoint with its deliveries and their attempts (foreign keys cascade)."""
    deleted = await conn.fetchval(
        "DELETE FROM chat.webhook_endpoints WHERE id = $1 RETURNING id", endpoint_id
    )
    return deleted is not None


async def rotate_secret(
    conn: Conn, *, endpoint_id: int, secret: str, previous_valid_seconds: int
) -> Record | None:
    return await conn.fetchrow(
        f"""
        UPDATE chat.webhook_endpoints
        SET previous_secret = CASE WHEN $3 > 0 THEN secret END,
            previous_secret_expires_at = CASE
                WHEN $3 > 0 THEN now() + make_interval(secs => $3) END,
            secret = $2,
            updated_at = now()
        WHERE id = $1
        RETURNING {_ENDPOINT_COLUMNS}, secret
        """,
        endpoint_id,
        secret,
        previous_valid_seconds,
    )


# --- deliveries ----------------------------------------------------------------------------------


async def list_deliveries(
    conn: Conn,
    *,
    endpoint_id: int,
    status: str | None,
    event_type: str | None,
    limit: int,
    offset: int,
) -> tuple[list[Record], int]:
    """One page of an endpoint's delivery log, newest first, and the total under the filters."""
    where = """
        endpoint_id = $1 AND ($2::text IS NULL OR status = $2)
        AND ($3::text IS NULL OR event_type = $3)
    """
    rows = await conn.fetch(
        f"""
        SELECT {_DELIVERY_COLUMNS} FROM chat.webhook_deliveries
        WHERE {where} ORDER BY id DESC LIMIT $4 OFFSET $5
        """,
        endpoint_id,
        status,
        event_type,
        limit,
        offset,
    )
    total = await conn.fetchval(
        f"SELECT count(*) FROM chat.webhook_deliveries WHERE {where}",
        endpoint_id,
        status,
        event_type,
    )
    return list(rows), int(total)


async def get_delivery(conn: Conn, *, endpoint_id: int, delivery_id: int) -> Record | None:
    return await conn.fetchrow(
        f"""
        SELECT {_DELIVERY_COLUMNS}, body FROM chat.webhook_deliveries
        WHERE id = $1 AND endpoint_id = $2
        """,
        delivery_id,
        endpoint_id,
    )


async def list_attempts(conn: Conn, *, delivery_id: int) -> list[Record]:
    rows = await conn.fetch(
        """
        SELECT attempt, outcome, status_code, error, response_excerpt, duration_seconds,
               attempted_at
        FROM chat.webhook_attempts WHERE delivery_id = $1 ORDER BY id
        """,
        delivery_id,
    )
    return list(rows)


async def retry_delivery(conn: Conn, *, endpoint_id: int, delivery_id: int) -> Record | None:
    """A dead or failed delivery made due now (paused instead when the endpoint is inactive):
    one more attempt, after which a failure makes it dead again."""
    return await conn.fetchrow(
        f"""
        UPDATE chat.webhook_deliveries
        SET status = 'pending',
            next_attempt_at = CASE WHEN (
                SELECT is_active FROM chat.webhook_endpoints WHERE id = $2) THEN now() END,
            updated_at = now()
        WHERE id = $1 AND endpoint_id = $2 AND status IN ('dead', 'failed')
        RETURNING {_DELIVERY_COLUMNS}
        """,
        delivery_id,
        endpoint_id,
    )
