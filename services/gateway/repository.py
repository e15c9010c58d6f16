"""Every SQL statement of the gateway: the auth schema's users."""

from __future__ import annotations

import asyncpg

_USER_COLUMNS = "id, email, password_hash, name, role, is_active, created_at"


async def get_user_by_email(
    conn: asyncpg.Connection | asyncpg.Pool, email: str
) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {_USER_COLUMNS} FROM auth.users WHERE email = $1", email)


async def get_user(conn: asyncpg.Connection | asyncpg.Pool, user_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {_USER_COLUMNS} FROM auth.users WHERE id = $1", user_id)


async def insert_user(
    conn: asyncpg.Connection | asyncpg.Pool, *, email: str, password_hash: str, name: str, role: str
) -> asyncpg.Record | None:
    """The new user, or None when the e-mail is taken."""
    return await conn.fetchrow(
        f"""
        INSERT INTO auth.users (email, password_hash, name, role) VALUES ($1, $2, $3, $4)
        ON CONFLICT (email) DO NOTHING
        RETURNING {_USER_COLUMNS}
        """,
        email,
        password_hash,
        name,
        role,
    )


async def upsert_admin(
    conn: asyncpg.Connection | asyncpg.Pool, *, email: str, password_hash: str
) -> asyncpg.Record:
    """The configured administrator: created, or promoted and given the configured password."""
    row = await conn.fetchrow(
        f"""
        INSERT INTO auth.users (email, password_hash, name, role)
        VALUES ($1, $2, 'Administrator', 'admin')
        ON CONFLICT (email) DO UPDATE
            SET role = 'admin', password_hash = EXCLUDED.password_hash, is_active = true,
                updated_at = now()
        RETURNING {_USER_COLUMNS}
        """,
        email,
        password_hash,
    )
    assert row is not None
    return row


async def update_password_hash(
    conn: asyncpg.Connection | asyncpg.Pool, *, user_id: int, password_hash: str
) -> None:
    await conn.execute(
        "UPDATE auth.users SET password_hash = $2, updated_at = now() WHERE id = $1",
        user_id,
        password_hash,
    )
