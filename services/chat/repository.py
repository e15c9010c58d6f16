"""Every SQL statement of the chat service. Functions take a connection and return plain records.

Ownership is part of each statement (`user_id = $n`): a row that is not the caller's is
indistinguishable from a missing one, so the service answers 404 for both.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import orjson

from services.chat.pagination import ConversationCursor, MessageCursor
from shared.db.pool import Conn
from shared.events import event_trace_json, validate_data

Record = asyncpg.Record

# The seed's `conversations.unread_count` column is never read or written: the API's
# unread_count is derived from the owner's read pointer (chat.conversation_reads) by
# _WITH_UNREAD_COUNT, so a reply does not have to bump a counter on a hot row.
_CONVERSATION_COLUMNS = """
    id, title, user_id, agent_id, conversation_type, status, is_archived, is_pinned,
    total_messages, last_message_at, created_at, updated_at
"""
# A conversation as the API answers it, from rows aliased `c` joined _WITH_UNREAD_COUNT.
_CONVERSATION_PUBLIC = """
    c.id, c.title, c.user_id, c.agent_id, c.conversation_type, c.status, c.is_archived,
    c.is_pinned, c.total_messages, u.unread_count, c.last_message_at, c.created_at, c.updated_at
"""
# unread_count: the conversation's agent messages after the read pointer (all of them without
# one). A range scan of the partial index ix_messages_agent_conversation_id_id per conversation,
# in the same statement as the conversations: no round trip per row.
_WITH_UNREAD_COUNT = """
    LEFT JOIN chat.conversation_reads r ON r.conversation_id = c.id
    CROSS JOIN LATERAL (
        SELECT count(*) AS unread_count FROM chat.messages m
        WHERE m.conversation_id = c.id AND m.sender = 'agent'
          AND m.id > COALESCE(r.last_read_message_id, 0)
    ) u
"""
_MESSAGE_COLUMNS = """
    id, conversation_id, content, content_type, sender, message_type, status, tokens_used,
    processing_time::numeric::float8 AS processing_time, created_at, updated_at
"""
# A message's attachments as (id, file_name, file_type, file_size, created_at) tuples, oldest
# first: one index probe per message, in the same round trip as the page.
MESSAGE_ATTACHMENTS = """
    ARRAY(SELECT (a.id, a.file_name, a.file_type, a.file_size, a.created_at)
          FROM chat.message_attachments a WHERE a.message_id = messages.id ORDER BY a.id)
"""
_AGENT_COLUMNS = """
    id, name, description, model, system_prompt, temperature, max_tokens,
    input_price_per_1k::float8 AS input_price_per_1k,
    output_price_per_1k::float8 AS output_price_per_1k,
    is_active, is_default, created_at, updated_at
