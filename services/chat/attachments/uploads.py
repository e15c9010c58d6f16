"""Receiving a multipart upload as it streams in: each file goes to the object store chunk by
chunk while its size, the caller's quota and its type are checked, so nothing over a limit is
ever kept and no file is ever whole in memory.

A refused file does not stop the reading: the rest of the body is read and dropped (up to a
bound), so the client gets its 413/415 as an ordinary answer rather than a reset connection,
and everything this request stored is deleted again.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter
from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header

from services.chat.attachments.file_types import (
    Refused,
    TypeCheck,
    claimed_type,
    sanitize_file_name,
)
from services.chat.attachments.storage import ObjectStore, ObjectWriter, StorageError
from shared.errors import AppError, PayloadTooLarge, ValidationFailed

FILES = Counter(
    "chat_attachment_files_total",
    "Attachment files received, by outcome (stored, too_large, over_quota, refused_type, "
    "storage_error, aborted).",
    ["outcome"],
)
BYTES = Counter(
    "chat_attachment_bytes_total",
    "Attachment bytes received, by the outcome of their file.",
    ["outcome"],
)
# A form field (the message's text) may be at most this large; files have their own limit.
MAX_FIELD_BYTES = 256 * 1024
# What one part's headers and boundary may add to its file's size in the body.
_PART_OVERHEAD = 16 * 1024


class UnsupportedType(AppError):
    status_code = 415
    code = "unsupported_media_type"
    default_message = "This type of file is not accepted"


@dataclass(frozen=True)
class UploadLimits:
    max_file_bytes: int
    max_files: int
    bytes_left: int  # the caller's quota still free
    allowed_types: frozenset[str]
    keep_text_bytes: int

    @property
    def max_body_bytes(self) -> int:
        """The most a valid request can be; a body past it is not read to the end."""
        return self.max_files * (self.max_file_bytes + _PART_OVERHEAD) + 2 * MAX_FIELD_BYTES


@dataclass(frozen=True)
class StoredFile:
    id: int
    key: str
    file_name: str
    file_type: str
    file_size: int
    sha256: str
    text: str | None


@dataclass
class Upload:
    fields: dict[str, str] = field(default_factory=dict)
    files: list[StoredFile] = field(default_factory=list)

    @property
    def keys(self) -> list[str]:
        return [stored.key for stored in self.files]

    def fingerprint(self, path: str) -> str:
        """What identifies the request for Idempotency-Key: its fields and its files' names,
        types and contents (by checksum), never the body's framing."""
        digest = hashlib.sha256(f"POST {path}\n".encode())
        for name in sorted(self.fields):
            digest.update(f"{name}={self.fields[name]}\n".encode())
        for stored in self.files:
            digest.update(f"{stored.file_name}|{stored.file_type}|{stored.sha256}\n".encode())
        return digest.hexdigest()


@dataclass
class _File:
    id: int
    key: str
    name: str
    writer: ObjectWriter
    check: TypeCheck
    hasher: Any = field(default_factory=hashlib.sha256)
    size: int = 0


class _Receiver:
    def __init__(
        self,
        store: ObjectStore,
        limits: UploadLimits,
        next_id: Callable[[], Awaitable[int]],
    ) -> None:
        self.store = store
        self.limits = limits
        self.next_id = next_id
        self.upload = Upload()
        self.error: AppError | None = None
        self.file: _File | None = None
        self.field_name: str | None = None
        self.field_value = bytearray()
        self.headers: dict[str, bytes] = {}
        self.stored_bytes = 0
        self.files_seen = 0

    def fail(self, error: AppError) -> None:
        if self.error is None:
            self.error = error

    async def begin_part(self) -> None:
        disposition, options = parse_options_header(self.headers.get("content-disposition", b""))
        if disposition != b"form-data" or b"name" not in options:
            self.fail(ValidationFailed("every part needs `Content-Disposition: form-data; name`"))
            return
        name = options[b"name"].decode("utf-8", "replace")
        if b"filename" not in options:
            self.field_name, self.field_value = name, bytearray()
            return
        self.files_seen += 1
        if self.error is not None:
            return
        if name not in ("files", "file"):
            self.fail(_field_error(name, "files go in the `files` field"))
            return
        if self.files_seen > self.limits.max_files:
            self.fail(
                ValidationFailed(
                    f"at most {self.limits.max_files} files per message",
                    details=[_detail("files", f"at most {self.limits.max_files} files")],
                )
            )
            return
        file_name = sanitize_file_name(options[b"filename"].decode("utf-8", "replace"))
        declared = self.headers.get("content-type", b"").decode("latin-1")
        kind = claimed_type(declared, file_name)
        attachment_id = await self.next_id()
        key = f"attachments/{attachment_id}"
        writer = await self.store.writer(key, content_type=kind)
        self.file = _File(
            attachment_id,
            key,
            file_name,
            writer,
            TypeCheck(kind, self.limits.allowed_types, self.limits.keep_text_bytes),
        )

    async def data(self, chunk: bytes) -> None:
        if self.field_name is not None:
            self.field_value += chunk
            if len(self.field_value) > MAX_FIELD_BYTES:
                self.fail(
                    PayloadTooLarge(f"field {self.field_name} exceeds {MAX_FIELD_BYTES} bytes")
                )
                self.field_name = None
            return
        current = self.file
        if current is None:
            return
        current.size += len(chunk)
        limits = self.limits
        try:
            if current.size > limits.max_file_bytes:
                raise _Stop(
                    "too_large",
                    PayloadTooLarge(
                        f"{current.name} exceeds the {limits.max_file_bytes}-byte limit per file",
                        details={"file_name": current.name, "limit": limits.max_file_bytes},
                    ),
                )
            if self.stored_bytes + current.size > limits.bytes_left:
                raise _Stop(
                    "over_quota",
                    PayloadTooLarge(
                        "Your attachment storage quota is used up",
                        details={"file_name": current.name, "quota": "user_bytes"},
                    ),
                )
            try:
                current.check.feed(chunk)
            except Refused as exc:
                raise _Stop("refused_type", _refused(current.name, exc)) from exc
            current.hasher.update(chunk)
            await current.writer.write(chunk)
        except _Stop as stop:
            await self._drop(current, stop.outcome)
            self.fail(stop.error)
        except StorageError as exc:
            await self._drop(current, "storage_error")
            self.fail(exc)

    async def end_part(self) -> None:
        if self.field_name is not None:
            try:
                self.upload.fields[self.field_name] = self.field_value.decode("utf-8")
            except UnicodeDecodeError:
                self.fail(_field_error(self.field_name, "must be UTF-8 text"))
            self.field_name = None
            return
        current, self.file = self.file, None
        if current is None:
            return
        try:
            kind = current.check.finish()
        except Refused as exc:
            await self._drop(current, "refused_type")
            self.fail(_refused(current.name, exc))
            return
        try:
            await current.writer.commit()
        except StorageError as exc:
            await self._drop(current, "storage_error", abort=False)
            self.fail(exc)
            return
        FILES.labels("stored").inc()
        BYTES.labels("stored").inc(current.size)
        self.stored_bytes += current.size
        self.upload.files.append(
            StoredFile(
                id=current.id,
                key=current.key,
                file_name=current.name,
                file_type=kind,
                file_size=current.size,
                sha256=current.hasher.hexdigest(),
                text=current.check.context_text(),
            )
        )

    async def _drop(self, current: _File, outcome: str, *, abort: bool = True) -> None:
        FILES.labels(outcome).inc()
        BYTES.labels(outcome).inc(current.size)
        if abort:
            await current.writer.abort()
        self.file = None

    async def discard(self) -> None:
        """Undoes what this request stored: its refusal (or the caller's) means no message."""
        if self.file is not None:
            await self._drop(self.file, "aborted")
        await discard(self.store, self.upload)


