"""Every SQL statement of the analytics read API (asyncpg): small indexed reads of the rollups,
never of the chat tables. A dashboard is one statement reading one user's totals row, its
per-agent totals, and its 15-minute buckets within the two periods shown, whatever the number
of messages stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from asyncpg import Record

from shared.db.pool import Conn

S = "analytics"


async def dashboard(
    conn: Conn,
    *,
    user_id: int,
    day_starts: Sequence[datetime],
    end: datetime,
    period_starts: Sequence[datetime],
) -> Record:
    """One user's figures in one statement (so one snapshot): their totals, their most active
    agent (most messages, lowest id on a tie), and over [day_starts[0], end): per day (the
    1-based index of its start in `day_starts`) conversations, messages and agent messages, and
    per period (index in `period_starts`) and agent, that agent's messages. Days without
    activity are absent; every read is an index range of the user's rows within the range."""
    row = await conn.fetchrow(
        f"""
        WITH days AS (
            SELECT width_bucket(bucket, $2::timestamptz[]) AS i, sum(conversations) AS c,
                   sum(messages) AS m, sum(agent_messages) AS am
            FROM {S}.user_activity
            WHERE user_id = $1 AND bucket >= ($2::timestamptz[])[1] AND bucket < $3
            GROUP BY 1
        ), agents AS (
            SELECT width_bucket(bucket, $4::timestamptz[]) AS p, agent_id, sum(messages) AS m
            FROM {S}.user_agent_activity
            WHERE user_id = $1 AND bucket >= ($4::timestamptz[])[1] AND bucket < $3
            GROUP BY 1, 2
        ), top AS (
            SELECT agent_id, messages FROM {S}.user_agent_totals
            WHERE user_id = $1 AND agent_id <> 0 AND messages > 0
            ORDER BY messages DESC, agent_id
            LIMIT 1
        )
        SELECT t.conversations, t.messages, t.agent_messages, t.replies_completed,
               t.replies_failed, t.reply_time_us,
               (SELECT agent_id FROM top) AS top_agent_id,
               (SELECT messages FROM top) AS top_messages,
               ARRAY(SELECT i FROM days ORDER BY i) AS day_index,
               ARRAY(SELECT c FROM days ORDER BY i) AS day_conversations,
               ARRAY(SELECT m FROM days ORDER BY i) AS day_messages,
               ARRAY(SELECT am FROM days ORDER BY i) AS day_agent_messages,
               ARRAY(SELECT p FROM agents WHERE m > 0 ORDER BY p, agent_id) AS period_index,
               ARRAY(SELECT agent_id FROM agents WHERE m > 0 ORDER BY p, agent_id)
                   AS period_agent,
               ARRAY(SELECT m FROM agents WHERE m > 0 ORDER BY p, agent_id) AS period_messages
        FROM (SELECT 1) AS one
        LEFT JOIN {S}.user_totals t ON t.user_id = $1
        """,
        user_id,
        list(day_starts),
        end,
        list(period_starts),
    )
    assert row is not None  # the LEFT JOIN always yields one row
    return row


async def daily_activity(
    conn: Conn, *, user_id: int, day_starts: Sequence[datetime], end: datetime
) -> list[Record]:
    """Per day (1-based index of its start in `day_starts`) within [day_starts[0], end):
    conversations, messages and agent messages; days without activity are absent."""
    return await conn.fetch(
        f"""
        SELECT width_bucket(bucket, $2::timestamptz[]) AS i, sum(conversations) AS c,
               sum(messages) AS m, sum(agent_messages) AS am
        FROM {S}.user_activity
        WHERE user_id = $1 AND bucket >= ($2::timestamptz[])[1] AND bucket < $3
        GROUP BY 1
        """,
        user_id,
        list(day_starts),
        end,
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
