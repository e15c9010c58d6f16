"""The agent an agent message posted by hand (no AI job) was attributed to when it was posted:
the conversation's agent then, as its `message.created` event said. Its `message.deleted` event
and analytics' rebuild name the same agent, even after the conversation changed agents (they
used the conversation's agent at that later time). Nullable: user messages, AI replies (their
job names the agent) and messages posted before this revision have none; those fall back to
the conversation's agent, as before.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "chat"


def upgrade() -> None:
    # A nullable column without a default: a catalog change only, no table rewrite. No foreign
    # key: agents are retired (deactivated), never deleted, and the attribution is history.
    op.add_column("messages", sa.Column("agent_id", sa.Integer, nullable=True), schema=S)


def downgrade() -> None:
    op.drop_column("messages", "agent_id", schema=S)
