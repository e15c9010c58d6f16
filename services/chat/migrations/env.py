"""Alembic environment of the chat schema."""

from services.chat.models import Base
from shared.db.alembic_env import run_migrations

run_migrations(Base.metadata)