class _Stop(Exception):
    def __init__(self, outcome: str, error: AppError) -> None:
        self.outcome = outcome
        self.error = error


async def discard(store: ObjectStore, upload: Upload) -> None:
    """Deletes an upload's stored objects (best effort: a failure leaves orphans, not errors)."""
    if upload.files:
        with contextlib.suppress(StorageError):
            await store.delete(upload.keys)


async def receive_upload(
    body: AsyncIterator[bytes],
    content_type: str | None,
    *,
    store: ObjectStore,
    limits: UploadLimits,
    next_id: Callable[[], Awaitable[int]],
) -> Upload:
    """Reads a `multipart/form-data` body: text fields, and files (field `files`) stored under
    fresh ids as they arrive. Raises the first refusal (413, 415, 422) once the body is read,
    with nothing left stored."""
    kind, options = parse_options_header(content_type or "")
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise UnsupportedType(
            "Send the message and its files as multipart/form-data",
            details={"expected": "multipart/form-data"},
        )
    receiver = _Receiver(store, limits, next_id)
    events: list[tuple[str, Any]] = []
    header_name = bytearray()
    header_value = bytearray()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        events.append(
            ("header", (bytes(header_name).lower().decode("latin-1"), bytes(header_value)))
        )
        header_name.clear()
        header_value.clear()

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": lambda: events.append(("begin", None)),
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": lambda: events.append(("headers_done", None)),
            "on_part_data": lambda data, start, end: events.append(("data", data[start:end])),
            "on_part_end": lambda: events.append(("end", None)),
            "on_end": lambda: events.append(("finish", None)),
        },
    )
    received = 0
    finished = False
    try:
        async for chunk in body:
            received += len(chunk)
            if received > limits.max_body_bytes:
                raise PayloadTooLarge(f"Request body exceeds {limits.max_body_bytes} bytes")
            try:
                parser.write(chunk)
            except Exception as exc:  # python-multipart's parse errors share no base class
                raise ValidationFailed("The multipart body is malformed") from exc
            for event, value in events:
                if event == "begin":
                    receiver.headers = {}
                elif event == "header":
                    receiver.headers[value[0]] = value[1]
                elif event == "headers_done":
                    await receiver.begin_part()
                elif event == "data":
                    await receiver.data(value)
                elif event == "end":
                    await receiver.end_part()
                elif event == "finish":
                    finished = True
            events.clear()
        if not finished:
            raise ValidationFailed("The multipart body ended before its closing boundary")
        if receiver.error is not None:
            raise receiver.error
    except BaseException:
        await receiver.discard()
        raise
    return receiver.upload


def _refused(file_name: str, exc: Refused) -> UnsupportedType:
    return UnsupportedType(
        f"{file_name}: {exc}",
        details={
            "file_name": file_name,
            "claimed_type": exc.claimed,
            "detected_type": exc.detected,
        },
    )


def _detail(name: str, message: str) -> dict[str, Any]:
    return {"loc": ["body", name], "msg": message, "type": "value_error"}


def _field_error(name: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"{name}: {message}", details=[_detail(name, message)])
