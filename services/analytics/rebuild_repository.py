"""The SQL of the rebuild command: the rollups recomputed from the chat tables (the one part of
analytics that reads another service's schema, by design), compared with the live ones, and
written in their place.

The recomputation follows the events' meaning exactly (rollups.py), from what the chat tables
hold now:

- a message counts in its 15-minute bucket of `created_at`; an agent message is attributed to
  its AI job's agent as the worker stored it (`ai_usage.agent_id`, else the job's), and an agent
  message posted by hand (no job) to the agent it was posted for (`messages.agent_id`, else,
  for messages older than that column, the conversation's agent);
- a completed job counts with its processing time in whole microseconds (`round(seconds *
  1e6)`), under its reply's agent; a failed job under the job's agent;
- a conversation counts on its creation's bucket and for its current agent.

Each expected table is built as a temporary table `expected_<name>` with the live table's
columns, so comparing and replacing are plain joins and inserts.
"""

from __future__ import annotations

from typing import Any

import psycopg

from services.analytics.rollups import TABLES, Table

S = "analytics"
Conn = psycopg.Connection[Any]
# The origin of the 15-minute buckets (any instant on a quarter hour would do).
_BUCKET = "date_bin('15 minutes', {column}, TIMESTAMPTZ '2000-01-01 00:00:00+00')"

_EXPECTED: tuple[tuple[str, str], ...] = (
    (
        "conversations",
        "SELECT id AS conversation_id, user_id, agent_id, created_at FROM chat.conversations",
    ),
    (
        "conversation_buckets",
        f"""
        SELECT m.conversation_id, {_BUCKET.format(column="m.created_at")} AS bucket,
               CASE WHEN m.sender <> 'agent' THEN 0
                    WHEN m.ai_job_id IS NOT NULL THEN COALESCE(u.agent_id, j.agent_id, 0)
                    ELSE COALESCE(m.agent_id, c.agent_id, 0) END AS agent_id,
               count(*)::int AS messages,
               (count(*) FILTER (WHERE m.sender = 'agent'))::int AS agent_messages
        FROM chat.messages m
        JOIN chat.conversations c ON c.id = m.conversation_id
        LEFT JOIN chat.ai_usage u ON u.job_id = m.ai_job_id
        LEFT JOIN chat.ai_jobs j ON j.id = m.ai_job_id
        GROUP BY 1, 2, 3
        """,
    ),
    (
        "conversation_agents",
        """
        SELECT j.conversation_id,
               CASE WHEN j.status = 'completed' THEN COALESCE(u.agent_id, j.agent_id, 0)
                    ELSE COALESCE(j.agent_id, 0) END AS agent_id,
               (count(*) FILTER (WHERE j.status = 'completed'))::int AS replies_completed,
               (count(*) FILTER (WHERE j.status = 'failed'))::int AS replies_failed,
               COALESCE(sum(round(j.processing_time * 1000000)::bigint)
                        FILTER (WHERE j.status = 'completed'), 0)::bigint AS reply_time_us
        FROM chat.ai_jobs j
        LEFT JOIN chat.ai_usage u ON u.job_id = j.id
        WHERE j.status IN ('completed', 'failed')
        GROUP BY 1, 2
        """,
    ),
    (
        "user_activity",
        f"""
        SELECT user_id, bucket, sum(conversations)::int AS conversations,
               sum(messages)::int AS messages, sum(agent_messages)::int AS agent_messages
        FROM (
            SELECT user_id, {_BUCKET.format(column="created_at")} AS bucket,
                   1 AS conversations, 0 AS messages, 0 AS agent_messages
            FROM expected_conversations
            UNION ALL
            SELECT c.user_id, b.bucket, 0, b.messages, b.agent_messages
            FROM expected_conversation_buckets b
            JOIN expected_conversations c USING (conversation_id)
        ) x
        GROUP BY 1, 2
        """,
    ),
    (
        "user_agent_activity",
        """
        SELECT c.user_id, b.bucket, b.agent_id, sum(b.agent_messages)::int AS messages
        FROM expected_conversation_buckets b
            JOIN expected_conversations c USING (conversation_id)
        WHERE b.agent_id <> 0 AND b.agent_messages > 0
        GROUP BY 1, 2, 3
        """,
    ),
    (
        "user_totals",
        """
        SELECT user_id, sum(conversations)::int AS conversations, sum(messages)::int AS messages,
               sum(agent_messages)::int AS agent_messages,
               sum(replies_completed)::int AS replies_completed,
               sum(replies_failed)::int AS replies_failed,
               sum(reply_time_us)::bigint AS reply_time_us
        FROM (
            SELECT user_id, 1 AS conversations, 0 AS messages, 0 AS agent_messages,
                   0 AS replies_completed, 0 AS replies_failed, 0::bigint AS reply_time_us
            FROM expected_conversations
            UNION ALL
            SELECT c.user_id, 0, b.messages, b.agent_messages, 0, 0, 0
            FROM expected_conversation_buckets b
            JOIN expected_conversations c USING (conversation_id)
            UNION ALL
            SELECT c.user_id, 0, 0, 0, a.replies_completed, a.replies_failed, a.reply_time_us
            FROM expected_conversation_agents a
            JOIN expected_conversations c USING (conversation_id)
        ) x
        GROUP BY 1
        """,
    ),
    (
        "user_agent_totals",
        """
        SELECT user_id, agent_id, sum(messages)::int AS messages
        FROM expected_user_agent_activity GROUP BY 1, 2
        """,
    ),
    (
        "agent_totals",
        """
        SELECT agent_id, sum(conversations)::int AS conversations, sum(messages)::int AS messages,
               sum(replies_completed)::int AS replies_completed,
               sum(replies_failed)::int AS replies_failed,
               sum(reply_time_us)::bigint AS reply_time_us
        FROM (
            SELECT agent_id, 1 AS conversations, 0 AS messages, 0 AS replies_completed,
                   0 AS replies_failed, 0::bigint AS reply_time_us
            FROM expected_conversations WHERE agent_id IS NOT NULL
            UNION ALL
            SELECT agent_id, 0, agent_messages, 0, 0, 0
            FROM expected_conversation_buckets WHERE agent_id <> 0 AND agent_messages > 0
            UNION ALL
            SELECT agent_id, 0, 0, replies_completed, replies_failed, reply_time_us
            FROM expected_conversation_agents WHERE agent_id <> 0
        ) x
        GROUP BY 1
        """,
    ),
    (
        "totals",
        """
        SELECT 1::smallint AS id,
               (SELECT count(*) FROM expected_conversations)::bigint AS conversations,
               (SELECT COALESCE(sum(messages), 0) FROM expected_conversation_buckets)::bigint
                   AS messages,
               (SELECT COALESCE(sum(agent_messages), 0) FROM expected_conversation_buckets)::bigint
                   AS agent_messages,
               (SELECT count(DISTINCT user_id) FROM expected_conversations)::bigint
                   AS users_with_conversations,
               (SELECT COALESCE(sum(replies_completed), 0)
                FROM expected_conversation_agents)::bigint AS replies_completed,
               (SELECT COALESCE(sum(replies_failed), 0) FROM expected_conversation_agents)::bigint
                   AS replies_failed,
               (SELECT COALESCE(sum(reply_time_us), 0) FROM expected_conversation_agents)::bigint
                   AS reply_time_us
        """,
    ),
)

