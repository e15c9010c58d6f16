"""Every SQL statement about attachments and their stored objects.

Ownership is part of each read (`c.user_id = $n` through the message's conversation): another
user's attachment is indistinguishable from a missing one.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from services.chat.attachments.uploads import StoredFile
from shared.db.pool import Conn

Record = asyncpg.Record

ATTACHMENT_COLUMNS = "a.id, a.message_id, a.file_name, a.file_type, a.file_size, a.created_at"


async def next_attachment_id(conn: Conn) -> int:
    """A fresh id, taken before the file is stored so the object can be named by it; an upload
    that fails leaves a gap in the sequence, nothing else."""
    value = await conn.fetchval(
        "SELECT nextval(pg_get_serial_sequence('chat.message_attachments', 'id'))"
    )
    return int(value)


async def user_attachment_bytes(conn: Conn, *, user_id: int) -> int:
    value = await conn.fetchval(
        "SELECT COALESCE(sum(file_size), 0) FROM chat.message_attachments WHERE user_id = $1",
        user_id,
    )
    return int(value)


async def lock_user_attachments(conn: Conn, *, user_id: int) -> None:
    """Serialises one user's attachment commits until this transaction ends, so two uploads
    cannot both fit the quota's last bytes."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('chat.attachments'), $1)", user_id)


async def insert_attachments(
    conn: Conn, *, message_id: int, user_id: int, files: Sequence[StoredFile]
) -> list[Record]:
    rows = await conn.fetch(
        f"""
        INSERT INTO chat.message_attachments AS a
            (id, message_id, user_id, file_name, file_type, file_size, file_path, sha256,
             text_content)
        SELECT f.id, $1, $2, f.file_name, f.file_type, f.file_size, f.file_path, f.sha256,
               f.text_content
        FROM unnest($3::int[], $4::text[], $5::text[], $6::int[], $7::text[], $8::text[],
                    $9::text[])
             AS f(id, file_name, file_type, file_size, file_path, sha256, text_content)
        RETURNING {ATTACHMENT_COLUMNS}
        """,
        message_id,
        user_id,
        [f.id for f in files],
        [f.file_name for f in files],
        [f.file_type for f in files],
        [f.file_size for f in files],
        [f.key for f in files],
        [f.sha256 for f in files],
        [f.text for f in files],
    )
    return sorted(rows, key=lambda row: row["id"])


async def get_attachment(conn: Conn, *, user_id: int, attachment_id: int) -> Record | None:
    """The caller's attachment with its object key and checksum (for the download)."""
    return await conn.fetchrow(
        f"""
        SELECT {ATTACHMENT_COLUMNS}, a.file_path, a.sha256, m.conversation_id
        FROM chat.message_attachments a
        JOIN chat.messages m ON m.id = a.message_id
        JOIN chat.conversations c ON c.id = m.conversation_id
        WHERE a.id = $1 AND c.user_id = $2
        """,
        attachment_id,
        user_id,
    )


async def list_message_attachments(
    conn: Conn, *, user_id: int, conversation_id: int, message_id: int
) -> list[Record] | None:
    """The message's attachments, or None when the message is missing or not the caller's."""
    exists = await conn.fetchval(
        """
        SELECT 1 FROM chat.messages m JOIN chat.conversations c ON c.id = m.conversation_id
        WHERE m.id = $1 AND m.conversation_id = $2 AND c.user_id = $3
        """,
        message_id,
        conversation_id,
        user_id,
    )
    if exists is None:
        return None
    return list(
        await conn.fetch(
            f"""
            SELECT {ATTACHMENT_COLUMNS} FROM chat.message_attachments a
            WHERE a.message_id = $1 ORDER BY a.id
            """,
            message_id,
        )
    )


# --- objects whose rows are gone (queued by the trigger of migration 0007) -----------------------


async def claim_deletions(conn: Conn, *, limit: int) -> list[Record]:
    """Queued objects no other process is deleting right now (locked until the transaction
    ends, so two chat processes never work on the same ones)."""
    return list(
        await conn.fetch(
            """
            SELECT id, storage_key FROM chat.storage_deletions
            ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
            """,
            limit,
        )
    )


async def forget_deletions(conn: Conn, *, ids: Sequence[int]) -> None:
    await conn.execute("DELETE FROM chat.storage_deletions WHERE id = ANY($1::bigint[])", ids)
