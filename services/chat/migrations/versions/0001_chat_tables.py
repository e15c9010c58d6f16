"""The seed's four chat tables, agents and idempotency keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "chat"


def _timestamps() -> list[sa.Column]:
    return [
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    ]


def upgrade() -> None:
    op.create_table(
        "agents",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("system_prompt", sa.Text, nullable=False, server_default=""),
        sa.Column("temperature", sa.Float, nullable=False, server_default="0.7"),
        sa.Column("max_tokens", sa.Integer, nullable=False, server_default="512"),
        sa.Column("input_price_per_1k", sa.Numeric(12, 6), nullable=False, server_default="0"),
        sa.Column("output_price_per_1k", sa.Numeric(12, 6), nullable=False, server_default="0"),
        sa.Column("is_active", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("is_default", sa.Boolean, nullable=False, server_default=sa.false()),
        *_timestamps(),
        sa.CheckConstraint(
            "temperature >= 0 AND temperature <= 2", name="ck_agents_temperature_range"
        ),
        sa.CheckConstraint("max_tokens > 0", name="ck_agents_max_tokens_positive"),
        sa.CheckConstraint(
            "input_price_per_1k >= 0 AND output_price_per_1k >= 0",
            name="ck_agents_prices_non_negative",
        ),
        schema=S,
    )
    # At most one default agent: the one a conversation without an agent is answered by.
    op.create_index(
        "uq_agents_default",
        "agents",
        ["is_default"],
        unique=True,
        schema=S,
        postgresql_where=sa.text("is_default"),
    )
    op.create_index("ix_agents_active_id", "agents", ["is_active", "id"], schema=S)

    op.create_table(
        "conversations",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("title", sa.String(255), nullable=False),
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("agent_id", sa.Integer, nullable=True),
        sa.Column("conversation_type", sa.String(50), nullable=False, server_default="chat"),
        sa.Column("status", sa.String(50), nullable=False, server_default="active"),
        sa.Column("is_archived", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("is_pinned", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("total_messages", sa.Integer, nullable=False, server_default="0"),
        sa.Column("unread_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_message_at", sa.DateTime(timezone=True), nullable=True),
        *_timestamps(),
        # The user row lives in the gateway's schema: moving chat to a database of its own means
        # dropping this one constraint (users are then vouched for by the signed token).
        sa.ForeignKeyConstraint(
            ["user_id"], ["auth.users.id"], ondelete="CASCADE", name="fk_conversations_user_id"
        ),
        sa.ForeignKeyConstraint(
            ["agent_id"], [f"{S}.agents.id"], ondelete="SET NULL", name="fk_conversations_agent_id"
        ),
        sa.CheckConstraint("status IN ('active', 'closed')", name="ck_conversations_status_known"),
        sa.CheckConstraint(
            "total_messages >= 0 AND unread_count >= 0",
            name="ck_conversations_counters_non_negative",
        ),
        schema=S,
    )
    # List endpoint: one user's conversations, pinned first, newest first (the keyset order).
    op.create_index(
        "ix_conversations_user_pinned_id",
        "conversations",
        ["user_id", sa.text("is_pinned DESC"), sa.text("id DESC")],
        schema=S,
    )
    op.create_index("ix_conversations_agent_id", "conversations", ["agent_id"], schema=S)

    op.create_table(
        "messages",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("conversation_id", sa.Integer, nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("content_type", sa.String(50), nullable=False, server_default="text"),
        sa.Column("sender", sa.String(20), nullable=False),
        sa.Column("message_type", sa.String(50), nullable=False, server_default="text"),
        sa.Column("status", sa.String(50), nullable=False, server_default="sent"),
        sa.Column("tokens_used", sa.Integer, nullable=True),
        sa.Column("processing_time", sa.REAL, nullable=True),
        sa.Column(
            "search_vector",
            postgresql.TSVECTOR,
            sa.Computed("to_tsvector('english'::regconfig, content)", persisted=True),
        ),
        *_timestamps(),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            [f"{S}.conversations.id"],
            ondelete="CASCADE",
            name="fk_messages_conversation_id",
        ),
        sa.CheckConstraint("sender IN ('user', 'agent')", name="ck_messages_sender_known"),
        schema=S,
    )
    # Messages endpoint: a conversation's messages, newest first (the keyset order).
    op.create_index(
        "ix_messages_conversation_id_id",
        "messages",
        ["conversation_id", sa.text("id DESC")],
        schema=S,
    )
    # Search endpoint: full-text match on the generated tsvector.
    op.create_index(
        "ix_messages_search_vector", "messages", ["search_vector"], postgresql_using="gin", schema=S
    )

    op.create_table(
        "message_attachments",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("message_id", sa.Integer, nullable=False),
        sa.Column("file_name", sa.String(255), nullable=False),
        sa.Column("file_type", sa.String(100), nullable=True),
        sa.Column("file_size", sa.Integer, nullable=True),
        sa.Column("file_path", sa.Text, nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.ForeignKeyConstraint(
            ["message_id"],
            [f"{S}.messages.id"],
            ondelete="CASCADE",
            name="fk_message_attachments_message_id",
        ),
        schema=S,
    )
    op.create_index(
        "ix_message_attachments_message_id", "message_attachments", ["message_id"], schema=S
    )

    op.create_table(
        "chat_session_history",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("conversation_id", sa.Integer, nullable=False),
        sa.Column("session_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("session_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("messages_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("duration_minutes", sa.Integer, nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            [f"{S}.conversations.id"],
            ondelete="CASCADE",
            name="fk_chat_session_history_conversation_id",
        ),
        schema=S,
    )
    op.create_index(
        "ix_chat_session_history_conversation_id",
        "chat_session_history",
        ["conversation_id"],
        schema=S,
    )

    op.create_table(
        "idempotency_keys",
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("request_fingerprint", sa.String(64), nullable=False),
        sa.Column("response_status", sa.Integer, nullable=True),
        sa.Column("response_body", postgresql.JSONB, nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("user_id", "key", name="pk_idempotency_keys"),
        schema=S,
    )
    op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"], schema=S)

    # The default agent, so a fresh installation can answer before an admin configures anything.
    op.execute(
        f"""
        INSERT INTO {S}.agents (name, description, model, system_prompt, temperature, max_tokens,
                                is_default)
        VALUES ('Assistant', 'General-purpose assistant (the default agent).', 'default',
                'You are a helpful, concise assistant.', 0.7, 512, true)
        """
    )


def downgrade() -> None:
    for table in (
        "idempotency_keys",
        "chat_session_history",
        "message_attachments",
        "messages",
        "conversations",
        "agents",
    ):
        op.drop_table(table, schema=S)