"""

# --- conversations -------------------------------------------------------------------------------


async def list_conversations(
    conn: Conn,
    *,
    user_id: int,
    limit: int,
    offset: int,
    after: ConversationCursor | None,
    archived: bool | None,
) -> tuple[list[Record], int]:
    """One page in the order pinned first, newest first (`limit + 1` rows tell if more follow),
    and the total. The count rides along as an uncorrelated subquery: one round trip, not two.
    Unread counts are joined to the page once it is cut, so skipped rows cost nothing."""
    rows = await conn.fetch(
        f"""
        SELECT {_CONVERSATION_PUBLIC}, c.total
        FROM (
            SELECT {_CONVERSATION_COLUMNS},
                   (SELECT count(*) FROM chat.conversations
                    WHERE user_id = $1 AND ($2::bool IS NULL OR is_archived = $2)) AS total
            FROM chat.conversations
            WHERE user_id = $1
              AND ($2::bool IS NULL OR is_archived = $2)
              AND ($3::bool IS NULL OR (is_pinned, id) < ($3::bool, $4::int))
            ORDER BY is_pinned DESC, id DESC
            LIMIT $5 OFFSET $6
        ) c
        {_WITH_UNREAD_COUNT}
        ORDER BY c.is_pinned DESC, c.id DESC
        """,
        user_id,
        archived,
        after.is_pinned if after else None,
        after.id if after else None,
        limit + 1,
        offset,
    )
    if rows:
        return list(rows), int(rows[0]["total"])
    return [], await count_conversations(conn, user_id=user_id, archived=archived)


async def count_conversations(conn: Conn, *, user_id: int, archived: bool | None) -> int:
    value = await conn.fetchval(
        """
        SELECT count(*) FROM chat.conversations
        WHERE user_id = $1 AND ($2::bool IS NULL OR is_archived = $2)
        """,
        user_id,
        archived,
    )
    return int(value)


async def get_conversation(conn: Conn, *, user_id: int, conversation_id: int) -> Record | None:
    return await conn.fetchrow(
        f"""
        SELECT {_CONVERSATION_PUBLIC} FROM chat.conversations c {_WITH_UNREAD_COUNT}
        WHERE c.id = $1 AND c.user_id = $2
        """,
        conversation_id,
        user_id,
    )


async def owns_conversation(conn: Conn, *, user_id: int, conversation_id: int) -> bool:
    """Whether the conversation exists and is theirs (for routes that show only its parts)."""
    found = await conn.fetchval(
        "SELECT 1 FROM chat.conversations WHERE id = $1 AND user_id = $2",
        conversation_id,
        user_id,
    )
    return found is not None


async def insert_conversation(
    conn: Conn,
    *,
    user_id: int,
    title: str,
    agent_id: int | None,
    conversation_type: str,
) -> Record:
    row = await conn.fetchrow(
        f"""
        WITH c AS (
            INSERT INTO chat.conversations (title, user_id, agent_id, conversation_type)
            VALUES ($1, $2, $3, $4)
            RETURNING {_CONVERSATION_COLUMNS}
        )
        SELECT {_CONVERSATION_PUBLIC} FROM c {_WITH_UNREAD_COUNT}
        """,
        title,
        user_id,
        agent_id,
        conversation_type,
    )
    assert row is not None
    return row


async def update_conversation(
    conn: Conn, *, user_id: int, conversation_id: int, changes: dict[str, Any]
) -> Record | None:
    # Column names come from the validated update schema's field names, never from the client.
    allowed = {"title", "is_pinned", "is_archived", "status", "agent_id"}
    assert changes and set(changes) <= allowed
    names = sorted(changes)
    assignments = ", ".join(f"{name} = ${index}" for index, name in enumerate(names, start=3))
    return await conn.fetchrow(
        f"""
        WITH c AS (
            UPDATE chat.conversations SET {assignments}, updated_at = now()
            WHERE id = $1 AND user_id = $2
            RETURNING {_CONVERSATION_COLUMNS}
        )
        SELECT {_CONVERSATION_PUBLIC} FROM c {_WITH_UNREAD_COUNT}
        """,
        conversation_id,
        user_id,
        *(changes[name] for name in names),
    )


async def delete_conversation(conn: Conn, *, user_id: int, conversation_id: int) -> Record | None:
    """Deletes the conversation (its messages, attachments and sessions cascade with it);
    returns its id and agent, None when it is missing or not theirs."""
    return await conn.fetchrow(
        "DELETE FROM chat.conversations WHERE id = $1 AND user_id = $2 RETURNING id, agent_id",
        conversation_id,
        user_id,
    )


async def record_new_message(conn: Conn, *, user_id: int, conversation_id: int) -> Record | None:
    """Counts one more message and stamps its time; None when the conversation is missing or not
    theirs. The row lock this UPDATE takes serialises concurrent posts to one conversation, so the
    counter is exact, and `clock_timestamp()` is read after the lock is granted, so message times
    follow the order the posts commit in (and so their ids)."""
    return await conn.fetchrow(
        """
        UPDATE chat.conversations
        SET total_messages = total_messages + 1,
            last_message_at = clock_timestamp(),
            updated_at = clock_timestamp()
        WHERE id = $1 AND user_id = $2
        RETURNING id, agent_id, total_messages, last_message_at
        """,
        conversation_id,
        user_id,
    )


# --- read state and sessions ----------------------------------------------------------------------


async def read_target(
    conn: Conn, *, user_id: int, conversation_id: int, message_id: int | None
) -> Record | None:
    """The caller's conversation with its latest message's id and, when `message_id` is given,
    that message's id if it belongs to the conversation (else null); None when the conversation
    is missing or not theirs. The key-share lock keeps it from being deleted until commit, so
    the pointer written next always has its conversation."""
    return await conn.fetchrow(
        """
        SELECT c.id,
               (SELECT max(m.id) FROM chat.messages m WHERE m.conversation_id = c.id)
                   AS latest_message_id,
               (SELECT m.id FROM chat.messages m WHERE m.id = $3 AND m.conversation_id = c.id)
                   AS message_id
        FROM chat.conversations c
        WHERE c.id = $1 AND c.user_id = $2
        FOR KEY SHARE OF c
        """,
        conversation_id,
        user_id,
        message_id,
    )


async def advance_read_pointer(conn: Conn, *, conversation_id: int, message_id: int) -> bool:
    """Moves the read pointer forward to `message_id`; never back. True when it moved.
    One statement, so concurrent marks cannot move it backwards either."""
    moved = await conn.fetchval(
        """
        INSERT INTO chat.conversation_reads (conversation_id, last_read_message_id)
        VALUES ($1, $2)
        ON CONFLICT (conversation_id) DO UPDATE
            SET last_read_message_id = EXCLUDED.last_read_message_id, read_at = now()
            WHERE chat.conversation_reads.last_read_message_id
                  < EXCLUDED.last_read_message_id
        RETURNING 1
        """,
        conversation_id,
        message_id,
    )
    return moved is not None


async def read_state(conn: Conn, *, conversation_id: int) -> Record:
    """The conversation's read pointer (null before the first mark) and unread count."""
    row = await conn.fetchrow(
        f"""
        SELECT r.last_read_message_id, u.unread_count
        FROM chat.conversations c {_WITH_UNREAD_COUNT}
        WHERE c.id = $1
        """,
        conversation_id,
    )
    assert row is not None
    return row


