"""Every SQL statement of export and import."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import orjson
from asyncpg.cursor import CursorFactory

from shared.db.pool import Conn
from shared.events import event_trace_json, validate_data

Record = asyncpg.Record

# One row per message (and one, with NULL message columns, per conversation without any), in
# export order; read through a cursor, so only one batch of rows is in memory at a time.
_EXPORT_ROWS = """
    SELECT c.id AS c_id, c.title, c.agent_id, c.conversation_type, c.status AS c_status,
           c.is_archived, c.is_pinned, c.total_messages, c.unread_count, c.last_message_at,
           c.created_at AS c_created_at, c.updated_at AS c_updated_at,
           m.id AS m_id, m.content, m.content_type, m.sender, m.message_type,
           m.status AS m_status, m.tokens_used,
           m.processing_time::numeric::float8 AS processing_time,
           m.created_at AS m_created_at, m.updated_at AS m_updated_at,
           ARRAY(SELECT (a.id, a.file_name, a.file_type, a.file_size, a.sha256, a.created_at)
                 FROM chat.message_attachments a WHERE a.message_id = m.id ORDER BY a.id)
               AS attachments
    FROM chat.conversations c
    LEFT JOIN chat.messages m ON m.conversation_id = c.id
    WHERE c.user_id = $1 AND ($2::int IS NULL OR c.id = $2::int)
    ORDER BY c.id, m.id
"""


def export_rows(
    conn: Conn, *, user_id: int, conversation_id: int | None, prefetch: int
) -> CursorFactory:
    """The caller's conversations and messages in export order (use inside a transaction)."""
    return conn.cursor(_EXPORT_ROWS, user_id, conversation_id, prefetch=prefetch)


def archive_files(conn: Conn, *, user_id: int, conversation_id: int | None) -> CursorFactory:
    """The stored files of the caller's attachments, in export order (inside a transaction)."""
    return conn.cursor(
        """
        SELECT a.id, a.file_path, a.file_name, a.file_type
        FROM chat.message_attachments a
        JOIN chat.messages m ON m.id = a.message_id
        JOIN chat.conversations c ON c.id = m.conversation_id
        WHERE c.user_id = $1 AND ($2::int IS NULL OR c.id = $2::int) AND a.file_path IS NOT NULL
        ORDER BY c.id, m.id, a.id
        """,
        user_id,
        conversation_id,
        prefetch=100,
    )


async def existing_agents(conn: Conn, *, agent_ids: Sequence[int]) -> set[int]:
    rows = await conn.fetch("SELECT id FROM chat.agents WHERE id = ANY($1::int[])", agent_ids)
    return {int(row["id"]) for row in rows}


async def insert_conversation(conn: Conn, *, user_id: int, fields: dict[str, Any]) -> Record:
    """A conversation as it was exported: its own times and flags, counters set at the end."""
    row = await conn.fetchrow(
        """
        INSERT INTO chat.conversations
            (title, user_id, agent_id, conversation_type, status, is_archived, is_pinned,
             unread_count, last_message_at, created_at, updated_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
        RETURNING id, agent_id, title, created_at
        """,
        fields["title"],
        user_id,
        fields["agent_id"],
        fields["conversation_type"],
        fields["status"],
        fields["is_archived"],
        fields["is_pinned"],
        fields["unread_count"],
        fields["last_message_at"],
        fields["created_at"],
        fields["updated_at"],
    )
    assert row is not None
    return row


async def insert_messages(
    conn: Conn,
    *,
    conversation_id: int,
    agent_id: int | None,
    messages: Sequence[dict[str, Any]],
) -> list[Record]:
    """A batch of messages in one statement, in the order given (ids follow it). Agent messages
    are attributed to `agent_id` (the conversation's), as their events say."""
    rows = await conn.fetch(
        """
        INSERT INTO chat.messages
            (conversation_id, content, content_type, sender, message_type, status, tokens_used,
             processing_time, created_at, updated_at, agent_id)
        SELECT $1, m.content, m.content_type, m.sender, m.message_type, m.status, m.tokens_used,
               m.processing_time, m.created_at, m.updated_at,
               CASE WHEN m.sender = 'agent' THEN $11::integer END
        FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int[],
                    $8::real[], $9::timestamptz[], $10::timestamptz[])
             WITH ORDINALITY
             AS m(content, content_type, sender, message_type, status, tokens_used,
                  processing_time, created_at, updated_at, n)
        ORDER BY m.n
        RETURNING id, sender, created_at
        """,
        conversation_id,
        *(
            [message[name] for message in messages]
            for name in (
                "content",
                "content_type",
                "sender",
                "message_type",
                "status",
                "tokens_used",
                "processing_time",
                "created_at",
                "updated_at",
            )
        ),
        agent_id,
    )
    return sorted(rows, key=lambda row: row["id"])


async def set_message_count(
    conn: Conn, *, conversation_id: int, total: int, updated_at: datetime
) -> None:
    # updated_at again: adding the messages must not make the conversation look changed now.
    await conn.execute(
        "UPDATE chat.conversations SET total_messages = $2, updated_at = $3 WHERE id = $1",
        conversation_id,
        total,
        updated_at,
    )


async def add_events(
    conn: Conn, *, user_id: int, events: Sequence[tuple[str, dict[str, Any]]]
) -> None:
    """Many outbox events in one statement (shared/events.py), in the order given, with the
    current request's trace context."""
    if not events:
        return
    await conn.execute(
        """
        INSERT INTO chat.outbox (type, user_id, data, trace)
        SELECT e.type, $1, e.data::jsonb, $4::jsonb
        FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS e(type, data, n)
        ORDER BY e.n
        """,
        user_id,
        [event_type for event_type, _ in events],
        [orjson.dumps(validate_data(event_type, data)).decode() for event_type, data in events],
        event_trace_json(),
    )
