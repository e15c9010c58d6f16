"""Unread state and sessions: the owner's read pointer per conversation, the index that counts
unread agent messages, and the one rule that fills chat_session_history on every message insert.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "chat"

# The session rule, defined once here and called by both writers of messages (the chat service
# on asyncpg, the AI worker on SQLAlchemy) in the transaction that inserts the message:
# a message less than `idle_gap` after the end of the conversation's latest session extends it;
# any other message starts a new session. Returns the session's id.
#
# Concurrent inserts into one conversation are serialised by the conversation's row lock: both
# callers take it before inserting the message, and the function takes it again (a no-op then)
# so no caller can skip it. Under READ COMMITTED each statement below then sees the session a
# previous holder of the lock committed, so two messages never both start a session.
# FOR NO KEY UPDATE, not FOR UPDATE: it does not conflict with the key-share locks that foreign
# key checks (messages, jobs, outbox rows pointing at the conversation) take.
RECORD_SESSION_ACTIVITY = f"""
CREATE FUNCTION {S}.record_session_activity(
    p_conversation_id integer, p_at timestamptz, p_idle_gap interval
) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    latest_id integer;
    latest_start timestamptz;
    latest_end timestamptz;
    new_end timestamptz;
    session_id integer;
BEGIN
    PERFORM 1 FROM {S}.conversations WHERE id = p_conversation_id FOR NO KEY UPDATE;
    SELECT id, session_start, COALESCE(session_end, session_start)
      INTO latest_id, latest_start, latest_end
      FROM {S}.chat_session_history
     WHERE conversation_id = p_conversation_id
     ORDER BY session_start DESC, id DESC
     LIMIT 1;
    IF latest_id IS NOT NULL AND p_at - latest_end < p_idle_gap THEN
        -- greatest(): a clock stepping back never shortens a session.
        new_end := greatest(latest_end, p_at);
        UPDATE {S}.chat_session_history
           SET session_end = new_end,
               messages_count = messages_count + 1,
               duration_minutes = floor(extract(epoch FROM new_end - latest_start) / 60)::integer
         WHERE id = latest_id;
        RETURN latest_id;
    END IF;
    INSERT INTO {S}.chat_session_history
        (conversation_id, session_start, session_end, messages_count, duration_minutes)
    VALUES (p_conversation_id, p_at, p_at, 1, 0)
    RETURNING id INTO session_id;
    RETURN session_id;
END
$$
"""


def upgrade() -> None:
    # The owner's read pointer: the last message they have read in the conversation. Unread
    # counts are derived from it at read time (see below); the seed's conversations.unread_count
    # column stays, unused, because a counter bumped by every reply would be a hot row.
    # Keyed by conversation: a conversation has one owner, whose pointer this is.
    op.create_table(
        "conversation_reads",
        sa.Column("conversation_id", sa.Integer, primary_key=True),
        # A message id, not a foreign key: messages are only ever deleted with their conversation.
        sa.Column("last_read_message_id", sa.Integer, nullable=False),
        sa.Column(
            "read_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            [f"{S}.conversations.id"],
            ondelete="CASCADE",
            name="fk_conversation_reads_conversation_id",
        ),
        schema=S,
    )
    # History from before this migration counts as read: the API showed unread_count 0 for it,
    # and a release must not turn every old reply into an unread one.
    op.execute(
        f"""
        INSERT INTO {S}.conversation_reads (conversation_id, last_read_message_id)
        SELECT conversation_id, max(id) FROM {S}.messages GROUP BY conversation_id
        """
    )
    # unread_count = agent messages of the conversation with id > the pointer: a range scan of
    # just the unread agent messages (index-only once vacuumed), whatever the history's length.
    op.create_index(
        "ix_messages_agent_conversation_id_id",
        "messages",
        ["conversation_id", "id"],
        schema=S,
        postgresql_where=sa.text("sender = 'agent'"),
    )
    # "The latest session of a conversation" (the session rule) and the sessions endpoint's
    # newest-first order; it also serves everything the conversation_id index served.
    op.create_index(
        "ix_chat_session_history_conversation_start",
        "chat_session_history",
        ["conversation_id", sa.text("session_start DESC"), sa.text("id DESC")],
        schema=S,
    )
    op.drop_index(
        "ix_chat_session_history_conversation_id", table_name="chat_session_history", schema=S
    )
    op.execute(RECORD_SESSION_ACTIVITY)


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {S}.record_session_activity(integer, timestamptz, interval)")
    op.create_index(
        "ix_chat_session_history_conversation_id",
        "chat_session_history",
        ["conversation_id"],
        schema=S,
    )
    op.drop_index(
        "ix_chat_session_history_conversation_start", table_name="chat_session_history", schema=S
    )
    op.drop_index("ix_messages_agent_conversation_id_id", table_name="messages", schema=S)
    op.drop_table("conversation_reads", schema=S)