async def record_session_activity(
    conn: Conn, *, conversation_id: int, at: datetime, idle_gap: timedelta
) -> None:
    """Counts a message at `at` into the conversation's sessions (the rule is the SQL function
    of migration 0006, shared with the AI worker). Call it in the message's transaction."""
    await conn.execute(
        "SELECT chat.record_session_activity($1, $2, $3)", conversation_id, at, idle_gap
    )


_SESSION_COLUMNS = """
    id, conversation_id, session_start, session_end, messages_count, duration_minutes, created_at
"""


async def list_sessions(
    conn: Conn, *, conversation_id: int, limit: int, offset: int
) -> tuple[list[Record], int]:
    """One page of the conversation's sessions, newest first, and their total."""
    rows = await conn.fetch(
        f"""
        SELECT {_SESSION_COLUMNS},
               (SELECT count(*) FROM chat.chat_session_history WHERE conversation_id = $1)
                   AS total
        FROM chat.chat_session_history
        WHERE conversation_id = $1
        ORDER BY session_start DESC, id DESC
        LIMIT $2 OFFSET $3
        """,
        conversation_id,
        limit,
        offset,
    )
    if rows:
        return list(rows), int(rows[0]["total"])
    total = await conn.fetchval(
        "SELECT count(*) FROM chat.chat_session_history WHERE conversation_id = $1",
        conversation_id,
    )
    return [], int(total)


# --- the outbox ----------------------------------------------------------------------------------


async def add_event(conn: Conn, event_type: str, *, user_id: int, data: dict[str, Any]) -> None:
    """Writes an event (shared/events.py) in the caller's transaction: it is published if and
    only if the change commits. It carries the current request's trace context (its `trace`)."""
    await conn.execute(
        "INSERT INTO chat.outbox (type, user_id, data, trace) VALUES ($1, $2, $3, $4)",
        event_type,
        user_id,
        orjson.dumps(validate_data(event_type, data)).decode(),
        event_trace_json(),
    )


# --- messages ------------------------------------------------------------------------------------


