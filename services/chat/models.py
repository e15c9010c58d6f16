"""The chat schema's tables (owned by the chat service; the AI worker writes replies into them)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    REAL,
    BigInteger,
    Boolean,
    CheckConstraint,
    Computed,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, TSVECTOR
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA = "chat"


class Base(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)


def _created() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class Agent(Base):
    __tablename__ = "agents"
    __table_args__ = (
        CheckConstraint("temperature >= 0 AND temperature <= 2", name="temperature_range"),
        CheckConstraint("max_tokens > 0", name="max_tokens_positive"),
        CheckConstraint(
            "input_price_per_1k >= 0 AND output_price_per_1k >= 0", name="prices_non_negative"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False, server_default="")
    model: Mapped[str] = mapped_column(String(255), nullable=False)
    system_prompt: Mapped[str] = mapped_column(Text, nullable=False, server_default="")
    temperature: Mapped[float] = mapped_column(Float, nullable=False, server_default="0.7")
    max_tokens: Mapped[int] = mapped_column(Integer, nullable=False, server_default="512")
    input_price_per_1k: Mapped[Decimal] = mapped_column(
        Numeric(12, 6), nullable=False, server_default="0"
    )
    output_price_per_1k: Mapped[Decimal] = mapped_column(
        Numeric(12, 6), nullable=False, server_default="0"
    )
    is_active: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("true"))
    is_default: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("false"))
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _created()


class Conversation(Base):
    __tablename__ = "conversations"
    __table_args__ = (
        CheckConstraint("status IN ('active', 'closed')", name="status_known"),
        CheckConstraint("total_messages >= 0 AND unread_count >= 0", name="counters_non_negative"),
        # The list endpoint: a user's conversations, pinned first, newest first (keyset order).
        Index(
            "ix_conversations_user_pinned_id", "user_id", text("is_pinned DESC"), text("id DESC")
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(String(255), nullable=False)
    # References auth.users (the gateway's schema); the constraint lives in the migration only,
    # so this metadata does not need the other service's tables.
    user_id: Mapped[int] = mapped_column(Integer, nullable=False)
    agent_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("chat.agents.id", ondelete="SET NULL"), nullable=True, index=True
    )
    conversation_type: Mapped[str] = mapped_column(
        String(50), nullable=False, server_default="chat"
    )
    status: Mapped[str] = mapped_column(String(50), nullable=False, server_default="active")
    is_archived: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("false"))
    is_pinned: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("false"))
    total_messages: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    # The seed's column, kept but unused: the API's unread_count is derived from the read pointer
    # (ConversationRead) at read time, not kept as a counter every reply would have to bump.
    unread_count: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    last_message_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _created()


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        CheckConstraint("sender IN ('user', 'agent')", name="sender_known"),
        # A conversation's messages, newest first (keyset order).
        Index("ix_messages_conversation_id_id", "conversation_id", text("id DESC")),
        Index("ix_messages_search_vector", "search_vector", postgresql_using="gin"),
        # Unread counts: a conversation's agent messages after the read pointer.
        Index(
            "ix_messages_agent_conversation_id_id",
            "conversation_id",
            "id",
            postgresql_where=text("sender = 'agent'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("chat.conversations.id", ondelete="CASCADE"), nullable=False
    )
    content: Mapped[str] = mapped_column(Text, nullable=False)
    content_type: Mapped[str] = mapped_column(String(50), nullable=False, server_default="text")
    sender: Mapped[str] = mapped_column(String(20), nullable=False)
    message_type: Mapped[str] = mapped_column(String(50), nullable=False, server_default="text")
    status: Mapped[str] = mapped_column(String(50), nullable=False, server_default="sent")
    tokens_used: Mapped[int | None] = mapped_column(Integer)
    processing_time: Mapped[float | None] = mapped_column(REAL)
    search_vector: Mapped[Any] = mapped_column(
        TSVECTOR, Computed("to_tsvector('english', content)", persisted=True)
    )
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _created()


class MessageAttachment(Base):
    __tablename__ = "message_attachments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("chat.messages.id", ondelete="CASCADE"), nullable=False, index=True
    )
    # The uploader (the conversation's owner): per-user quotas are summed over this. Nullable so
    # rows with only the seed's columns stay valid.
    user_id: Mapped[int | None] = mapped_column(Integer, index=True)
    file_name: Mapped[str] = mapped_column(String(255), nullable=False)
    # The type its bytes were verified to be, not the one the client claimed.
    file_type: Mapped[str | None] = mapped_column(String(100))
    file_size: Mapped[int | None] = mapped_column(Integer)
    # The object's key in the configured store (`attachments/<id>`); never shown to clients.
    file_path: Mapped[str | None] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64))
    # A small text file's text, for AI prompts (the worker never reads the object store).
    text_content: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()


class ConversationRead(Base):
    """The owner's read pointer: the last message of the conversation they have read."""

    __tablename__ = "conversation_reads"

    conversation_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("chat.conversations.id", ondelete="CASCADE"), primary_key=True
    )
    last_read_message_id: Mapped[int] = mapped_column(Integer, nullable=False)
    read_at: Mapped[datetime] = _created()


class StorageDeletion(Base):
    """An object whose attachment row is gone, queued (by a trigger) until it is deleted."""

    __tablename__ = "storage_deletions"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    storage_key: Mapped[str] = mapped_column(Text, nullable=False)
    queued_at: Mapped[datetime] = _created()


class ChatSessionHistory(Base):
    """Filled by chat.record_session_activity (migration 0006) on every message insert."""

    __tablename__ = "chat_session_history"
    __table_args__ = (
        # The latest session of a conversation; the sessions endpoint's newest-first order.
        Index(
            "ix_chat_session_history_conversation_start",
            "conversation_id",
            text("session_start DESC"),
            text("id DESC"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("chat.conversations.id", ondelete="CASCADE"), nullable=False
    )
    session_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    session_end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    messages_count: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    duration_minutes: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = _created()


class IdempotencyKey(Base):
    """The first response to a POST carrying `Idempotency-Key`, replayed to retries of it."""

    __tablename__ = "idempotency_keys"

    user_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_fingerprint: Mapped[str] = mapped_column(String(64), nullable=False)
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[Any | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = _created()


__all__ = [
    "Agent",
    "Base",
    "ChatSessionHistory",
    "Conversation",
    "ConversationRead",
    "IdempotencyKey",
    "Message",
    "MessageAttachment",
    "StorageDeletion",
]
