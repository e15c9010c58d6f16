"""The trace context of the request that created each AI job (its id and `traceparent`), so a job
the sweeper sends again still runs, and logs, as part of that request (shared/tracing.py).
Nullable: jobs created outside any request, and those created before this revision, have none.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "chat"


def upgrade() -> None:
    # A nullable column without a default: a catalog change only, no table rewrite.
    op.add_column("ai_jobs", sa.Column("trace", JSONB, nullable=True), schema=S)


def downgrade() -> None:
    op.drop_column("ai_jobs", "trace", schema=S)