async def list_messages(
    conn: Conn,
    *,
    conversation_id: int,
    limit: int,
    offset: int,
    order: str,
    after: MessageCursor | None,
) -> tuple[list[Record], int]:
    """One page of a conversation's messages and their total, in one round trip."""
    comparison, direction = (">", "ASC") if order == "asc" else ("<", "DESC")
    rows = await conn.fetch(
        f"""
        SELECT {_MESSAGE_COLUMNS},
               {MESSAGE_ATTACHMENTS} AS attachments,
               (SELECT count(*) FROM chat.messages WHERE conversation_id = $1) AS total
        FROM chat.messages
        WHERE conversation_id = $1 AND ($2::int IS NULL OR id {comparison} $2)
        ORDER BY id {direction} LIMIT $3 OFFSET $4
        """,
        conversation_id,
        after.id if after else None,
        limit + 1,
        offset,
    )
    if rows:
        return list(rows), int(rows[0]["total"])
    return [], await count_messages(conn, conversation_id=conversation_id)


async def count_messages(conn: Conn, *, conversation_id: int) -> int:
    value = await conn.fetchval(
        "SELECT count(*) FROM chat.messages WHERE conversation_id = $1", conversation_id
    )
    return int(value)


async def insert_message(
    conn: Conn,
    *,
    conversation_id: int,
    content: str,
    sender: str,
    content_type: str,
    message_type: str,
    at: datetime,
    agent_id: int | None = None,
) -> Record:
    """`agent_id`: for an agent message posted by hand, the agent it is attributed to (the
    conversation's now, as its event says), kept so its deletion and analytics' rebuild name
    the same agent later."""
    row = await conn.fetchrow(
        f"""
        INSERT INTO chat.messages
            (conversation_id, content, sender, content_type, message_type, created_at, updated_at,
             agent_id)
        VALUES ($1, $2, $3, $4, $5, $6, $6, $7)
        RETURNING {_MESSAGE_COLUMNS}
        """,
        conversation_id,
        content,
        sender,
        content_type,
        message_type,
        at,
        agent_id,
    )
    assert row is not None
    return row


async def delete_message(
    conn: Conn, *, user_id: int, conversation_id: int, message_id: int
) -> Record | None:
    """Deletes a message of the caller's conversation (its attachments cascade, and their
    objects are queued for deletion by trigger) and keeps the conversation's counters exact;
    None when it is missing or not theirs."""
    counted = await conn.fetchrow(
        """
        UPDATE chat.conversations c
        SET total_messages = GREATEST(total_messages - 1, 0), updated_at = clock_timestamp()
        WHERE c.id = $1 AND c.user_id = $2
          AND EXISTS (SELECT 1 FROM chat.messages m WHERE m.id = $3 AND m.conversation_id = $1)
        RETURNING c.id, c.agent_id
        """,
        conversation_id,
        user_id,
        message_id,
    )
    if counted is None:
        return None
    # The agent a deleted agent message counted for, as analytics attributed it: its job's (as
    # the worker stored the usage), else the one it was posted for, else (posted before chat
    # migration 0010 kept that) the conversation's.
    gone = await conn.fetchrow(
        """
        DELETE FROM chat.messages m WHERE m.id = $1 AND m.conversation_id = $2
        RETURNING m.id, m.sender, m.created_at,
                  CASE WHEN m.sender <> 'agent' THEN NULL
                       WHEN m.ai_job_id IS NOT NULL THEN (
                           SELECT COALESCE(u.agent_id, j.agent_id) FROM chat.ai_jobs j
                           LEFT JOIN chat.ai_usage u ON u.job_id = j.id WHERE j.id = m.ai_job_id)
                       ELSE COALESCE(m.agent_id, $3::integer) END AS agent_id
        """,
        message_id,
        conversation_id,
        counted["agent_id"],
    )
    await conn.execute(
        """
        UPDATE chat.conversations
        SET last_message_at = (SELECT max(created_at) FROM chat.messages WHERE conversation_id = $1)
        WHERE id = $1
        """,
        conversation_id,
    )
    return gone


# --- search --------------------------------------------------------------------------------------

# Markers ts_headline puts around matches; the service turns them into <mark> tags.
HIGHLIGHT_START = "\x02"
HIGHLIGHT_STOP = "\x03"
# The content is HTML-escaped *before* ts_headline sees it: its parser takes `<...>` for markup
# and drops it, so escaping afterwards would lose text. Marker characters are removed from the
# content first, so only ts_headline's own become tags.
_HTML_ESCAPED_CONTENT = """
    replace(replace(replace(replace(replace(
        translate(page.content, chr(2) || chr(3), ''),
        '&', '&amp;'), '<', '&lt;'), '>', '&gt;'), '"', '&quot;'), '''', '&#x27;')
"""

