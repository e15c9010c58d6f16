"""The body of every service's Alembic `env.py`: one schema, its own version table, psycopg 3."""

from __future__ import annotations

from alembic import context
from sqlalchemy import MetaData, create_engine, text

from shared.db.pool import sqlalchemy_url


def run_migrations(target_metadata: MetaData) -> None:
    config = context.config
    schema = config.attributes.get("schema") or target_metadata.schema
    url = sqlalchemy_url(config.get_main_option("sqlalchemy.url") or "")
    engine = create_engine(url)
    with engine.connect() as connection:
        # Two processes migrating at once (two replicas starting) must not race on DDL.
        connection.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": schema})
        connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            version_table_schema=schema,
            include_schemas=False,
            transaction_per_migration=False,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
    engine.dispose()
