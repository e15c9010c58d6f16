"""Attachments on behalf of one caller: a message with its files, reading them back, and the
janitor that deletes the objects of rows that are gone."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Any

import asyncpg
import structlog
from prometheus_client import Counter

from services.chat import repository as chat_repo
from services.chat.attachments import repository as repo
from services.chat.attachments.storage import ObjectStore, StorageError
from services.chat.attachments.uploads import Upload
from services.chat.schemas import MAX_MESSAGE_CHARS
from shared.db.pool import Conn
from shared.errors import (
    DEPENDENCY_DOWN_ERRORS,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    ValidationFailed,
)
from shared.tokens import Principal

log = structlog.get_logger(component="attachments")

OBJECTS_DELETED = Counter(
    "chat_storage_objects_deleted_total",
    "Stored objects deleted after their attachment rows were (message, conversation or "
    "account deleted).",
)


def download_path(attachment_id: int) -> str:
    return f"/chat/attachments/{attachment_id}/content"


def public(row: Any) -> dict[str, Any]:
    """What clients see of an attachment: never where or how it is stored."""
    return {
        "id": row["id"],
        "file_name": row["file_name"],
        "file_type": row["file_type"],
        "file_size": row["file_size"],
        "created_at": row["created_at"],
        "download_url": download_path(row["id"]),
    }


def _invalid(name: str, message: str) -> ValidationFailed:
    return ValidationFailed(
        f"{name}: {message}",
        details=[{"loc": ["body", name], "msg": message, "type": "value_error"}],
    )


class AttachmentService:
    def message_text(self, user: Principal, upload: Upload) -> tuple[str, str]:
        """The message's text and sender from the form, checked as for a JSON message, except
        that the text may be empty when files come with it."""
        content = upload.fields.get("content", "")
        sender = upload.fields.get("sender_type", "user")
        if sender not in ("user", "agent"):
            raise _invalid("sender_type", "must be `user` or `agent`")
        if sender == "agent" and not user.is_admin:
            raise Forbidden("Only agents (the AI worker) and administrators post agent messages")
        if len(content) > MAX_MESSAGE_CHARS:
            raise _invalid("content", f"at most {MAX_MESSAGE_CHARS} characters")
        if "\x00" in content:
            raise _invalid("content", "must not contain NUL characters")
        if not content.strip() and not upload.files:
            raise _invalid("content", "give a text, files, or both")
        return content, sender

    async def add_message(
        self,
        conn: Conn,
        user: Principal,
        conversation_id: int,
        upload: Upload,
        *,
        max_user_bytes: int,
        session_idle: timedelta,
    ) -> dict[str, Any]:
        """The message, its files' rows and its event, in the caller's transaction; the files
        are already stored (and are deleted by the caller if this fails)."""
        content, sender = self.message_text(user, upload)
        counted = await chat_repo.record_new_message(
            conn, user_id=user.user_id, conversation_id=conversation_id
        )
        if counted is None:
            raise NotFound(f"Conversation {conversation_id} not found")
        # Checked again here, under the per-user lock: the streaming check saw the quota as it
        # was before this upload, and another upload may have committed since.
        await repo.lock_user_attachments(conn, user_id=user.user_id)
        used = await repo.user_attachment_bytes(conn, user_id=user.user_id)
        adding = sum(stored.file_size for stored in upload.files)
        if used + adding > max_user_bytes:
            raise PayloadTooLarge(
                "Your attachment storage quota is used up",
                details={"quota": "user_bytes", "limit": max_user_bytes, "used": used},
            )
        row = await chat_repo.insert_message(
            conn,
            conversation_id=conversation_id,
            content=content,
            sender=sender,
            content_type="text",
            message_type="file" if upload.files else "text",
            at=counted["last_message_at"],
            agent_id=counted["agent_id"] if sender == "agent" else None,
        )
        await chat_repo.record_session_activity(
            conn, conversation_id=conversation_id, at=row["created_at"], idle_gap=session_idle
        )
        await chat_repo.add_event(
            conn,
            "message.created",
            user_id=user.user_id,
            data={
                "conversation_id": conversation_id,
                "message_id": row["id"],
                "sender": row["sender"],
                "agent_id": counted["agent_id"] if row["sender"] == "agent" else None,
                "created_at": row["created_at"],
            },
        )
        attachments = (
            await repo.insert_attachments(
                conn, message_id=row["id"], user_id=user.user_id, files=upload.files
            )
            if upload.files
            else []
        )
        return {
            "message_id": row["id"],
            "conversation_id": conversation_id,
            "content": row["content"],
            "sender": row["sender"],
            "content_type": row["content_type"],
            "message_type": row["message_type"],
            "status": row["status"],
            "created_at": row["created_at"],
            "total_messages": counted["total_messages"],
            "attachments": [public(a) for a in attachments],
        }

    async def get(self, conn: Conn, user: Principal, attachment_id: int) -> asyncpg.Record:
        row = await repo.get_attachment(conn, user_id=user.user_id, attachment_id=attachment_id)
        if row is None:
            raise NotFound(f"Attachment {attachment_id} not found")
        return row

    async def list_for_message(
        self, conn: Conn, user: Principal, conversation_id: int, message_id: int
    ) -> dict[str, Any]:
        rows = await repo.list_message_attachments(
            conn, user_id=user.user_id, conversation_id=conversation_id, message_id=message_id
        )
        if rows is None:
            raise NotFound(f"Message {message_id} not found in conversation {conversation_id}")
        return {"attachments": [public(row) for row in rows], "total": len(rows)}


# Failures that only postpone a deletion: the store or the database is down for now.
_POSTPONED: tuple[type[Exception], ...] = (StorageError, *DEPENDENCY_DOWN_ERRORS)


class StorageJanitor:
    """Deletes the objects whose attachment rows are gone. Run right after a delete commits (so
    a deleted file is gone when the answer arrives) and every `interval` seconds for what an
    earlier run could not do (the store was down, the process died after the commit)."""

    BATCH = 500

    def __init__(self, pool: asyncpg.Pool, store: ObjectStore, *, interval: float) -> None:
        self.pool = pool
        self.store = store
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def purge(self) -> int:
        deleted = 0
        while True:
            async with self.pool.acquire() as conn, conn.transaction():
                rows = await repo.claim_deletions(conn, limit=self.BATCH)
                if not rows:
                    return deleted
                await self.store.delete([row["storage_key"] for row in rows])
                await repo.forget_deletions(conn, ids=[row["id"] for row in rows])
            OBJECTS_DELETED.inc(len(rows))
            deleted += len(rows)

    async def purge_quietly(self) -> None:
        """`purge`, where a failure only postpones the deletion to the next sweep."""
        try:
            await self.purge()
        except _POSTPONED as exc:
            log.warning("storage_purge_postponed", error=type(exc).__name__)

    def start(self) -> None:
        self._task = asyncio.create_task(self._sweep(), name="storage-janitor")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.purge_quietly()


attachment_service = AttachmentService()