_SEARCH_FILTER = """
    FROM chat.messages m
    JOIN chat.conversations c ON c.id = m.conversation_id
    WHERE c.user_id = $1
      AND m.search_vector @@ websearch_to_tsquery('english', $2)
      AND ($3::int IS NULL OR m.conversation_id = $3)
      AND ($4::text IS NULL OR m.sender = $4)
      AND ($5::timestamptz IS NULL OR m.created_at >= $5)
      AND ($6::timestamptz IS NULL OR m.created_at < $6)
"""


async def search_messages(
    conn: Conn,
    *,
    user_id: int,
    query: str,
    conversation_id: int | None,
    sender: str | None,
    date_from: datetime | None,
    date_to: datetime | None,
    limit: int,
    offset: int,
) -> tuple[list[Record], int]:
    """Ranked matches among the caller's own messages, with a highlighted snippet for each."""
    params: Sequence[Any] = (user_id, query, conversation_id, sender, date_from, date_to)
    rows = await conn.fetch(
        f"""
        WITH page AS (
            SELECT m.id, m.conversation_id, m.content, m.sender, m.created_at,
                   ts_rank_cd(m.search_vector, websearch_to_tsquery('english', $2)) AS rank
            {_SEARCH_FILTER}
            ORDER BY rank DESC, m.id DESC
            LIMIT $7 OFFSET $8
        )
        SELECT page.*,
               ts_headline('english', {_HTML_ESCAPED_CONTENT}, websearch_to_tsquery('english', $2),
                           'StartSel=' || chr(2) || ', StopSel=' || chr(3) ||
                           ', MaxWords=35, MinWords=12')
                   AS snippet
        FROM page
        ORDER BY page.rank DESC, page.id DESC
        """,
        *params,
        limit,
        offset,
    )
    total = await conn.fetchval(f"SELECT count(*) {_SEARCH_FILTER}", *params)
    return list(rows), int(total)


# --- agents --------------------------------------------------------------------------------------


async def list_agents(
    conn: Conn, *, include_inactive: bool, limit: int, offset: int
) -> tuple[list[Record], int]:
    rows = await conn.fetch(
        f"""
        SELECT {_AGENT_COLUMNS} FROM chat.agents
        WHERE ($1 OR is_active) ORDER BY id LIMIT $2 OFFSET $3
        """,
        include_inactive,
        limit,
        offset,
    )
    total = await conn.fetchval(
        "SELECT count(*) FROM chat.agents WHERE ($1 OR is_active)", include_inactive
    )
    return list(rows), int(total)


async def get_agent(conn: Conn, *, agent_id: int, include_inactive: bool) -> Record | None:
    return await conn.fetchrow(
        f"SELECT {_AGENT_COLUMNS} FROM chat.agents WHERE id = $1 AND ($2 OR is_active)",
        agent_id,
        include_inactive,
    )


async def insert_agent(conn: Conn, *, fields: dict[str, Any]) -> Record:
    names = sorted(fields)
    placeholders = ", ".join(f"${i}" for i in range(1, len(names) + 1))
    row = await conn.fetchrow(
        f"""
        INSERT INTO chat.agents ({", ".join(names)}) VALUES ({placeholders})
        RETURNING {_AGENT_COLUMNS}
        """,
        *(fields[name] for name in names),
    )
    assert row is not None
    return row


async def update_agent(conn: Conn, *, agent_id: int, changes: dict[str, Any]) -> Record | None:
    names = sorted(changes)
    assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(names, start=2))
    return await conn.fetchrow(
        f"""
        UPDATE chat.agents SET {assignments}, updated_at = now() WHERE id = $1
        RETURNING {_AGENT_COLUMNS}
        """,
        agent_id,
        *(changes[name] for name in names),
    )


async def deactivate_agent(conn: Conn, *, agent_id: int) -> bool:
    """Agents are retired, not erased: conversations and usage keep pointing at them."""
    retired = await conn.fetchval(
        """
        UPDATE chat.agents SET is_active = false, is_default = false, updated_at = now()
        WHERE id = $1 AND is_active RETURNING id
        """,
        agent_id,
    )
    return retired is not None


