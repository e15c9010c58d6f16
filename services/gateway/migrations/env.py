"""Alembic environment of the auth schema."""

from services.gateway.models import Base
from shared.db.alembic_env import run_migrations

run_migrations(Base.metadata)
