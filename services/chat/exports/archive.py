"""Exports as ZIP archives with the attachments' bytes, written as a stream, and read back.

Writing: `export.json` (the JSON export, each attachment with its `archive_path`) and then every
file at `attachments/<id>/<name>`, compressed into an in-memory sink that is emptied into the
response every 64 KiB; entries carry data descriptors, so nothing needs seeking and no file is
held whole. Reading (an import): every file the export lists is checked again as an upload is
(size, allowed type against its bytes) and stored under a new id.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import anyio

from services.chat.attachments import repository as attachments_repo
from services.chat.attachments.file_types import (
    TEXT_TYPES,
    Refused,
    TypeCheck,
    claimed_type,
    sanitize_file_name,
)
from services.chat.attachments.storage import CHUNK_BYTES, ObjectStore
from services.chat.attachments.uploads import StoredFile, UnsupportedType
from shared.db.pool import Conn
from shared.errors import PayloadTooLarge

DOCUMENT = "export.json"
FLUSH_BYTES = 64 * 1024


def archive_path(attachment_id: int, file_name: str) -> str:
    return f"attachments/{attachment_id}/{file_name}"


class _Sink(io.RawIOBase):
    """Where zipfile writes; not seekable, so zipfile writes data descriptors after entries."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.buffer += data
        return len(data)

    def take(self) -> bytes:
        out = bytes(self.buffer)
        self.buffer.clear()
        return out


def _entry(name: str, *, deflate: bool) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=datetime.now(UTC).timetuple()[:6])
    # Text shrinks; images and PDFs are compressed already.
    info.compress_type = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    return info


async def write_archive(
    document: AsyncIterator[bytes], files: AsyncIterator[Any], store: ObjectStore
) -> AsyncIterator[bytes]:
    """The archive's bytes: `document` as export.json, then each of `files` (records with
    id, file_path, file_name, file_type) read from `store`."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", allowZip64=True) as archive:
        with archive.open(_entry(DOCUMENT, deflate=True), "w", force_zip64=True) as entry:
            async for chunk in document:
                entry.write(chunk)
                if len(sink.buffer) >= FLUSH_BYTES:
                    yield sink.take()
        async for row in files:
            name = archive_path(row["id"], row["file_name"])
            deflate = row["file_type"] in TEXT_TYPES
            with archive.open(_entry(name, deflate=deflate), "w", force_zip64=True) as entry:
                async for chunk in store.read(row["file_path"]):
                    entry.write(chunk)
                    if len(sink.buffer) >= FLUSH_BYTES:
                        yield sink.take()
    yield sink.take()  # the rest and the central directory


class ArchiveFiles:
    """The files of an archive being imported, stored as they are attached to their messages;
    `keys` lists what was stored, for the caller to delete if the import fails."""

    def __init__(
        self,
        archive: zipfile.ZipFile,
        store: ObjectStore,
        *,
        max_file_bytes: int,
        allowed_types: frozenset[str],
        keep_text_bytes: int,
    ) -> None:
        self.archive = archive
        self.store = store
        self.max_file_bytes = max_file_bytes
        self.allowed_types = allowed_types
        self.keep_text_bytes = keep_text_bytes
        self.names = set(archive.namelist())
        self.keys: list[str] = []

    async def restore(self, conn: Conn, listed: dict[str, Any]) -> StoredFile | None:
        """Stores the file an attachment of the export names (None when the archive does not
        hold it); 413/415 when it would not be accepted as an upload."""
        path = listed.get("archive_path")
        if not isinstance(path, str) or path not in self.names:
            return None
        info = self.archive.getinfo(path)
        file_name = sanitize_file_name(str(listed.get("file_name") or path.rsplit("/", 1)[-1]))
        if info.file_size > self.max_file_bytes:
            raise _too_large(file_name, self.max_file_bytes)
        kind = claimed_type(str(listed.get("file_type") or ""), file_name)
        attachment_id = await attachments_repo.next_attachment_id(conn)
        key = f"attachments/{attachment_id}"
        writer = await self.store.writer(key, content_type=kind)
        check = TypeCheck(kind, self.allowed_types, self.keep_text_bytes)
        digest = hashlib.sha256()
        size = 0
        try:
            with self.archive.open(info) as source:
                while chunk := await anyio.to_thread.run_sync(source.read, CHUNK_BYTES):
                    size += len(chunk)
                    if size > self.max_file_bytes:
                        raise _too_large(file_name, self.max_file_bytes)
                    check.feed(chunk)
                    digest.update(chunk)
                    await writer.write(chunk)
            verified = check.finish()
            await writer.commit()
        except Refused as exc:
            await writer.abort()
            raise UnsupportedType(
                f"{file_name}: {exc}",
                details={
                    "file_name": file_name,
                    "claimed_type": exc.claimed,
                    "detected_type": exc.detected,
                },
            ) from exc
        except BaseException:
            await writer.abort()
            raise
        self.keys.append(key)
        return StoredFile(
            id=attachment_id,
            key=key,
            file_name=file_name,
            file_type=verified,
            file_size=size,
            sha256=digest.hexdigest(),
            text=check.context_text(),
        )


def _too_large(file_name: str, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"{file_name} exceeds the {limit}-byte limit per file",
        details={"file_name": file_name, "limit": limit},
    )
