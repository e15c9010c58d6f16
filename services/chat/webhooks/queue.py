"""The delivery queue in Postgres (`chat.webhook_deliveries`): every SQL statement of the
delivery process. Synchronous psycopg, like the relay: the process runs threads, not an event
loop.

A delivery is due when its status is `pending` or `failed`, its `next_attempt_at` has passed and
its endpoint is active. A sender claims one with `FOR UPDATE SKIP LOCKED`, so any number of
senders in any number of processes share the queue without taking the same row, and the claim
itself is the lease: it counts the attempt and moves `next_attempt_at` past the longest attempt,
so a sender that dies mid-attempt leaves the delivery due again once the lease ends. The outcome
is recorded only by the claim that made it (`attempts` still equal to the claimed number).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg

Conn = psycopg.Connection[Any]


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: int
    event_types: frozenset[str]
    created_at: datetime

    def wants(self, event_type: str, occurred_at: datetime) -> bool:
        """Events of its types that happened since it was registered (an event the stream
        hands over again after a Redis data loss is not news to a newer endpoint)."""
        return occurred_at >= self.created_at and (
            "*" in self.event_types or event_type in self.event_types
        )


@dataclass(frozen=True, slots=True)
class NewDelivery:
    endpoint_id: int
    event_id: UUID
    event_type: str
    occurred_at: datetime
    body: str


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery a sender holds for one attempt, with what it needs to send it."""

    id: int
    endpoint_id: int
    event_id: UUID
    event_type: str
    occurred_at: datetime
    body: str
    attempt: int
    url: str
    secrets: tuple[str, ...]


def active_endpoints(conn: Conn) -> list[Endpoint]:
    rows = conn.execute(
        "SELECT id, event_types, created_at FROM chat.webhook_endpoints WHERE is_active"
    ).fetchall()
    return [Endpoint(row[0], frozenset(row[1]), row[2]) for row in rows]


def enqueue(conn: Conn, deliveries: Sequence[NewDelivery]) -> int:
    """Inserts the deliveries not there yet (one per endpoint and event); returns how many."""
    if not deliveries:
        return 0
    cursor = conn.execute(
        """
        INSERT INTO chat.webhook_deliveries (endpoint_id, event_id, event_type, occurred_at, body)
        SELECT * FROM unnest(%s::bigint[], %s::uuid[], %s::text[], %s::timestamptz[], %s::text[])
        ON CONFLICT (endpoint_id, event_id) DO NOTHING
        """,
        (
            [d.endpoint_id for d in deliveries],
            [d.event_id for d in deliveries],
            [d.event_type for d in deliveries],
            [d.occurred_at for d in deliveries],
            [d.body for d in deliveries],
        ),
    )
    return max(cursor.rowcount, 0)


def claim_due(conn: Conn, *, lease_seconds: float) -> Claimed | None:
    """The due delivery that has waited longest, leased to the caller; None when none is due."""
    row = conn.execute(
        """
        UPDATE chat.webhook_deliveries d
        SET attempts = d.attempts + 1,
            next_attempt_at = now() + make_interval(secs => %s::float8),
            last_attempt_at = now(),
            updated_at = now()
        FROM chat.webhook_endpoints e
        WHERE e.id = d.endpoint_id
          AND d.id = (
            SELECT due.id FROM chat.webhook_deliveries due
            JOIN chat.webhook_endpoints live ON live.id = due.endpoint_id AND live.is_active
            WHERE due.status IN ('pending', 'failed') AND due.next_attempt_at <= now()
            ORDER BY due.next_attempt_at
            LIMIT 1
            FOR UPDATE OF due SKIP LOCKED
          )
        RETURNING d.id, d.endpoint_id, d.event_id, d.event_type, d.occurred_at, d.body,
                  d.attempts, e.url, e.secret,
                  CASE WHEN e.previous_secret_expires_at > now() THEN e.previous_secret END
        """,
        (lease_seconds,),
    ).fetchone()
    if row is None:
        return None
    secrets = (row[8],) if row[9] is None else (row[8], row[9])
    return Claimed(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], secrets)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt made of a delivery."""

    status: str  # delivered | failed | dead
    status_code: int | None
    error: str | None
    response_excerpt: str | None
    duration_seconds: float
    # For `failed`: when to try again.
    retry_in_seconds: float | None = None


def record(conn: Conn, claimed: Claimed, outcome: Outcome) -> bool:
    """Stores the attempt and the delivery's new state, in one transaction; False (nothing
    stored) when the lease was lost and another claim owns the delivery now."""
    with conn.transaction():
        updated = conn.execute(
            """
            UPDATE chat.webhook_deliveries d
            SET status = %(status)s::text,
                -- A failed delivery of an endpoint deactivated meanwhile waits, paused (NULL).
                next_attempt_at = CASE WHEN %(status)s::text = 'failed' AND EXISTS (
                        SELECT 1 FROM chat.webhook_endpoints e
                        WHERE e.id = d.endpoint_id AND e.is_active)
                    THEN now() + make_interval(secs => %(retry_in)s::float8) END,
                last_status_code = %(status_code)s::int,
                last_error = %(error)s::text,
                delivered_at = CASE WHEN %(status)s::text = 'delivered' THEN now() END,
                updated_at = now()
            WHERE d.id = %(id)s::bigint AND d.attempts = %(attempt)s::int
            RETURNING d.id
            """,
            {
                "status": outcome.status,
                "retry_in": outcome.retry_in_seconds or 0.0,
                "status_code": outcome.status_code,
                "error": outcome.error,
                "id": claimed.id,
                "attempt": claimed.attempt,
            },
        ).fetchone()
        if updated is None:
            return False
        conn.execute(
            """
            INSERT INTO chat.webhook_attempts
                (delivery_id, attempt, outcome, status_code, error, response_excerpt,
                 duration_seconds)
            VALUES (%s, %s, %s, %s, %s, %s, %s)
            """,
            (
                claimed.id,
                claimed.attempt,
                outcome.status,
                outcome.status_code,
                outcome.error,
                outcome.response_excerpt,
                outcome.duration_seconds,
            ),
        )
    return True


def backlog(conn: Conn) -> tuple[int, float]:
    """Due deliveries of active endpoints not being sent yet, and how late the oldest is."""
    row = conn.execute(
        """
        SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(d.next_attempt_at)), 0)
        FROM chat.webhook_deliveries d
        JOIN chat.webhook_endpoints e ON e.id = d.endpoint_id AND e.is_active
        WHERE d.status IN ('pending', 'failed') AND d.next_attempt_at <= now()
        """
    ).fetchone()
    return (int(row[0]), float(row[1])) if row else (0, 0.0)


def delete_finished(conn: Conn, *, older_than_days: int, limit: int = 5000) -> int:
    """Deletes up to `limit` delivered or dead deliveries (and their attempts) past retention."""
    cursor = conn.execute(
        """
        DELETE FROM chat.webhook_deliveries WHERE id IN (
            SELECT id FROM chat.webhook_deliveries
            WHERE status IN ('delivered', 'dead')
              AND updated_at < now() - make_interval(days => %s::int)
            LIMIT %s
        )
        """,
        (older_than_days, limit),
    )
    return max(cursor.rowcount, 0)