# --- idempotency ---------------------------------------------------------------------------------


async def claim_idempotency_key(
    conn: Conn, *, user_id: int, key: str, fingerprint: str, ttl_seconds: int
) -> bool:
    """True when this request owns the key. A concurrent holder makes the INSERT wait for its
    transaction; an expired entry is taken over."""
    claimed = await conn.fetchval(
        """
        INSERT INTO chat.idempotency_keys (user_id, key, request_fingerprint)
        VALUES ($1, $2, $3)
        ON CONFLICT (user_id, key) DO UPDATE
            SET request_fingerprint = EXCLUDED.request_fingerprint,
                response_status = NULL, response_body = NULL, created_at = now()
            WHERE chat.idempotency_keys.created_at < now() - make_interval(secs => $4)
        RETURNING 1
        """,
        user_id,
        key,
        fingerprint,
        ttl_seconds,
    )
    return claimed is not None


async def get_idempotency_key(conn: Conn, *, user_id: int, key: str) -> Record | None:
    return await conn.fetchrow(
        """
        SELECT request_fingerprint, response_status, response_body::text AS response_body
        FROM chat.idempotency_keys WHERE user_id = $1 AND key = $2
        """,
        user_id,
        key,
    )


async def store_idempotent_response(
    conn: Conn, *, user_id: int, key: str, status: int, body: bytes
) -> None:
    await conn.execute(
        """
        UPDATE chat.idempotency_keys SET response_status = $3, response_body = $4::text::jsonb
        WHERE user_id = $1 AND key = $2
        """,
        user_id,
        key,
        status,
        body.decode(),
    )


# --- AI jobs -------------------------------------------------------------------------------------

# Jobs are created by the intake functions of chat migration 0011 (services/chat/job_intake.py),
# which answer these columns too.
JOB_COLUMNS = """
    id, conversation_id, user_id, agent_id, status, model, prompt_message_id, reply_message_id,
    regenerates_message_id, attempts, error_code, error, input_tokens, output_tokens,
    cost::float8 AS cost, processing_time, created_at, started_at, finished_at, batch_id
"""


async def get_job(conn: Conn, *, user_id: int, job_id: int) -> Record | None:
    return await conn.fetchrow(
        f"SELECT {JOB_COLUMNS} FROM chat.ai_jobs WHERE id = $1 AND user_id = $2",
        job_id,
        user_id,
    )


async def get_job_reply(conn: Conn, *, user_id: int, job_id: int) -> Record | None:
    """A job with its reply message's content and time (when it has one)."""
    return await conn.fetchrow(
        """
        SELECT j.id, j.status, j.model, j.error_code, j.error, j.input_tokens, j.output_tokens,
               j.cost::float8 AS cost, j.processing_time, j.reply_message_id,
               m.content AS reply_content, m.created_at AS reply_created_at
        FROM chat.ai_jobs j LEFT JOIN chat.messages m ON m.id = j.reply_message_id
        WHERE j.id = $1 AND j.user_id = $2
        """,
        job_id,
        user_id,
    )


async def cancel_queued_job(conn: Conn, *, user_id: int, job_id: int) -> Record | None:
    """Cancels the caller's job if no worker has started it (else None)."""
    return await conn.fetchrow(
        f"""
        UPDATE chat.ai_jobs
        SET status = 'cancelled', finished_at = now(), error_code = 'cancelled',
            error = 'Cancelled before generation started'
        WHERE id = $1 AND user_id = $2 AND status = 'queued'
        RETURNING {JOB_COLUMNS}
        """,
        job_id,
        user_id,
    )


# --- batch regeneration (administrators) ---------------------------------------------------------

