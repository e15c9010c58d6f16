"""The analytics schema's tables: rollups the event aggregator maintains (migration 0002 creates
them; these classes describe them). Every figure of the dashboards is read from here.

Agent id 0 stands for "no agent" in the keyed tables; `bucket` is the start of a 15-minute UTC
interval.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from sqlalchemy import BigInteger, DateTime, Integer, MetaData, SmallInteger, text
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA = "analytics"


class Base(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)


def _ts(nullable: bool = False) -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), nullable=nullable)


def _count() -> Mapped[int]:
    return mapped_column(Integer, nullable=False, server_default="0")


def _big_count() -> Mapped[int]:
    return mapped_column(BigInteger, nullable=False, server_default="0")


class ProcessedEvent(Base):
    """An event applied already (idempotency), kept for longer than the relay replays events."""

    __tablename__ = "processed_events"

    event_id: Mapped[UUID] = mapped_column(PG_UUID(as_uuid=True), primary_key=True)
    occurred_at: Mapped[datetime] = _ts()
    applied_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=text("clock_timestamp()")
    )


class Conversation(Base):
    """A conversation's state as the events told it; a tombstone once deleted."""

    __tablename__ = "conversations"

    conversation_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    user_id: Mapped[int] = mapped_column(Integer, nullable=False)
    agent_id: Mapped[int | None] = mapped_column(Integer)
    agent_set_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ConversationBucket(Base):
    """Messages of one conversation in one 15-minute bucket, by writing agent (0: the user's own,
    or an agent message without agent)."""

    __tablename__ = "conversation_buckets"

    conversation_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    bucket: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    agent_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    messages: Mapped[int] = _count()
    agent_messages: Mapped[int] = _count()


class ConversationAgent(Base):
    """AI jobs of one conversation by agent: completed, failed, completed processing time (µs)."""

    __tablename__ = "conversation_agents"

    conversation_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    agent_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    replies_completed: Mapped[int] = _count()
    replies_failed: Mapped[int] = _count()
    reply_time_us: Mapped[int] = _big_count()


class UserActivity(Base):
    __tablename__ = "user_activity"

    user_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    bucket: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    conversations: Mapped[int] = _count()
    messages: Mapped[int] = _count()
    agent_messages: Mapped[int] = _count()


class UserAgentActivity(Base):
    __tablename__ = "user_agent_activity"

    user_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    bucket: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    agent_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    messages: Mapped[int] = _count()


class UserTotals(Base):
    __tablename__ = "user_totals"

    user_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    conversations: Mapped[int] = _count()
    messages: Mapped[int] = _count()
    agent_messages: Mapped[int] = _count()
    replies_completed: Mapped[int] = _count()
    replies_failed: Mapped[int] = _count()
    reply_time_us: Mapped[int] = _big_count()


class UserAgentTotals(Base):
    __tablename__ = "user_agent_totals"

    user_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    agent_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    messages: Mapped[int] = _count()


class AgentTotals(Base):
    __tablename__ = "agent_totals"

    agent_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    conversations: Mapped[int] = _count()
    messages: Mapped[int] = _count()
    replies_completed: Mapped[int] = _count()
    replies_failed: Mapped[int] = _count()
    reply_time_us: Mapped[int] = _big_count()


class Totals(Base):
    """One row (id 1): the figures over all users."""

    __tablename__ = "totals"

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    conversations: Mapped[int] = _big_count()
    messages: Mapped[int] = _big_count()
    agent_messages: Mapped[int] = _big_count()
    users_with_conversations: Mapped[int] = _big_count()
    replies_completed: Mapped[int] = _big_count()
    replies_failed: Mapped[int] = _big_count()
    reply_time_us: Mapped[int] = _big_count()
