"""The rollups the event aggregator maintains and the dashboards read (see services/analytics/).

Three layers, all additive counters except the conversations' state:

- per conversation (`conversations`, `conversation_buckets`, `conversation_agents`): what each
  conversation contributed, so `conversation.deleted` subtracts exactly that without reading the
  chat tables; a deleted conversation keeps its row as a tombstone (`deleted_at`), so late or
  replayed events about it are ignored;
- per user (`user_activity` in 15-minute UTC buckets, `user_agent_activity`, `user_totals`,
  `user_agent_totals`): what the dashboard reads, a few indexed rows per request;
- per agent and overall (`agent_totals`, `totals`): what the global view reads.

`processed_events` makes applying idempotent: an event's id is inserted in the transaction that
applies it, and an id already there means the event was applied before.

Agent id 0 stands for "no agent" in the keyed tables (user messages, and agent messages of a
conversation without an agent); real agent ids start at 1.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "analytics"
TS = sa.DateTime(timezone=True)


def _count(name: str, kind: type[sa.types.TypeEngine[int]] = sa.Integer) -> sa.Column[int]:
    return sa.Column(name, kind, nullable=False, server_default="0")


def _replies() -> list[sa.Column[int]]:
    # AI replies: completed and failed jobs, and the completed ones' processing time summed in
    # whole microseconds (integers add up exactly, in any order).
    return [
        _count("replies_completed"),
        _count("replies_failed"),
        _count("reply_time_us", sa.BigInteger),
    ]


def upgrade() -> None:
    op.create_table(
        "processed_events",
        sa.Column("event_id", UUID(as_uuid=True), primary_key=True),
        sa.Column("occurred_at", TS, nullable=False),
        sa.Column("applied_at", TS, nullable=False, server_default=sa.text("clock_timestamp()")),
        schema=S,
    )
    # Pruning by age: rows arrive in applied_at order, so a BRIN index is tiny and enough.
    op.create_index(
        "ix_processed_events_applied_at",
        "processed_events",
        ["applied_at"],
        schema=S,
        postgresql_using="brin",
    )

    op.create_table(
        "conversations",
        sa.Column("conversation_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("agent_id", sa.Integer, nullable=True),
        # occurred_at of the event that set agent_id: the latest change wins, whatever order the
        # events are applied in.
        sa.Column("agent_set_at", TS, nullable=True),
        # From conversation.created; NULL while only later events have been seen.
        sa.Column("created_at", TS, nullable=True),
        sa.Column("deleted_at", TS, nullable=True),
        schema=S,
    )
    op.create_table(
        "conversation_buckets",
        sa.Column("conversation_id", sa.Integer, nullable=False),
        sa.Column("bucket", TS, nullable=False),
        sa.Column("agent_id", sa.Integer, nullable=False),
        _count("messages"),
        _count("agent_messages"),
        sa.PrimaryKeyConstraint("conversation_id", "bucket", "agent_id"),
        schema=S,
    )
    op.create_table(
        "conversation_agents",
        sa.Column("conversation_id", sa.Integer, nullable=False),
        sa.Column("agent_id", sa.Integer, nullable=False),
        *_replies(),
        sa.PrimaryKeyConstraint("conversation_id", "agent_id"),
        schema=S,
    )

    op.create_table(
        "user_activity",
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("bucket", TS, nullable=False),
        _count("conversations"),
        _count("messages"),
        _count("agent_messages"),
        schema=S,
    )
    op.create_table(
        "user_agent_activity",
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("bucket", TS, nullable=False),
        sa.Column("agent_id", sa.Integer, nullable=False),
        _count("messages"),
        schema=S,
    )
    # What the dashboard reads: one user's buckets over a date range. The primary keys carry the
    # counters (INCLUDE), so the read is an index-only scan of a few contiguous index pages
    # instead of one heap page per bucket (a user's rows are spread over the whole table); it
    # stays that cheap as the tables grow. The price is that counter updates are not HOT.
    # Vacuumed often, so the visibility map that index-only scans rely on stays current.
    op.execute(
        f"ALTER TABLE {S}.user_activity ADD CONSTRAINT user_activity_pkey"
        " PRIMARY KEY (user_id, bucket) INCLUDE (conversations, messages, agent_messages)"
    )
    op.execute(
        f"ALTER TABLE {S}.user_agent_activity ADD CONSTRAINT user_agent_activity_pkey"
        " PRIMARY KEY (user_id, bucket, agent_id) INCLUDE (messages)"
    )
    for table in ("user_activity", "user_agent_activity"):
        op.execute(
            f"ALTER TABLE {S}.{table} SET (autovacuum_vacuum_scale_factor = 0.01,"
            " autovacuum_vacuum_insert_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.02)"
        )
    op.create_table(
        "user_totals",
        sa.Column("user_id", sa.Integer, primary_key=True, autoincrement=False),
        _count("conversations"),
        _count("messages"),
        _count("agent_messages"),
        *_replies(),
        schema=S,
    )
    op.create_table(
        "user_agent_totals",
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("agent_id", sa.Integer, nullable=False),
        _count("messages"),
        sa.PrimaryKeyConstraint("user_id", "agent_id"),
        schema=S,
    )
    op.create_table(
        "agent_totals",
        sa.Column("agent_id", sa.Integer, primary_key=True, autoincrement=False),
        _count("conversations"),
        _count("messages"),
        *_replies(),
        schema=S,
    )
    op.create_table(
        "totals",
        sa.Column("id", sa.SmallInteger, primary_key=True, autoincrement=False),
        _count("conversations", sa.BigInteger),
        _count("messages", sa.BigInteger),
        _count("agent_messages", sa.BigInteger),
        # Users with at least one conversation (the denominator of conversations per user).
        _count("users_with_conversations", sa.BigInteger),
        _count("replies_completed", sa.BigInteger),
        _count("replies_failed", sa.BigInteger),
        _count("reply_time_us", sa.BigInteger),
        sa.CheckConstraint("id = 1", name="ck_totals_one_row"),
        schema=S,
    )
    op.execute(f"INSERT INTO {S}.totals (id) VALUES (1)")


def downgrade() -> None:
    for table in (
        "totals",
        "agent_totals",
        "user_agent_totals",
        "user_totals",
        "user_agent_activity",
        "user_activity",
        "conversation_agents",
        "conversation_buckets",
        "conversations",
        "processed_events",
    ):
        op.drop_table(table, schema=S)
