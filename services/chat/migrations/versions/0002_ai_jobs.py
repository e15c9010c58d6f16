"""AI jobs (one generated reply each) and their usage records; messages name their job.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "chat"
STATUSES = "'queued', 'running', 'completed', 'failed', 'cancelled', 'incomplete'"


def upgrade() -> None:
    op.create_table(
        "ai_jobs",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("conversation_id", sa.Integer, nullable=False),
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("agent_id", sa.Integer, nullable=True),
        # The user message the reply answers.
        sa.Column("prompt_message_id", sa.Integer, nullable=True),
        # For a regeneration: the earlier reply it replaces (kept, marked `superseded`).
        sa.Column("regenerates_message_id", sa.Integer, nullable=True),
        sa.Column("reply_message_id", sa.Integer, nullable=True),
        sa.Column("status", sa.String(20), nullable=False, server_default="queued"),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("include_context", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("error_code", sa.String(50), nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("input_tokens", sa.Integer, nullable=True),
        sa.Column("output_tokens", sa.Integer, nullable=True),
        sa.Column("cost", sa.Numeric(14, 6), nullable=True),
        sa.Column("processing_time", sa.Float, nullable=True),
        sa.Column("time_to_first_token", sa.Float, nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        # Past this a queued or running job is swept (failed as deadline_exceeded).
        sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=False),
        # When the sweeper last re-sent a job that no worker had started (a lost publish).
        sa.Column("requeued_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            [f"{S}.conversations.id"],
            ondelete="CASCADE",
            name="fk_ai_jobs_conversation_id",
        ),
        sa.ForeignKeyConstraint(
            ["agent_id"], [f"{S}.agents.id"], ondelete="SET NULL", name="fk_ai_jobs_agent_id"
        ),
        sa.ForeignKeyConstraint(
            ["prompt_message_id"],
            [f"{S}.messages.id"],
            ondelete="SET NULL",
            name="fk_ai_jobs_prompt_message_id",
        ),
        sa.ForeignKeyConstraint(
            ["reply_message_id"],
            [f"{S}.messages.id"],
            ondelete="SET NULL",
            name="fk_ai_jobs_reply_message_id",
        ),
        sa.ForeignKeyConstraint(
            ["regenerates_message_id"],
            [f"{S}.messages.id"],
            ondelete="SET NULL",
            name="fk_ai_jobs_regenerates_message_id",
        ),
        sa.CheckConstraint(f"status IN ({STATUSES})", name="ck_ai_jobs_status_known"),
        schema=S,
    )
    op.create_index("ix_ai_jobs_user_id_id", "ai_jobs", ["user_id", sa.text("id DESC")], schema=S)
    op.create_index("ix_ai_jobs_conversation_id", "ai_jobs", ["conversation_id"], schema=S)
    # The sweeper's scan: unfinished jobs by deadline.
    op.create_index(
        "ix_ai_jobs_unfinished_deadline",
        "ai_jobs",
        ["deadline_at"],
        schema=S,
        postgresql_where=sa.text("status IN ('queued', 'running')"),
    )

    # The database guard against a second reply: a job's agent message exists at most once,
    # however often its task is delivered.
    op.add_column("messages", sa.Column("ai_job_id", sa.BigInteger, nullable=True), schema=S)
    op.create_index(
        "uq_messages_ai_job_id",
        "messages",
        ["ai_job_id"],
        unique=True,
        schema=S,
        postgresql_where=sa.text("ai_job_id IS NOT NULL"),
    )

    op.create_table(
        "ai_usage",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("job_id", sa.BigInteger, nullable=False),
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("agent_id", sa.Integer, nullable=True),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("input_tokens", sa.Integer, nullable=False),
        sa.Column("output_tokens", sa.Integer, nullable=False),
        sa.Column("cost", sa.Numeric(14, 6), nullable=False),
        sa.Column("latency_seconds", sa.Float, nullable=False),
        sa.Column("time_to_first_token_seconds", sa.Float, nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.UniqueConstraint("job_id", name="uq_ai_usage_job_id"),
        schema=S,
    )
    # Quotas: a user's usage of the day.
    op.create_index(
        "ix_ai_usage_user_id_created_at", "ai_usage", ["user_id", "created_at"], schema=S
    )


def downgrade() -> None:
    op.drop_table("ai_usage", schema=S)
    op.drop_index("uq_messages_ai_job_id", table_name="messages", schema=S)
    op.drop_column("messages", "ai_job_id", schema=S)
    op.drop_table("ai_jobs", schema=S)
