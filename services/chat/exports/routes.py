"""HTTP routes of export (streamed JSON, Markdown or ZIP with the files) and import."""

from __future__ import annotations

import contextlib
import tempfile
import zipfile
from datetime import UTC, datetime
from typing import IO, Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from starlette.responses import Response, StreamingResponse

from services.chat import repository as chat_repo
from services.chat.attachments.storage import ObjectStore, StorageError
from services.chat.attachments.uploads import UnsupportedType
from services.chat.exports.archive import DOCUMENT, ArchiveFiles
from services.chat.exports.service import IMPORTS, import_export, stream_export
from services.chat.schemas import Envelope, ImportResult, error_responses
from services.chat.settings import ChatSettings
from services.chat.unit_of_work import Database
from shared.auth import CurrentUser
from shared.envelope import ok
from shared.errors import AppError, NotFound, PayloadTooLarge, ValidationFailed

router = APIRouter(prefix="/chat")

ConversationId = Annotated[int, Path(ge=1, lt=2**31)]
# Spooled imports stay in memory up to this size, then move to a temporary file.
_SPOOL_IN_MEMORY = 1024 * 1024
_MEDIA = {
    "json": "application/json",
    "markdown": "text/markdown; charset=utf-8",
    "zip": "application/zip",
}
_SUFFIX = {"json": "json", "markdown": "md", "zip": "zip"}
_ZIP_TYPES = frozenset({"application/zip", "application/x-zip-compressed"})


def _download(chunks: Any, fmt: str, name: str) -> StreamingResponse:
    return StreamingResponse(
        chunks,
        media_type=_MEDIA[fmt],
        headers={
            "Content-Disposition": f'attachment; filename="{name}.{_SUFFIX[fmt]}"',
            "Cache-Control": "private, no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


_EXPORT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"application/json": {}, "text/markdown": {}, "application/zip": {}},
        "description": "The export, streamed (see README: Export and import)",
    },
    **error_responses(401, 404, 422),
}


@router.get("/export", response_class=Response, responses=_EXPORT_RESPONSES)
async def export_account(
    user: CurrentUser,
    db: Database,
    request: Request,
    format: Annotated[
        Literal["json", "zip"],
        Query(description="`json`: attachments as links; `zip`: export.json and the files"),
    ] = "json",
) -> Response:
    """Export all the caller's conversations and messages, streamed: JSON (attachments as
    links) or a ZIP archive with the attachments' files."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    chunks = stream_export(
        db, user, conversation_id=None, fmt=format, store=request.app.state.store
    )
    return _download(chunks, format, f"chat-export-{stamp}")


@router.get(
    "/conversations/{conversation_id}/export", response_class=Response, responses=_EXPORT_RESPONSES
)
async def export_conversation(
    conversation_id: ConversationId,
    user: CurrentUser,
    db: Database,
    request: Request,
    format: Annotated[Literal["json", "markdown", "zip"], Query()] = "json",
) -> Response:
    """Export one conversation as JSON (importable), Markdown (readable) or a ZIP archive
    (importable, with the files), streamed."""
    async with db.acquire() as conn:
        if (
            await chat_repo.get_conversation(
                conn, user_id=user.user_id, conversation_id=conversation_id
            )
            is None
        ):
            raise NotFound(f"Conversation {conversation_id} not found")
    chunks = stream_export(
        db, user, conversation_id=conversation_id, fmt=format, store=request.app.state.store
    )
    return _download(chunks, format, f"conversation-{conversation_id}")


@router.post(
    "/import",
    status_code=201,
    response_model=Envelope[ImportResult],
    responses=error_responses(401, 413, 415, 422),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "application/zip": {"schema": {"type": "string", "format": "binary"}},
            },
            "description": "An export: JSON, or a ZIP archive (`format=zip`) with the files",
        }
    },
)
async def import_history(user: CurrentUser, db: Database, request: Request) -> Response:
    """Import an export into the caller's account: its conversations and messages come back
    with their times and states (new ids), and from a ZIP archive their files too; all or
    nothing."""
    settings: ChatSettings = request.app.state.settings
    store: ObjectStore = request.app.state.store
    limit = settings.import_max_bytes
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json" and content_type not in _ZIP_TYPES:
        raise _unsupported()
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Import exceeds {limit} bytes", headers={"Connection": "close"})
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY) as spool:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(
                    f"Import exceeds {limit} bytes", headers={"Connection": "close"}
                )
            spool.write(chunk)
        if size == 0:
            raise ValidationFailed("The body is empty; send an export")
        spool.seek(0)
        files: ArchiveFiles | None = None
        try:
            with contextlib.ExitStack() as opened:
                source: IO[bytes] = spool
                if content_type in _ZIP_TYPES:
                    archive = opened.enter_context(_open_archive(spool))
                    source = opened.enter_context(_open_document(archive))
                    files = ArchiveFiles(
                        archive,
                        store,
                        max_file_bytes=settings.attachment_max_file_bytes,
                        allowed_types=settings.allowed_types,
                        keep_text_bytes=settings.attachment_context_max_bytes,
                    )
                async with db.acquire() as conn, conn.transaction():
                    data = await import_export(
                        conn,
                        user,
                        source,
                        files=files,
                        max_user_bytes=settings.attachment_max_user_bytes,
                    )
        except BaseException as exc:
            if files is not None and files.keys:
                with contextlib.suppress(StorageError):
                    await store.delete(files.keys)  # the rows were rolled back
            if isinstance(exc, AppError):
                IMPORTS.labels("refused").inc()
            raise
    IMPORTS.labels("completed").inc()
    return ok(
        data,
        f"Imported {data['conversations']} conversations and {data['messages']} messages",
        status_code=201,
    )


def _open_archive(spool: Any) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(spool)
    except zipfile.BadZipFile as exc:
        raise ValidationFailed("The body is not a ZIP archive") from exc


def _open_document(archive: zipfile.ZipFile) -> IO[bytes]:
    try:
        return archive.open(DOCUMENT)
    except KeyError as exc:
        raise ValidationFailed(f"The archive has no {DOCUMENT}") from exc


def _unsupported() -> AppError:
    return UnsupportedType(
        "Send the export as application/json", details={"expected": "application/json"}
    )
