"""HTTP routes of export (streamed JSON or Markdown) and import."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from starlette.responses import Response, StreamingResponse

from services.chat import repository as chat_repo
from services.chat.attachments.uploads import UnsupportedType
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
_MEDIA = {"json": "application/json", "markdown": "text/markdown; charset=utf-8"}
_SUFFIX = {"json": "json", "markdown": "md"}


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
        "content": {"application/json": {}, "text/markdown": {}},
        "description": "The export, streamed (see README: Export and import)",
    },
    **error_responses(401, 404, 422),
}


@router.get("/export", response_class=Response, responses=_EXPORT_RESPONSES)
async def export_account(
    user: CurrentUser,
    db: Database,
    format: Annotated[Literal["json"], Query(description="Only `json` for a whole account")] = (
        "json"
    ),
) -> Response:
    """Export all the caller's conversations and messages (attachments as links), streamed."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    chunks = stream_export(db, user, conversation_id=None, fmt=format)
    return _download(chunks, format, f"chat-export-{stamp}")


@router.get(
    "/conversations/{conversation_id}/export", response_class=Response, responses=_EXPORT_RESPONSES
)
async def export_conversation(
    conversation_id: ConversationId,
    user: CurrentUser,
    db: Database,
    format: Annotated[Literal["json", "markdown"], Query()] = "json",
) -> Response:
    """Export one conversation as JSON (importable) or Markdown (readable), streamed."""
    async with db.acquire() as conn:
        if (
            await chat_repo.get_conversation(
                conn, user_id=user.user_id, conversation_id=conversation_id
            )
            is None
        ):
            raise NotFound(f"Conversation {conversation_id} not found")
    chunks = stream_export(db, user, conversation_id=conversation_id, fmt=format)
    return _download(chunks, format, f"conversation-{conversation_id}")


@router.post(
    "/import",
    status_code=201,
    response_model=Envelope[ImportResult],
    responses=error_responses(401, 413, 415, 422),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
            "description": "A JSON export (`GET /chat/export` or a conversation's export)",
        }
    },
)
async def import_history(user: CurrentUser, db: Database, request: Request) -> Response:
    """Import a JSON export into the caller's account: its conversations and messages come back
    with their times and states (new ids); all or nothing."""
    settings: ChatSettings = request.app.state.settings
    limit = settings.import_max_bytes
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
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
            raise ValidationFailed("The body is empty; send a JSON export")
        spool.seek(0)
        try:
            async with db.acquire() as conn, conn.transaction():
                data = await import_export(conn, user, spool)
        except AppError:
            IMPORTS.labels("refused").inc()
            raise
    IMPORTS.labels("completed").inc()
    return ok(
        data,
        f"Imported {data['conversations']} conversations and {data['messages']} messages",
        status_code=201,
    )


def _unsupported() -> AppError:
    return UnsupportedType(
        "Send the export as application/json", details={"expected": "application/json"}
    )
