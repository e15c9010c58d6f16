"""Batch regeneration: a batch, the replies it selected (a snapshot), and its jobs.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "chat"
BATCH_STATUSES = "'running', 'completed', 'cancelled', 'budget_exhausted'"


def upgrade() -> None:
    op.create_table(
        "ai_batches",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        # The batch's identity: the same key is the same batch, so running a command twice
        # starts nothing new (by default a hash of the selection).
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("created_by", sa.Integer, nullable=False),
        sa.Column("status", sa.String(20), nullable=False, server_default="running"),
        sa.Column("selection", JSONB, nullable=False),
        sa.Column("concurrency", sa.Integer, nullable=False),
        sa.Column("max_tokens", sa.BigInteger, nullable=True),
        sa.Column("max_cost", sa.Numeric(14, 6), nullable=True),
        # Each job's deadline, from the chat service's setting when the batch was created.
        sa.Column("job_deadline_seconds", sa.Integer, nullable=False),
        sa.Column("estimated_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("estimated_cost", sa.Numeric(14, 6), nullable=False, server_default="0"),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("key", name="uq_ai_batches_key"),
        sa.CheckConstraint(f"status IN ({BATCH_STATUSES})", name="ck_ai_batches_status_known"),
        sa.CheckConstraint("concurrency >= 1", name="ck_ai_batches_concurrency_positive"),
        schema=S,
    )
    # The sweeper tops up running batches.
    op.create_index(
        "ix_ai_batches_running",
        "ai_batches",
        ["id"],
        schema=S,
        postgresql_where=sa.text("status = 'running'"),
    )

    op.create_table(
        "ai_batch_items",
        sa.Column("batch_id", sa.BigInteger, nullable=False),
        # The agent reply to regenerate; its conversation, owner, prompt and agent as selected.
        sa.Column("message_id", sa.Integer, nullable=False),
        sa.Column("conversation_id", sa.Integer, nullable=False),
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("agent_id", sa.Integer, nullable=True),
        sa.Column("prompt_message_id", sa.Integer, nullable=False),
        sa.Column("include_context", sa.Boolean, nullable=False),
        sa.Column("estimated_tokens", sa.Integer, nullable=False),
        sa.Column("estimated_cost", sa.Numeric(14, 6), nullable=False),
        # Set when the item is dispatched (under the batch's lock); cleared again only by a
        # resume that retries failed items.
        sa.Column("job_id", sa.BigInteger, nullable=True),
        sa.PrimaryKeyConstraint("batch_id", "message_id", name="pk_ai_batch_items"),
        sa.ForeignKeyConstraint(
            ["batch_id"], [f"{S}.ai_batches.id"], ondelete="CASCADE", name="fk_ai_batch_items_batch"
        ),
        # A deleted reply (or conversation) leaves every batch with it.
        sa.ForeignKeyConstraint(
            ["message_id"],
            [f"{S}.messages.id"],
            ondelete="CASCADE",
            name="fk_ai_batch_items_message",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], [f"{S}.ai_jobs.id"], ondelete="SET NULL", name="fk_ai_batch_items_job"
        ),
        schema=S,
    )
    # The dispatcher's scan: a batch's undispatched items in order.
    op.create_index(
        "ix_ai_batch_items_pending",
        "ai_batch_items",
        ["batch_id", "message_id"],
        schema=S,
        postgresql_where=sa.text("job_id IS NULL"),
    )
    op.create_index("ix_ai_batch_items_job_id", "ai_batch_items", ["job_id"], schema=S)

    op.add_column("ai_jobs", sa.Column("batch_id", sa.BigInteger, nullable=True), schema=S)
    op.create_foreign_key(
        "fk_ai_jobs_batch_id",
        "ai_jobs",
        "ai_batches",
        ["batch_id"],
        ["id"],
        source_schema=S,
        referent_schema=S,
        ondelete="SET NULL",
    )
    # The database guard: a batch never has two live or successful jobs for one reply (a
    # failed or cancelled one may be retried when the batch is resumed).
    op.create_index(
        "uq_ai_jobs_batch_id_regenerates",
        "ai_jobs",
        ["batch_id", "regenerates_message_id"],
        unique=True,
        schema=S,
        postgresql_where=sa.text("batch_id IS NOT NULL AND status NOT IN ('failed', 'cancelled')"),
    )
    # Batch jobs use the batch's budget, not their owner's daily quota.
    op.add_column("ai_usage", sa.Column("batch_id", sa.BigInteger, nullable=True), schema=S)


def downgrade() -> None:
    op.drop_column("ai_usage", "batch_id", schema=S)
    op.drop_index("uq_ai_jobs_batch_id_regenerates", table_name="ai_jobs", schema=S)
    op.drop_constraint("fk_ai_jobs_batch_id", "ai_jobs", schema=S, type_="foreignkey")
    op.drop_column("ai_jobs", "batch_id", schema=S)
    op.drop_table("ai_batch_items", schema=S)
    op.drop_table("ai_batches", schema=S)
