"""The transactional outbox: events written with the change they describe (shared/events.py).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "chat"


def upgrade() -> None:
    op.create_table(
        "outbox",
        # Relay order (commit order within a transaction, near enough across them).
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column(
            "event_id",
            UUID(as_uuid=True),
            nullable=False,
            server_default=sa.text("gen_random_uuid()"),
        ),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("version", sa.SmallInteger, nullable=False, server_default="1"),
        sa.Column(
            "occurred_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("clock_timestamp()"),
        ),
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("data", JSONB, nullable=False),
        # Set when the relay appended it to the stream; published rows are kept for a while so a
        # Redis that lost its data can be given them again, then deleted.
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("event_id", name="uq_outbox_event_id"),
        schema=S,
    )
    op.create_index(
        "ix_outbox_unpublished",
        "outbox",
        ["id"],
        schema=S,
        postgresql_where=sa.text("published_at IS NULL"),
    )
    op.create_index("ix_outbox_published_at", "outbox", ["published_at"], schema=S)


def downgrade() -> None:
    op.drop_table("outbox", schema=S)
