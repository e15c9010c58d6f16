"""The analytics schema (its rollup tables come with the event aggregator).

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from collections.abc import Sequence

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The schema itself is created by the migration environment; nothing else yet.
    pass


def downgrade() -> None:
    pass