# The agent replies a selection names ($1 agent, $2 conversation ids, $3/$4 time range): current
# (not superseded) agent messages that answer a user message, with their agent (the one of the
# job that wrote them, else the conversation's, else the default) and an estimate of what
# generating them again costs: the earlier job's tokens, else about four characters a token,
# at the agent's prices now.
_SELECTED_REPLIES = """
    SELECT m.id AS message_id, m.conversation_id, c.user_id, a.id AS agent_id,
           p.id AS prompt_message_id, COALESCE(j.include_context, true) AS include_context,
           e.est_in + e.est_out AS estimated_tokens,
           round((e.est_in * COALESCE(a.input_price_per_1k, 0)
                  + e.est_out * COALESCE(a.output_price_per_1k, 0)) / 1000, 6) AS estimated_cost
    FROM chat.messages m
    JOIN chat.conversations c ON c.id = m.conversation_id
    LEFT JOIN chat.ai_jobs j ON j.id = m.ai_job_id
    LEFT JOIN chat.agents a ON a.id = COALESCE(
        j.agent_id, c.agent_id,
        (SELECT d.id FROM chat.agents d WHERE d.is_default AND d.is_active LIMIT 1))
    JOIN chat.messages p ON p.id = COALESCE(
        j.prompt_message_id,
        (SELECT max(q.id) FROM chat.messages q
         WHERE q.conversation_id = m.conversation_id AND q.id < m.id AND q.sender = 'user'))
    CROSS JOIN LATERAL (
        SELECT COALESCE(j.input_tokens, (length(p.content) + 3) / 4 + 4) AS est_in,
               COALESCE(j.output_tokens, (length(m.content) + 3) / 4) AS est_out
    ) e
    WHERE m.sender = 'agent' AND m.status <> 'superseded'
      AND ($1::integer IS NULL OR a.id = $1::integer)
      AND ($2::integer[] IS NULL OR m.conversation_id = ANY($2::integer[]))
      AND ($3::timestamptz IS NULL OR m.created_at >= $3::timestamptz)
      AND ($4::timestamptz IS NULL OR m.created_at < $4::timestamptz)
"""


def _selection_args(selection: dict[str, Any]) -> tuple[Any, ...]:
    return (
        selection.get("agent_id"),
        selection.get("conversation_ids"),
        _timestamp(selection.get("created_after")),
        _timestamp(selection.get("created_before")),
    )


