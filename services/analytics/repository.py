"""Every SQL statement of the analytics read API (asyncpg): small indexed reads of the rollups,
never of the chat tables. A dashboard reads one user's totals row, its per-agent totals, and
its 15-minute buckets within the two periods shown, whatever the number of messages stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime

from asyncpg import Record

from shared.db.pool import Conn

S = "analytics"


async def user_totals(conn: Conn, *, user_id: int) -> Record | None:
    return await conn.fetchrow(
        f"""
        SELECT conversations, messages, agent_messages, replies_completed, replies_failed,
               reply_time_us
        FROM {S}.user_totals WHERE user_id = $1
        """,
        user_id,
    )


async def most_active_agent(conn: Conn, *, user_id: int) -> Record | None:
    """The agent with the most messages in the user's conversations (lowest id on a tie)."""
    return await conn.fetchrow(
        f"""
        SELECT agent_id, messages FROM {S}.user_agent_totals
        WHERE user_id = $1 AND agent_id <> 0 AND messages > 0
        ORDER BY messages DESC, agent_id
        LIMIT 1
        """,
        user_id,
    )


async def daily_activity(
    conn: Conn,
    *,
    user_id: int,
    days: Sequence[date],
    starts: Sequence[datetime],
    ends: Sequence[datetime],
) -> list[Record]:
    """Per local day (given as its UTC start and end): conversations, messages, agent messages
    created that day, zeros included."""
    return await conn.fetch(
        f"""
        SELECT d.day,
               COALESCE(sum(a.conversations), 0)::bigint AS conversations,
               COALESCE(sum(a.messages), 0)::bigint AS messages,
               COALESCE(sum(a.agent_messages), 0)::bigint AS agent_messages
        FROM unnest($2::date[], $3::timestamptz[], $4::timestamptz[]) AS d(day, lo, hi)
        LEFT JOIN {S}.user_activity a
               ON a.user_id = $1 AND a.bucket >= d.lo AND a.bucket < d.hi
        GROUP BY d.day
        ORDER BY d.day
        """,
        user_id,
        list(days),
        list(starts),
        list(ends),
    )


async def agents_by_period(
    conn: Conn, *, user_id: int, starts: Sequence[datetime], ends: Sequence[datetime]
) -> list[Record]:
    """Per period (its index in the arguments) and agent: the agent's messages in the user's
    conversations within the period."""
    return await conn.fetch(
        f"""
        SELECT p.period, a.agent_id, sum(a.messages)::bigint AS messages
        FROM unnest($2::timestamptz[], $3::timestamptz[]) WITH ORDINALITY AS p(lo, hi, period)
        JOIN {S}.user_agent_activity a
          ON a.user_id = $1 AND a.bucket >= p.lo AND a.bucket < p.hi
        GROUP BY p.period, a.agent_id
        HAVING sum(a.messages) > 0
        """,
        user_id,
        list(starts),
        list(ends),
    )


async def totals(conn: Conn) -> Record:
    row = await conn.fetchrow(
        f"""
        SELECT conversations, messages, agent_messages, users_with_conversations,
               replies_completed, replies_failed, reply_time_us
        FROM {S}.totals WHERE id = 1
        """
    )
    assert row is not None  # created by the migration
    return row


async def top_agents(conn: Conn, *, limit: int) -> list[Record]:
    """Agents with a finished AI job first (those have a success rate), then by conversations,
    success rate and id."""
    return await conn.fetch(
        f"""
        SELECT agent_id, conversations, messages, replies_completed, replies_failed,
               reply_time_us
        FROM {S}.agent_totals
        WHERE agent_id <> 0
          AND (conversations > 0 OR messages > 0 OR replies_completed > 0 OR replies_failed > 0)
        ORDER BY replies_completed + replies_failed = 0,
                 conversations DESC,
                 replies_completed::numeric / NULLIF(replies_completed + replies_failed, 0)
                     DESC NULLS LAST,
                 agent_id
        LIMIT $1
        """,
        limit,
    )
