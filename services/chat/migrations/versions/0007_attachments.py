"""Attachments: who stored each file (per-user quotas), its checksum and AI-context text, and
the queue of stored objects to delete once their rows are gone.

The seed's `message_attachments` table is kept as it is; `file_path` holds the object's key in
the configured store (`attachments/<id>`: named by the row's id, never by the user's file name)
and is never shown to clients.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "chat"


def upgrade() -> None:
    # The uploader, for per-user quotas. The upload path always fills it; rows written with only
    # the seed's columns (by other tools) stay valid and count towards no quota.
    op.add_column("message_attachments", sa.Column("user_id", sa.Integer), schema=S)
    op.add_column("message_attachments", sa.Column("sha256", sa.String(64)), schema=S)
    # The UTF-8 text of a small text file (plain, Markdown, JSON, CSV), kept for the AI prompt so
    # the worker needs no access to the object store; NULL for other types and large files.
    op.add_column("message_attachments", sa.Column("text_content", sa.Text), schema=S)
    # Per-user quota sums and the owner's listing.
    op.create_index("ix_message_attachments_user_id", "message_attachments", ["user_id"], schema=S)

    op.create_table(
        "storage_deletions",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("storage_key", sa.Text, nullable=False),
        sa.Column(
            "queued_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        schema=S,
    )
    # Every way an attachment row goes (a message deleted, its conversation deleted, the user's
    # account deleted: all by cascade) queues its object in the same transaction, so the object
    # is deleted if and only if the row is, even across a crash right after the commit.
    op.execute(
        f"""
        CREATE FUNCTION {S}.queue_attachment_objects() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO {S}.storage_deletions (storage_key)
            SELECT file_path FROM gone WHERE file_path IS NOT NULL;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        f"""
        CREATE TRIGGER message_attachments_queue_objects
        AFTER DELETE ON {S}.message_attachments
        REFERENCING OLD TABLE AS gone
        FOR EACH STATEMENT EXECUTE FUNCTION {S}.queue_attachment_objects()
        """
    )


def downgrade() -> None:
    op.execute(f"DROP TRIGGER message_attachments_queue_objects ON {S}.message_attachments")
    op.execute(f"DROP FUNCTION {S}.queue_attachment_objects()")
    op.drop_table("storage_deletions", schema=S)
    op.drop_index("ix_message_attachments_user_id", "message_attachments", schema=S)
    op.drop_column("message_attachments", "text_content", schema=S)
    op.drop_column("message_attachments", "sha256", schema=S)
    op.drop_column("message_attachments", "user_id", schema=S)