def _timestamp(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


async def estimate_selection(conn: Conn, *, selection: dict[str, Any]) -> Record:
    row = await conn.fetchrow(
        f"""
        WITH selected AS ({_SELECTED_REPLIES})
        SELECT count(*) AS replies, count(DISTINCT conversation_id) AS conversations,
               count(DISTINCT user_id) AS users,
               COALESCE(sum(estimated_tokens), 0)::bigint AS estimated_tokens,
               COALESCE(sum(estimated_cost), 0)::float8 AS estimated_cost
        FROM selected
        """,
        *_selection_args(selection),
    )
    assert row is not None
    return row


async def insert_batch(
    conn: Conn,
    *,
    key: str,
    created_by: int,
    selection: dict[str, Any],
    concurrency: int,
    max_tokens: int | None,
    max_cost: Any,
    job_deadline_seconds: int,
) -> int | None:
    """A new batch with its snapshot of selected replies; None when the key is taken."""
    batch_id = await conn.fetchval(
        """
        INSERT INTO chat.ai_batches (key, created_by, selection, concurrency, max_tokens,
                                     max_cost, job_deadline_seconds)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        ON CONFLICT (key) DO NOTHING
        RETURNING id
        """,
        key,
        created_by,
        orjson.dumps(selection).decode(),
        concurrency,
        max_tokens,
        max_cost,
        job_deadline_seconds,
    )
    if batch_id is None:
        return None
    await conn.execute(
        f"""
        INSERT INTO chat.ai_batch_items (batch_id, message_id, conversation_id, user_id,
                                         agent_id, prompt_message_id, include_context,
                                         estimated_tokens, estimated_cost)
        SELECT $5, s.message_id, s.conversation_id, s.user_id, s.agent_id,
               s.prompt_message_id, s.include_context, s.estimated_tokens, s.estimated_cost
        FROM ({_SELECTED_REPLIES}) s
        """,
        *_selection_args(selection),
        batch_id,
    )
    await conn.execute(
        """
        UPDATE chat.ai_batches b
        SET estimated_tokens = s.tokens, estimated_cost = s.cost
        FROM (SELECT COALESCE(sum(estimated_tokens), 0) AS tokens,
                     COALESCE(sum(estimated_cost), 0) AS cost
              FROM chat.ai_batch_items WHERE batch_id = $1) s
        WHERE b.id = $1
        """,
        batch_id,
    )
    return int(batch_id)


_BATCH_WITH_PROGRESS = """
    SELECT b.id, b.key, b.status, b.selection, b.concurrency, b.max_tokens,
           b.max_cost::float8 AS max_cost, b.estimated_tokens,
           b.estimated_cost::float8 AS estimated_cost, b.created_by, b.created_at, b.updated_at,
           b.finished_at, p.*, now() AS now
    FROM chat.ai_batches b
    CROSS JOIN LATERAL (
        SELECT count(*) AS total,
               count(*) FILTER (WHERE i.job_id IS NULL) AS pending,
               count(*) FILTER (WHERE j.status IN ('queued', 'running')) AS in_flight,
               count(*) FILTER (WHERE j.status IN ('completed', 'incomplete')) AS done,
               count(*) FILTER (WHERE j.status = 'failed') AS failed,
               count(*) FILTER (WHERE j.status = 'cancelled') AS cancelled,
               COALESCE(sum(COALESCE(j.input_tokens, 0) + COALESCE(j.output_tokens, 0)), 0)
                   AS tokens_used,
               COALESCE(sum(j.cost), 0)::float8 AS cost_used,
               min(j.created_at) AS first_dispatched_at,
               max(j.finished_at) AS last_finished_at
        FROM chat.ai_batch_items i LEFT JOIN chat.ai_jobs j ON j.id = i.job_id
        WHERE i.batch_id = b.id
    ) p
"""


async def get_batch(conn: Conn, *, batch_id: int) -> Record | None:
    return await conn.fetchrow(f"{_BATCH_WITH_PROGRESS} WHERE b.id = $1", batch_id)


async def get_batch_by_key(conn: Conn, *, key: str) -> Record | None:
    return await conn.fetchrow(f"{_BATCH_WITH_PROGRESS} WHERE b.key = $1", key)


async def list_batches(conn: Conn, *, limit: int, offset: int) -> list[Record]:
    return list(
        await conn.fetch(
            f"{_BATCH_WITH_PROGRESS} ORDER BY b.id DESC LIMIT $1 OFFSET $2", limit, offset
        )
    )


async def count_batches(conn: Conn) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM chat.ai_batches"))


async def stop_batch(conn: Conn, *, batch_id: int) -> list[Record]:
    """Cancels a running batch and its jobs no worker has started (running ones finish);
    returns those cancelled jobs (none when the batch was not running)."""
    stopped = await conn.fetchval(
        """
        UPDATE chat.ai_batches SET status = 'cancelled', finished_at = now(), updated_at = now()
        WHERE id = $1 AND status = 'running'
        RETURNING id
        """,
        batch_id,
    )
    if stopped is None:
        return []
    rows = await conn.fetch(
        """
        UPDATE chat.ai_jobs
        SET status = 'cancelled', finished_at = now(), error_code = 'cancelled',
            error = 'The batch was cancelled before this job started'
        WHERE batch_id = $1 AND status = 'queued'
        RETURNING id, user_id, conversation_id, agent_id, batch_id
        """,
        batch_id,
    )
    return list(rows)


async def restart_batch(
    conn: Conn,
    *,
    batch_id: int,
    concurrency: int | None,
    max_tokens: int | None,
    max_cost: Any,
    retry_failed: bool,
) -> bool:
    """Running again (with new limits where given); failed and cancelled items go back to
    pending when asked. False when there is no such batch."""
    updated = await conn.fetchval(
        """
        UPDATE chat.ai_batches
        SET status = 'running', finished_at = NULL, updated_at = now(),
            concurrency = COALESCE($2, concurrency), max_tokens = COALESCE($3, max_tokens),
            max_cost = COALESCE($4, max_cost)
        WHERE id = $1
        RETURNING id
        """,
        batch_id,
        concurrency,
        max_tokens,
        max_cost,
    )
    if updated is None:
        return False
    if retry_failed:
        await conn.execute(
            """
            UPDATE chat.ai_batch_items i SET job_id = NULL
            FROM chat.ai_jobs j
            WHERE i.batch_id = $1 AND j.id = i.job_id AND j.status IN ('failed', 'cancelled')
            """,
            batch_id,
        )
    return True
