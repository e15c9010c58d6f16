"""Alembic environment of the analytics schema."""

from services.analytics.models import Base
from shared.db.alembic_env import run_migrations

run_migrations(Base.metadata)
