"""Database setup shared by the services: asyncpg pools for request paths, Alembic for schemas."""
