"""HTTP routes of attachments: a message with files (multipart), their list, and downloads."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from prometheus_client import Counter
from starlette.responses import RedirectResponse, Response, StreamingResponse

from services.chat import repository as chat_repo
from services.chat.attachments import repository as repo
from services.chat.attachments.service import attachment_service, public
from services.chat.attachments.storage import ObjectStore, content_disposition
from services.chat.attachments.uploads import UploadLimits, discard, receive_upload
from services.chat.schemas import (
    AttachmentList,
    AttachmentPublic,
    Envelope,
    MessageWithAttachments,
    error_responses,
)
from services.chat.settings import ChatSettings
from services.chat.unit_of_work import Database, Idempotent
from shared.auth import CurrentUser
from shared.envelope import ok
from shared.errors import NotFound, PayloadTooLarge

router = APIRouter(prefix="/chat")

DOWNLOADS = Counter(
    "chat_attachment_downloads_total",
    "Attachment downloads answered, by how (stream: through this service; redirect: a 302 to "
    "a pre-signed URL of the object store).",
    ["mode"],
)

ConversationId = Annotated[int, Path(ge=1, lt=2**31)]
MessageId = Annotated[int, Path(ge=1, lt=2**31)]
AttachmentId = Annotated[int, Path(ge=1, lt=2**31)]

_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "content": {
                            "type": "string",
                            "maxLength": 32000,
                            "description": "The message's text (may be empty when files come)",
                        },
                        "sender_type": {"type": "string", "enum": ["user", "agent"]},
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "One part per file; each part's Content-Type is "
                            "the type claimed, checked against the file's bytes",
                        },
                    },
                }
            }
        },
    }
}


@router.post(
    "/conversations/{conversation_id}/messages/upload",
    status_code=201,
    response_model=Envelope[MessageWithAttachments],
    responses=error_responses(401, 403, 404, 413, 415, 422, 429),
    openapi_extra=_UPLOAD_BODY,
)
async def upload_message(
    conversation_id: ConversationId,
    user: CurrentUser,
    write: Idempotent,
    db: Database,
    request: Request,
) -> Response:
    """Add a message with files (multipart/form-data: `content` and one or more `files`)."""
    settings: ChatSettings = request.app.state.settings
    store: ObjectStore = request.app.state.store
    async with db.acquire() as conn:
        if (
            await chat_repo.get_conversation(
                conn, user_id=user.user_id, conversation_id=conversation_id
            )
            is None
        ):
            raise NotFound(f"Conversation {conversation_id} not found")
        used = await repo.user_attachment_bytes(conn, user_id=user.user_id)
    limits = UploadLimits(
        max_file_bytes=settings.attachment_max_file_bytes,
        max_files=settings.attachment_max_files,
        bytes_left=max(0, settings.attachment_max_user_bytes - used),
        allowed_types=settings.allowed_types,
        keep_text_bytes=settings.attachment_context_max_bytes,
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_body_bytes:
        # Refused unread: the connection is closed rather than drained.
        raise PayloadTooLarge(
            f"Request body exceeds {limits.max_body_bytes} bytes", headers={"Connection": "close"}
        )

    async def next_id() -> int:
        async with db.acquire() as conn:
            return await repo.next_attachment_id(conn)

    upload = await receive_upload(
        request.stream(),
        request.headers.get("content-type"),
        store=store,
        limits=limits,
        next_id=next_id,
    )
    try:
        result = await write.run(
            lambda c: attachment_service.add_message(
                c,
                user,
                conversation_id,
                upload,
                max_user_bytes=settings.attachment_max_user_bytes,
                session_idle=settings.session_idle,
            ),
            message="Message added successfully",
            status_code=201,
            fingerprint=upload.fingerprint(request.url.path),
        )
    except BaseException:
        await discard(store, upload)
        raise
    if result.replayed:  # the first request's files are the message's; these are spare copies
        await discard(store, upload)
    return result.response()


@router.get(
    "/conversations/{conversation_id}/messages/{message_id}/attachments",
    response_model=Envelope[AttachmentList],
    responses=error_responses(401, 404),
)
async def list_attachments(
    conversation_id: ConversationId, message_id: MessageId, user: CurrentUser, db: Database
) -> Response:
    """A message's attachments: name, verified type, size and download URL."""
    async with db.acquire() as conn:
        data = await attachment_service.list_for_message(conn, user, conversation_id, message_id)
    return ok(data, f"Found {data['total']} attachments")


@router.get(
    "/attachments/{attachment_id}",
    response_model=Envelope[AttachmentPublic],
    responses=error_responses(401, 404),
)
async def get_attachment(attachment_id: AttachmentId, user: CurrentUser, db: Database) -> Response:
    """One of the caller's attachments (its description; the bytes are at `download_url`)."""
    async with db.acquire() as conn:
        row = await attachment_service.get(conn, user, attachment_id)
    data = {
        **public(row),
        "message_id": row["message_id"],
        "conversation_id": row["conversation_id"],
        "sha256": row["sha256"],
    }
    return ok(data, "Attachment found")


@router.get(
    "/attachments/{attachment_id}/content",
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "The file's bytes"},
        302: {"description": "CHAT_S3_DOWNLOAD_MODE=redirect: a short-lived pre-signed URL"},
        **error_responses(401, 404, 503),
    },
)
async def download_attachment(
    attachment_id: AttachmentId, user: CurrentUser, db: Database, request: Request
) -> Response:
    """Download one of the caller's files, byte for byte as uploaded."""
    async with db.acquire() as conn:
        row = await attachment_service.get(conn, user, attachment_id)
    if row["file_path"] is None:  # a row with only the seed's columns: no file was stored
        raise NotFound(f"Attachment {attachment_id} has no stored file")
    store: ObjectStore = request.app.state.store
    headers = {
        "Content-Disposition": content_disposition(row["file_name"]),
        # The bytes were checked at upload, but a browser must still never render them as ours.
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
        "Cache-Control": "private, no-store",
    }
    url = await store.download_url(
        row["file_path"], file_name=row["file_name"], content_type=row["file_type"]
    )
    if url is not None:
        DOWNLOADS.labels("redirect").inc()
        return RedirectResponse(
            url, status_code=302, headers={"Cache-Control": "private, no-store"}
        )
    chunks = store.read(row["file_path"])
    # The first chunk is read before answering: a store failure is then a 503, not a cut body.
    first = await anext(chunks, b"")

    async def body() -> AsyncIterator[bytes]:
        try:
            yield first
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]

    DOWNLOADS.labels("stream").inc()
    headers["Content-Length"] = str(row["file_size"])
    if row["sha256"]:
        headers["ETag"] = f'"{row["sha256"]}"'
    return StreamingResponse(body(), media_type=row["file_type"], headers=headers)
