"""The outbox's trace context: the request (id and `traceparent`) that wrote each event, so the
consumers' log lines about it can be found by that request's id (shared/tracing.py). Nullable:
events written outside any request, and those written before this revision, have none.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "chat"


def upgrade() -> None:
    # A nullable column without a default: a catalog change only, no table rewrite.
    op.add_column("outbox", sa.Column("trace", JSONB, nullable=True), schema=S)


def downgrade() -> None:
    op.drop_column("outbox", "trace", schema=S)
