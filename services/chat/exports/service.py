"""Export a user's history (one conversation or all) as JSON or Markdown, streamed as it is read,
and import such an export back.

Export: one read-only, repeatable-read transaction (a consistent snapshot) and a server-side
cursor, rendered in chunks of about 64 KiB; a history of any length is never in memory, only
one batch of rows and one chunk. Attachments are listed with their download links.

A ZIP archive (`archive.py`) carries the document and the attachments' files.

Import: the export file (spooled to disk by the route, never held in memory) is parsed
incrementally (ijson), and its conversations and messages are written in batches in one
transaction, with their original times and states, and an event for each (so analytics counts
them like any other). Files come back from a ZIP archive, checked as uploads are; a JSON file
carries none, so its attachments are counted as skipped.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import IO, Any, Literal

import asyncpg
import ijson
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from services.chat.attachments import repository as attachments_repo
from services.chat.attachments.service import download_path
from services.chat.attachments.storage import ObjectStore
from services.chat.exports import repository as repo
from services.chat.exports.archive import ArchiveFiles, archive_path, write_archive
from services.chat.schemas import MAX_MESSAGE_CHARS
from shared.db.pool import Conn
from shared.envelope import dumps
from shared.errors import PayloadTooLarge, ValidationFailed
from shared.tokens import Principal

EXPORT_FORMAT = "chat-export"
EXPORT_VERSION = 1
FLUSH_BYTES = 64 * 1024
PREFETCH_ROWS = 500
IMPORT_BATCH = 500

EXPORT_BYTES = Histogram(
    "chat_export_bytes",
    "Size of finished exports, by format and scope (conversation or account).",
    ["format", "scope"],
    buckets=(1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9),
)
EXPORT_SECONDS = Histogram(
    "chat_export_duration_seconds",
    "Time to stream an export to the client, by format and scope.",
    ["format", "scope"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
EXPORTS = Counter(
    "chat_exports_total",
    "Exports, by format, scope and outcome (completed, aborted: the client left or it failed).",
    ["format", "scope", "outcome"],
)
IMPORTS = Counter("chat_imports_total", "Imports, by outcome.", ["outcome"])
IMPORTED_MESSAGES = Counter("chat_imported_messages_total", "Messages written by imports.")

Format = Literal["json", "markdown", "zip"]


# --- export --------------------------------------------------------------------------------------


def _conversation(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["c_id"],
        "title": row["title"],
        "agent_id": row["agent_id"],
        "conversation_type": row["conversation_type"],
        "status": row["c_status"],
        "is_archived": row["is_archived"],
        "is_pinned": row["is_pinned"],
        "total_messages": row["total_messages"],
        "unread_count": row["unread_count"],
        "last_message_at": row["last_message_at"],
        "created_at": row["c_created_at"],
        "updated_at": row["c_updated_at"],
    }


def _message(row: asyncpg.Record, *, archive: bool) -> dict[str, Any]:
    return {
        "id": row["m_id"],
        "content": row["content"],
        "content_type": row["content_type"],
        "sender": row["sender"],
        "message_type": row["message_type"],
        "status": row["m_status"],
        "tokens_used": row["tokens_used"],
        "processing_time": row["processing_time"],
        "created_at": row["m_created_at"],
        "updated_at": row["m_updated_at"],
        "attachments": [
            {
                "id": attachment_id,
                "file_name": file_name,
                "file_type": file_type,
                "file_size": file_size,
                "sha256": sha256,
                "created_at": created_at,
                "download_url": download_path(attachment_id),
                **({"archive_path": archive_path(attachment_id, file_name)} if archive else {}),
            }
            for attachment_id, file_name, file_type, file_size, sha256, created_at in row[
                "attachments"
            ]
        ],
    }


class _Json:
    """The JSON document, written piece by piece: conversations, each with its messages last."""

    def __init__(self, user_id: int, *, archive: bool = False) -> None:
        self.archive = archive
        self.conversations = 0
        self.messages = 0
        self._open = False
        self._first_message = True
        self.head = (
            b'{"format":"%s","version":%d,"exported_at":%s,"user_id":%d,"conversations":['
            % (EXPORT_FORMAT.encode(), EXPORT_VERSION, dumps(datetime.now(UTC)), user_id)
        )

    def conversation(self, row: asyncpg.Record) -> bytes:
        out = b"]}," if self._open else b""
        self._open, self._first_message = True, True
        self.conversations += 1
        # The conversation's object without its closing brace: its messages follow.
        return out + b"\n" + dumps(_conversation(row))[:-1] + b',"messages":['

    def message(self, row: asyncpg.Record) -> bytes:
        out = b"" if self._first_message else b","
        self._first_message = False
        self.messages += 1
        return out + b"\n" + dumps(_message(row, archive=self.archive))

    def tail(self) -> bytes:
        totals = {"conversations": self.conversations, "messages": self.messages}
        return (b"]}" if self._open else b"") + b'\n],"totals":' + dumps(totals) + b"}\n"


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "-"


def _size(value: int | None) -> str:
    size = float(value or 0)
    for unit in ("bytes", "KiB", "MiB"):
        if size < 1024 or unit == "MiB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


class _Markdown:
    """One conversation as a readable document: a heading, then each message with its sender,
    time, text and attachment links."""

    def __init__(self) -> None:
        self.conversations = 0
        self.messages = 0
        self.head = b""

    def conversation(self, row: asyncpg.Record) -> bytes:
        self.conversations += 1
        lines = [
            f"# {row['title']}",
            "",
            f"- Conversation {row['c_id']}, created {_when(row['c_created_at'])}",
            f"- Agent: {row['agent_id'] if row['agent_id'] is not None else 'none'}",
            f"- Messages: {row['total_messages']}; status: {row['c_status']}",
            "",
        ]
        return "\n".join(lines).encode() + b"\n"

    def message(self, row: asyncpg.Record) -> bytes:
        self.messages += 1
        who = "User" if row["sender"] == "user" else "Agent"
        status = "" if row["m_status"] in ("sent", "read") else f" ({row['m_status']})"
        lines = [f"## {who} · {_when(row['m_created_at'])}{status}", "", row["content"], ""]
        for attachment_id, file_name, file_type, file_size, _, _ in row["attachments"]:
            label = file_name.replace("[", "\\[").replace("]", "\\]")
            lines.append(
                f"- Attachment: [{label}]({download_path(attachment_id)}) "
                f"({file_type}, {_size(file_size)})"
            )
        if row["attachments"]:
            lines.append("")
        return "\n".join(lines).encode() + b"\n"

    def tail(self) -> bytes:
        return b""


async def _document(
    conn: Conn, user: Principal, conversation_id: int | None, writer: _Json | _Markdown
) -> AsyncIterator[bytes]:
    """The document in chunks of about FLUSH_BYTES (inside the caller's transaction)."""
    buffer = bytearray(writer.head)
    current: int | None = None
    rows = repo.export_rows(
        conn, user_id=user.user_id, conversation_id=conversation_id, prefetch=PREFETCH_ROWS
    )
    async for row in rows:
        if row["c_id"] != current:
            current = row["c_id"]
            buffer += writer.conversation(row)
        if row["m_id"] is not None:
            buffer += writer.message(row)
        if len(buffer) >= FLUSH_BYTES:
            yield bytes(buffer)
            buffer.clear()
    buffer += writer.tail()
    yield bytes(buffer)


async def stream_export(
    pool: asyncpg.Pool,
    user: Principal,
    *,
    conversation_id: int | None,
    fmt: Format,
    store: ObjectStore | None = None,
) -> AsyncIterator[bytes]:
    """The export as chunks of about FLUSH_BYTES, read from one consistent snapshot (`zip`:
    with the files, read from `store`)."""
    scope = "account" if conversation_id is None else "conversation"
    started = time.perf_counter()
    sent = 0
    outcome = "aborted"
    try:
        async with (
            pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            chunks: AsyncIterator[bytes]
            if fmt == "zip":
                assert store is not None
                document = _document(conn, user, conversation_id, _Json(user.user_id, archive=True))
                files = repo.archive_files(
                    conn, user_id=user.user_id, conversation_id=conversation_id
                )
                chunks = write_archive(document, aiter(files), store)
            else:
                writer = _Json(user.user_id) if fmt == "json" else _Markdown()
                chunks = _document(conn, user, conversation_id, writer)
            async for chunk in chunks:
                sent += len(chunk)
                yield chunk
        outcome = "completed"
        EXPORT_BYTES.labels(fmt, scope).observe(sent)
        EXPORT_SECONDS.labels(fmt, scope).observe(time.perf_counter() - started)
    finally:
        EXPORTS.labels(fmt, scope, outcome).inc()


# --- import --------------------------------------------------------------------------------------


class _Imported(BaseModel):
    # Ids, owners, counters and download links of the source are not carried over.
    model_config = ConfigDict(extra="ignore")


class ImportedConversation(_Imported):
    title: str = Field(min_length=1, max_length=255)
    agent_id: int | None = Field(default=None, gt=0, lt=2**31)
    conversation_type: str = Field(default="chat", pattern=r"^[a-z][a-z0-9_-]{0,49}$")
    status: Literal["active", "closed"] = "active"
    is_archived: bool = False
    is_pinned: bool = False
    unread_count: int = Field(default=0, ge=0, lt=2**31)
    last_message_at: datetime | None = None
    created_at: datetime
    updated_at: datetime

    @field_validator("title")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value


class ImportedMessage(_Imported):
    content: str = Field(max_length=MAX_MESSAGE_CHARS)
    content_type: str = Field(default="text", max_length=50)
    sender: Literal["user", "agent"]
    message_type: str = Field(default="text", max_length=50)
    status: str = Field(default="sent", max_length=50)
    tokens_used: int | None = Field(default=None, ge=0, lt=2**31)
    processing_time: float | None = None
    created_at: datetime
    updated_at: datetime
    attachments: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("content")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value


def _invalid(where: str, exc: ValidationError | str) -> ValidationFailed:
    if isinstance(exc, str):
        return ValidationFailed(f"{where}: {exc}", details=[{"loc": [where], "msg": exc}])
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"])
    return ValidationFailed(
        f"{where}.{field}: {first['msg']}",
        details=[
            {"loc": [where, *map(str, e["loc"])], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors()[:20]
        ],
    )


class _Importer:
    """Writes what the parser finds, conversation by conversation, messages in batches."""

    def __init__(self, conn: Conn, user: Principal, files: ArchiveFiles | None) -> None:
        self.conn = conn
        self.user = user
        self.files = files
        self.conversation_ids: list[int] = []
        self.messages = 0
        self.attachments_restored = 0
        self.attachments_skipped = 0
        self._agents: dict[int, bool] = {}
        self._current: tuple[int, ImportedConversation, int | None] | None = None
        self._pending: list[ImportedMessage] = []
        self._count = 0

    async def start_conversation(self, index: int, fields: dict[str, Any]) -> None:
        try:
            conversation = ImportedConversation.model_validate(fields)
        except ValidationError as exc:
            raise _invalid(f"conversations[{index}]", exc) from exc
        agent_id = conversation.agent_id
        if agent_id is not None and agent_id not in self._agents:
            found = await repo.existing_agents(self.conn, agent_ids=[agent_id])
            self._agents[agent_id] = agent_id in found
        values = conversation.model_dump()
        if agent_id is not None and not self._agents[agent_id]:
            values["agent_id"] = None  # an agent this deployment does not have
        row = await repo.insert_conversation(self.conn, user_id=self.user.user_id, fields=values)
        await repo.add_events(
            self.conn,
            user_id=self.user.user_id,
            events=[
                (
                    "conversation.created",
                    {
                        "conversation_id": row["id"],
                        "agent_id": row["agent_id"],
                        "title": row["title"],
                        "created_at": row["created_at"],
                    },
                )
            ],
        )
        self.conversation_ids.append(row["id"])
        self._current = (row["id"], conversation, row["agent_id"])
        self._count = 0

    async def message(self, where: str, fields: Any) -> None:
        if self._current is None:
            raise _invalid(where, "a conversation's fields must come before its messages")
        try:
            message = ImportedMessage.model_validate(fields)
        except ValidationError as exc:
            raise _invalid(where, exc) from exc
        if self.files is None:
            self.attachments_skipped += len(message.attachments)
        self._pending.append(message)
        if len(self._pending) >= IMPORT_BATCH:
            await self._flush()

    async def _flush(self) -> None:
        if not self._pending or self._current is None:
            return
        conversation_id, _, agent_id = self._current
        rows = await repo.insert_messages(
            self.conn,
            conversation_id=conversation_id,
            agent_id=agent_id,
            messages=[m.model_dump(exclude={"attachments"}) for m in self._pending],
        )
        await repo.add_events(
            self.conn,
            user_id=self.user.user_id,
            events=[
                (
                    "message.created",
                    {
                        "conversation_id": conversation_id,
                        "message_id": row["id"],
                        "sender": row["sender"],
                        "agent_id": agent_id if row["sender"] == "agent" else None,
                        "created_at": row["created_at"],
                    },
                )
                for row in rows
            ],
        )
        if self.files is not None:
            for row, message in zip(rows, self._pending, strict=True):
                await self._restore_files(row["id"], message)
        self._count += len(rows)
        self.messages += len(rows)
        self._pending.clear()

    async def _restore_files(self, message_id: int, message: ImportedMessage) -> None:
        assert self.files is not None
        stored = []
        for listed in message.attachments:
            restored = await self.files.restore(self.conn, listed)
            if restored is None:
                self.attachments_skipped += 1
            else:
                stored.append(restored)
        if stored:
            await attachments_repo.insert_attachments(
                self.conn, message_id=message_id, user_id=self.user.user_id, files=stored
            )
            self.attachments_restored += len(stored)

    async def end_conversation(self) -> None:
        await self._flush()
        if self._current is not None:
            conversation_id, conversation, _ = self._current
            await repo.set_message_count(
                self.conn,
                conversation_id=conversation_id,
                total=self._count,
                updated_at=conversation.updated_at,
            )
        self._current = None


_CONVERSATION = "conversations.item"
_MESSAGE = "conversations.item.messages.item"
_MESSAGES = "conversations.item.messages"


async def import_export(
    conn: Conn,
    user: Principal,
    source: IO[bytes],
    *,
    files: ArchiveFiles | None = None,
    max_user_bytes: int = 0,
    chunk_bytes: int = FLUSH_BYTES,
) -> dict[str, Any]:
    """Imports an export file into the caller's account (in the caller's transaction), with
    the archive's `files` when it came as one; 422 naming the place when the file is not a
    valid export, 413/415 for a file that would not be accepted as an upload."""
    events = ijson.sendable_list()
    parser = ijson.parse_coro(events, use_float=True)
    importer = _Importer(conn, user, files)
    if files is not None:
        # Held to the commit: concurrent uploads and imports cannot overshoot the quota.
        await attachments_repo.lock_user_attachments(conn, user_id=user.user_id)
    header: dict[str, Any] = {}
    fields: dict[str, Any] = {}
    key: str | None = None
    builder: Any = None
    conversation_index = -1
    message_index = -1
    while True:
        chunk = source.read(chunk_bytes)
        try:
            if chunk:
                parser.send(chunk)
            else:
                parser.close()
        except ijson.JSONError as exc:
            raise _invalid("body", f"not valid JSON ({exc})") from exc
        for prefix, event, value in events:
            if builder is not None:
                builder.event(event, value)
                if prefix == _MESSAGE and event == "end_map":
                    await importer.message(
                        f"conversations[{conversation_index}].messages[{message_index}]",
                        builder.value,
                    )
                    builder = None
                continue
            if prefix in ("format", "version"):
                header[prefix] = value
            elif prefix == _CONVERSATION:
                if event == "start_map":
                    _check_header(header)
                    conversation_index += 1
                    message_index = -1
                    fields, key = {}, None
                elif event == "map_key":
                    key = value
                elif event == "end_map":
                    if importer._current is None:
                        await importer.start_conversation(conversation_index, fields)
                    await importer.end_conversation()
            elif prefix == _MESSAGES and event == "start_array":
                await importer.start_conversation(conversation_index, fields)
            elif prefix == _MESSAGE and event == "start_map":
                message_index += 1
                builder = ijson.ObjectBuilder()
                builder.event(event, value)
            elif key is not None and prefix == f"{_CONVERSATION}.{key}" and key != "messages":
                if event in ("start_map", "start_array"):
                    raise _invalid(f"conversations[{conversation_index}].{key}", "not a value")
                fields[key] = value
        del events[:]
        if not chunk:
            break
    _check_header(header)
    if importer.attachments_restored:
        used = await attachments_repo.user_attachment_bytes(conn, user_id=user.user_id)
        if used > max_user_bytes:
            raise PayloadTooLarge(
                "The archive's files do not fit your attachment storage quota",
                details={"quota": "user_bytes", "limit": max_user_bytes, "used": used},
            )
    IMPORTED_MESSAGES.inc(importer.messages)
    return {
        "conversations": len(importer.conversation_ids),
        "messages": importer.messages,
        "attachments_restored": importer.attachments_restored,
        "attachments_skipped": importer.attachments_skipped,
        "conversation_ids": importer.conversation_ids,
    }


def _check_header(header: dict[str, Any]) -> None:
    if header.get("format") != EXPORT_FORMAT:
        raise _invalid("format", f"expected {EXPORT_FORMAT!r} (an export of this service)")
    if header.get("version") != EXPORT_VERSION:
        raise _invalid("version", f"expected {EXPORT_VERSION}")
