"""Every SQL statement of the aggregator (psycopg, in the caller's transaction): the
processed-events filter, the conversations' rows, and set-based upserts of the rollup deltas.

Statements take whole arrays (unnest), so a batch of hundreds of events is a dozen round trips.
Rows are locked in one global order (processed ids, conversations, then the tables in
`rollups.TABLES` order, each by key), so concurrent aggregators wait for each other but never
deadlock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import cache
from typing import Any
from uuid import UUID

import psycopg

from services.analytics.rollups import (
    TOTALS,
    TOTALS_KEY,
    USER_TOTALS,
    ConversationState,
    Rollups,
    Table,
)

S = "analytics"
Conn = psycopg.Connection[Any]


def array(values: Iterable[Any]) -> str:
    """A Postgres array literal of ints, UUIDs, aware datetimes or None (cast in the SQL). One
    string per column is several times cheaper to build and send than the driver's per-element
    adaptation of a list, which was the aggregator's largest CPU cost."""
    return "{" + ",".join(_element(value) for value in values) + "}"


def _element(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, int | UUID):
        return str(value)
    if isinstance(value, datetime):
        return f'"{value.isoformat()}"'
    raise TypeError(f"no array element for {type(value).__name__}")


def record_events(conn: Conn, events: Sequence[tuple[str, datetime]]) -> set[str]:
    """Marks events as applied; returns the ones that were not already (applied before, or
    being applied by another aggregator right now: its row lock makes this wait for its
    commit, then skips them)."""
    if not events:
        return set()
    ordered = sorted(events)  # ids as text: cheap to compare
    rows = conn.execute(
        f"""
        INSERT INTO {S}.processed_events (event_id, occurred_at)
        SELECT * FROM unnest(%s::uuid[], %s::timestamptz[])
        ON CONFLICT (event_id) DO NOTHING
        RETURNING event_id::text
        """,
        ("{" + ",".join(event_id for event_id, _ in ordered) + "}", array(at for _, at in ordered)),
    ).fetchall()
    return {row[0] for row in rows}


def lock_conversations(conn: Conn, owners: dict[int, int]) -> dict[int, ConversationState]:
    """The conversations' rows, created empty when missing, locked until commit."""
    if not owners:
        return {}
    ids = sorted(owners)
    rows = conn.execute(
        f"""
        INSERT INTO {S}.conversations AS c (conversation_id, user_id)
        SELECT * FROM unnest(%s::int[], %s::int[])
        ON CONFLICT (conversation_id) DO UPDATE SET user_id = c.user_id
        RETURNING conversation_id, user_id, agent_id, agent_set_at, created_at, deleted_at
        """,
        (array(ids), array(owners[cid] for cid in ids)),
    ).fetchall()
    return {row[0]: ConversationState(*row) for row in rows}


def save_conversations(conn: Conn, states: Iterable[ConversationState]) -> None:
    changed = sorted(states, key=lambda s: s.conversation_id)
    if not changed:
        return
    conn.execute(
        f"""
        UPDATE {S}.conversations AS c
        SET agent_id = u.agent_id, agent_set_at = u.agent_set_at, created_at = u.created_at,
            deleted_at = u.deleted_at
        FROM unnest(%s::int[], %s::int[], %s::timestamptz[], %s::timestamptz[],
                    %s::timestamptz[]) AS u(conversation_id, agent_id, agent_set_at, created_at,
                                            deleted_at)
        WHERE c.conversation_id = u.conversation_id
        """,
        (
            array(s.conversation_id for s in changed),
            array(s.agent_id for s in changed),
            array(s.agent_set_at for s in changed),
            array(s.created_at for s in changed),
            array(s.deleted_at for s in changed),
        ),
    )


def take_conversation_rows(
    conn: Conn, conversation_ids: Sequence[int]
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Removes deleted conversations' own rollup rows and returns them (to subtract)."""
    ids = sorted(conversation_ids)
    buckets = conn.execute(
        f"""
        DELETE FROM {S}.conversation_buckets WHERE conversation_id = ANY(%s::int[])
        RETURNING conversation_id, bucket, agent_id, messages, agent_messages
        """,
        (array(ids),),
    ).fetchall()
    agents = conn.execute(
        f"""
        DELETE FROM {S}.conversation_agents WHERE conversation_id = ANY(%s::int[])
        RETURNING conversation_id, agent_id, replies_completed, replies_failed, reply_time_us
        """,
        (array(ids),),
    ).fetchall()
    return buckets, agents


@cache
def _upsert_sql(table: Table, returning: bool) -> str:
    # Names come from the Table constants of rollups.py, never from input.
    columns = [*table.keys, *table.values]
    arrays = ", ".join(f"%s::{sql_type}[]" for _, sql_type in columns)
    updates = ", ".join(f"{name} = t.{name} + EXCLUDED.{name}" for name in table.value_names)
    sql = (
        f"INSERT INTO {S}.{table.name} AS t ({', '.join(name for name, _ in columns)}) "
        f"SELECT * FROM unnest({arrays}) "
        f"ON CONFLICT ({', '.join(table.key_names)}) DO UPDATE SET {updates}"
    )
    if returning:
        sql += f" RETURNING {', '.join(f't.{name}' for name, _ in columns)}"
    return sql


def add_rows(
    conn: Conn,
    table: Table,
    changes: Sequence[tuple[tuple[Any, ...], Sequence[int]]],
    *,
    returning: bool = False,
) -> list[tuple[Any, ...]]:
    """Adds the deltas to the table's rows (inserting missing ones), in key order."""
    if not changes:
        return []
    width = len(table.keys)
    columns: list[list[Any]] = [[] for _ in range(width + len(table.values))]
    for key, values in changes:
        for index, part in enumerate(key):
            columns[index].append(part)
        for index, value in enumerate(values):
            columns[width + index].append(value)
    sql = _upsert_sql(table, returning)
    cursor = conn.execute(sql, [array(column) for column in columns])
    return cursor.fetchall() if returning else []


def apply_rollups(conn: Conn, rollups: Rollups, tables: Sequence[Table]) -> None:
    """Writes every table's deltas; the global row gets the change in users having at least
    one conversation, known only once the users' new totals are."""
    users_delta = 0
    for table in tables:
        if table is TOTALS:
            continue
        changes = rollups.changes(table)
        rows = add_rows(conn, table, changes, returning=table is USER_TOTALS)
        if table is USER_TOTALS:
            added = {key: values[0] for key, values in changes}
            for row in rows:
                now = row[1]
                before = now - added[(row[0],)]
                users_delta += int(now > 0) - int(before > 0)
    if users_delta:
        rollups.add(TOTALS, TOTALS_KEY, (0, 0, 0, users_delta, 0, 0, 0))
    add_rows(conn, TOTALS, rollups.changes(TOTALS))


def prune_processed(conn: Conn, *, older_than_seconds: int, limit: int) -> int:
    """Forgets applied event ids past the retention, a slice at a time (short transactions)."""
    cursor = conn.execute(
        f"""
        DELETE FROM {S}.processed_events
        WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM {S}.processed_events
            WHERE applied_at < now() - make_interval(secs => %s)
            LIMIT %s
        ))
        """,
        (older_than_seconds, limit),
    )
    return cursor.rowcount