# The conversations' state compared and rebuilt (agent_set_at is bookkeeping, not a figure).
CONVERSATIONS = Table(
    "conversations",
    (("conversation_id", "int"),),
    (("user_id", "int"), ("agent_id", "int"), ("created_at", "timestamptz")),
)
COMPARED = (CONVERSATIONS, *TABLES)


def lock_out_aggregators(conn: Conn) -> None:
    """Waits for the batches being applied, then holds new ones back until commit (every batch
    starts by inserting into processed_events). Taken before the transaction's snapshot."""
    conn.execute(f"LOCK TABLE {S}.processed_events IN EXCLUSIVE MODE")


def compute_expected(conn: Conn) -> None:
    """The expected rollups as temporary tables (dropped at the end of the transaction)."""
    for name, query in _EXPECTED:
        conn.execute(f"CREATE TEMPORARY TABLE expected_{name} ON COMMIT DROP AS {query}")
        conn.execute(f"ANALYZE expected_{name}")


def differences(conn: Conn, table: Table, *, limit: int) -> tuple[int, list[tuple[Any, ...]]]:
    """How many keys differ, and up to `limit` of them: (key..., live values..., expected
    values...), NULLs where a side has no row. All-zero rows count as absent (a row whose
    counters went back to zero, the global row of an empty system)."""
    keys = ", ".join(table.key_names)
    live_values = ", ".join(f"l.{name}" for name in table.value_names)
    expected_values = ", ".join(f"e.{name}" for name in table.value_names)
    if table is CONVERSATIONS:
        live = f"SELECT * FROM {S}.conversations WHERE deleted_at IS NULL"
        expected = "SELECT * FROM expected_conversations"
    else:
        nonzero = " OR ".join(f"{name} <> 0" for name in table.value_names)
        live = f"SELECT * FROM {S}.{table.name} WHERE {nonzero}"
        expected = f"SELECT * FROM expected_{table.name} WHERE {nonzero}"
    query = f"""
        SELECT {keys}, {live_values}, {expected_values}, count(*) OVER () AS differing
        FROM ({live}) l FULL JOIN ({expected}) e USING ({keys})
        WHERE ROW({live_values}) IS DISTINCT FROM ROW({expected_values})
        ORDER BY {keys}
        LIMIT %s
    """
    rows = conn.execute(query, (limit,)).fetchall()
    total = int(rows[0][-1]) if rows else 0
    return total, [tuple(row[:-1]) for row in rows]


def replace_rollups(conn: Conn) -> None:
    """The live rollups become the expected ones. Tombstones of deleted conversations stay;
    the events already reflected in the chat tables (those in chat.outbox now) are marked as
    applied, so the aggregators skip them when they resume."""
    for table in reversed(TABLES):
        conn.execute(f"DELETE FROM {S}.{table.name}")
        columns = ", ".join((*table.key_names, *table.value_names))
        conn.execute(
            f"INSERT INTO {S}.{table.name} ({columns}) SELECT {columns} FROM expected_{table.name}"
        )
    conn.execute(f"DELETE FROM {S}.conversations WHERE deleted_at IS NULL")
    conn.execute(
        f"""
        INSERT INTO {S}.conversations (conversation_id, user_id, agent_id, created_at)
        SELECT conversation_id, user_id, agent_id, created_at FROM expected_conversations
        ON CONFLICT (conversation_id) DO NOTHING
        """
    )
    conn.execute(
        f"""
        INSERT INTO {S}.processed_events (event_id, occurred_at)
        SELECT event_id, occurred_at FROM chat.outbox
        ON CONFLICT (event_id) DO NOTHING
        """
    )


def vacuum_rollups(conn: Conn) -> None:
    """VACUUM (ANALYZE) every rollup table (outside a transaction)."""
    for name in ("conversations", *(table.name for table in TABLES)):
        conn.execute(f"VACUUM (ANALYZE) {S}.{name}")
