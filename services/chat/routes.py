"""HTTP routes of the chat service (`/chat/...`): parse, authorise, call one service, answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Header, Path, Query, Request
from starlette.responses import Response, StreamingResponse

from services.chat.ai_jobs import JobRunner, job_event_stream, parse_last_event_id, sse
from services.chat.regenerations import regeneration_service
from services.chat.schemas import (
    AgentCreate,
    AgentList,
    AgentPublic,
    AgentRef,
    AgentUpdate,
    AIReply,
    AIResponseRequest,
    BatchList,
    BatchPublic,
    ConversationCreate,
    ConversationList,
    ConversationRef,
    ConversationSummary,
    ConversationUpdate,
    Envelope,
    JobPublic,
    MarkRead,
    MessageCreate,
    MessageCreated,
    MessageList,
    MessageRef,
    ReadState,
    RegenerationCreate,
    RegenerationEstimate,
    RegenerationResume,
    SearchResults,
    SessionList,
    error_responses,
)
from services.chat.service import (
    AIQuota,
    AIReplyFailed,
    agent_service,
    ai_service,
    conversation_service,
    message_service,
    search_service,
)
from services.chat.settings import ChatSettings
from services.chat.unit_of_work import Connection, Database, Idempotent, WriteResult, run_write
from shared.auth import AdminUser, CurrentUser
from shared.envelope import ok
from shared.tokens import Principal

router = APIRouter(prefix="/chat")

Limit = Annotated[int, Query(ge=1, le=100, description="Page size, at most 100")]
Offset = Annotated[int, Query(ge=0, le=1_000_000, description="Rows to skip (prefer `cursor`)")]
Cursor = Annotated[
    str | None,
    Query(max_length=200, description="`next_cursor` of the previous page (keyset pagination)"),
]
ConversationId = Annotated[int, Path(ge=1, lt=2**31)]
AgentId = Annotated[int, Path(ge=1, lt=2**31)]


# --- conversations -------------------------------------------------------------------------------


@router.get(
    "/conversations",
    response_model=Envelope[ConversationList],
    responses=error_responses(401, 422, 429),
)
async def list_conversations(
    user: CurrentUser,
    db: Database,
    limit: Limit = 20,
    offset: Offset = 0,
    cursor: Cursor = None,
    archived: Annotated[bool | None, Query(description="Only (un)archived ones")] = None,
) -> Response:
    """List the caller's conversations, pinned first, then newest first."""
    async with db.acquire() as conn:
        data = await conversation_service.list(
            conn, user, limit=limit, offset=offset, cursor=cursor, archived=archived
        )
    return ok(data, f"Found {data['total']} conversations")


@router.post(
    "/conversations",
    status_code=201,
    response_model=Envelope[ConversationRef],
    responses=error_responses(401, 422, 429),
)
async def create_conversation(
    body: ConversationCreate,
    user: CurrentUser,
    write: Idempotent,
) -> Response:
    """Create a conversation, optionally with an agent."""
    return await write(
        lambda c: conversation_service.create(c, user, body),
        message="Conversation created successfully",
        status_code=201,
    )


@router.get(
    "/conversations/{conversation_id}",
    response_model=Envelope[ConversationSummary],
    responses=error_responses(401, 404, 422, 429),
)
async def get_conversation(
    conversation_id: ConversationId, user: CurrentUser, db: Database
) -> Response:
    """Get one of the caller's conversations."""
    async with db.acquire() as conn:
        data = await conversation_service.get(conn, user, conversation_id)
    return ok(data, "Conversation found")


@router.put(
    "/conversations/{conversation_id}",
    response_model=Envelope[ConversationRef],
    responses=error_responses(401, 404, 422, 429),
)
async def update_conversation(
    conversation_id: ConversationId, body: ConversationUpdate, user: CurrentUser, conn: Connection
) -> Response:
    """Change a conversation's title, pin, archive flag, status or agent."""
    return await run_write(
        conn,
        lambda c: conversation_service.update(c, user, conversation_id, body),
        message="Conversation updated successfully",
    )


@router.delete(
    "/conversations/{conversation_id}",
    response_model=Envelope[ConversationRef],
    responses=error_responses(401, 404, 422, 429),
)
async def delete_conversation(
    conversation_id: ConversationId, user: CurrentUser, conn: Connection, request: Request
) -> Response:
    """Delete a conversation with its messages, attachments and session history."""
    response = await run_write(
        conn,
        lambda c: conversation_service.delete(c, user, conversation_id),
        message="Conversation deleted successfully",
    )
    # After the commit: the deleted attachments' files go now (the janitor's sweep retries).
    await request.app.state.janitor.purge_quietly()
    return response


# --- read state and sessions ---------------------------------------------------------------------


@router.post(
    "/conversations/{conversation_id}/read",
    response_model=Envelope[ReadState],
    responses=error_responses(401, 404, 422, 429),
)
async def mark_conversation_read(
    conversation_id: ConversationId,
    user: CurrentUser,
    write: Idempotent,
    body: MarkRead | None = None,
) -> Response:
    """Mark the conversation read up to a message (default: its latest). The read pointer only
    moves forward: marking an earlier message changes nothing. Answers the pointer and the
    unread count (agent messages after it)."""
    return await write(
        lambda c: conversation_service.mark_read(c, user, conversation_id, body or MarkRead()),
        message="Conversation marked read",
    )


@router.get(
    "/conversations/{conversation_id}/sessions",
    response_model=Envelope[SessionList],
    responses=error_responses(401, 404, 422, 429),
)
async def list_sessions(
    conversation_id: ConversationId,
    user: CurrentUser,
    db: Database,
    limit: Limit = 20,
    offset: Offset = 0,
) -> Response:
    """The conversation's sessions, newest first: bursts of messages with no gap of
    CHAT_SESSION_IDLE_MINUTES or more between them, with their message count and duration."""
    async with db.acquire() as conn:
        data = await conversation_service.sessions(
            conn, user, conversation_id, limit=limit, offset=offset
        )
    return ok(data, f"Found {data['total']} sessions")


# --- messages ------------------------------------------------------------------------------------


@router.get(
    "/conversations/{conversation_id}/messages",
    response_model=Envelope[MessageList],
    responses=error_responses(401, 404, 422, 429),
)
async def list_messages(
    conversation_id: ConversationId,
    user: CurrentUser,
    db: Database,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size, at most 100")] = 50,
    offset: Offset = 0,
    cursor: Cursor = None,
    order: Annotated[
        Literal["desc", "asc"], Query(description="`desc`: newest first; `asc`: oldest first")
    ] = "desc",
) -> Response:
    """List a conversation's messages, newest first by default."""
    async with db.acquire() as conn:
        data = await message_service.list(
            conn, user, conversation_id, limit=limit, offset=offset, cursor=cursor, order=order
        )
    return ok(data, f"Found {data['total']} messages")


@router.post(
    "/conversations/{conversation_id}/messages",
    status_code=201,
    response_model=Envelope[MessageCreated],
    responses=error_responses(401, 403, 404, 422, 429),
)
async def add_message(
    conversation_id: ConversationId,
    body: MessageCreate,
    user: CurrentUser,
    write: Idempotent,
    request: Request,
) -> Response:
    """Add a message to a conversation (users post as `user`)."""
    settings: ChatSettings = request.app.state.settings
    return await write(
        lambda c: message_service.add(
            c, user, conversation_id, body, session_idle=settings.session_idle
        ),
        message="Message added successfully",
        status_code=201,
    )


@router.delete(
    "/conversations/{conversation_id}/messages/{message_id}",
    response_model=Envelope[MessageRef],
    responses=error_responses(401, 404, 422, 429),
)
async def delete_message(
    conversation_id: ConversationId,
    message_id: Annotated[int, Path(ge=1, lt=2**31)],
    user: CurrentUser,
    conn: Connection,
    request: Request,
) -> Response:
    """Delete a message with its attachments (their files are deleted from storage)."""
    response = await run_write(
        conn,
        lambda c: message_service.delete(c, user, conversation_id, message_id),
        message="Message deleted successfully",
    )
    await request.app.state.janitor.purge_quietly()
    return response


# --- search --------------------------------------------------------------------------------------


@router.get(
    "/search", response_model=Envelope[SearchResults], responses=error_responses(401, 422, 429)
)
async def search_messages(
    user: CurrentUser,
    conn: Connection,
    query: Annotated[
        str,
        Query(
            min_length=1,
            max_length=500,
            description='Web-search syntax: words, "quoted phrases", `or`, `-excluded`',
        ),
    ],
    limit: Limit = 20,
    offset: Offset = 0,
    conversation_id: Annotated[int | None, Query(ge=1, lt=2**31)] = None,
    sender: Annotated[Literal["user", "agent"] | None, Query()] = None,
    date_from: Annotated[datetime | None, Query(description="Inclusive, ISO 8601")] = None,
    date_to: Annotated[datetime | None, Query(description="Exclusive, ISO 8601")] = None,
) -> Response:
    """Full-text search over the caller's own messages, best matches first."""
    data = await search_service.search(
        conn,
        user,
        query=query,
        conversation_id=conversation_id,
        sender=sender,
        date_from=date_from,
        date_to=date_to,
        limit=limit,
        offset=offset,
    )
    return ok(data, f"Found {data['total']} results")


# --- agents --------------------------------------------------------------------------------------


@router.get("/agents", response_model=Envelope[AgentList], responses=error_responses(401, 403, 422))
async def list_agents(
    user: CurrentUser,
    conn: Connection,
    limit: Limit = 20,
    offset: Offset = 0,
    include_inactive: Annotated[bool, Query(description="Retired agents too (admins)")] = False,
) -> Response:
    """List the agents a conversation can use."""
    data = await agent_service.list(
        conn, user, limit=limit, offset=offset, include_inactive=include_inactive
    )
    return ok(data, f"Found {data['total']} agents")


@router.get(
    "/agents/{agent_id}", response_model=Envelope[AgentPublic], responses=error_responses(401, 404)
)
async def get_agent(agent_id: AgentId, user: CurrentUser, conn: Connection) -> Response:
    """Get one agent."""
    return ok(await agent_service.get(conn, user, agent_id), "Agent found")


@router.post(
    "/agents",
    status_code=201,
    response_model=Envelope[AgentPublic],
    responses=error_responses(401, 403, 422),
)
async def create_agent(
    body: AgentCreate,
    admin: AdminUser,
    write: Idempotent,
) -> Response:
    """Create an agent (administrators)."""
    return await write(
        lambda c: agent_service.create(c, body),
        message="Agent created successfully",
        status_code=201,
    )


@router.put(
    "/agents/{agent_id}",
    response_model=Envelope[AgentPublic],
    responses=error_responses(401, 403, 404, 422),
)
async def update_agent(
    agent_id: AgentId, body: AgentUpdate, admin: AdminUser, conn: Connection
) -> Response:
    """Change an agent's settings (administrators)."""
    return await run_write(
        conn,
        lambda c: agent_service.update(c, agent_id, body),
        message="Agent updated successfully",
    )


@router.delete(
    "/agents/{agent_id}",
    response_model=Envelope[AgentRef],
    responses=error_responses(401, 403, 404),
)
async def delete_agent(agent_id: AgentId, admin: AdminUser, conn: Connection) -> Response:
    """Retire an agent (administrators): it leaves the list; conversations keep their history."""
    return await run_write(
        conn, lambda c: agent_service.delete(c, agent_id), message="Agent deleted successfully"
    )


# --- AI replies ----------------------------------------------------------------------------------

JobId = Annotated[int, Path(ge=1, lt=2**63)]
PreferAsync = Annotated[
    str | None, Header(description="`respond-async`: answer 202 with the job at once")
]
StreamEvents = Annotated[
    bool, Query(description="Answer Server-Sent Events: tokens as generated, then the reply")
]
AI_REPLY_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"model": Envelope[JobPublic], "description": "Accepted (with `Prefer: respond-async`)"},
    **error_responses(401, 404, 422, 429, 502, 504),
}
# How long a cancel request waits for the worker to stop before answering 202.
CANCEL_WAIT_SECONDS = 10.0


@router.post(
    "/conversations/{conversation_id}/ai-response",
    response_model=Envelope[AIReply],
    responses=AI_REPLY_RESPONSES,
)
async def generate_ai_response(
    conversation_id: ConversationId,
    body: AIResponseRequest,
    user: CurrentUser,
    write: Idempotent,
    db: Database,
    request: Request,
    prefer: PreferAsync = None,
    stream: StreamEvents = False,
) -> Response:
    """Generate the agent's reply to `message` (stored first unless it is the latest message)."""
    settings: ChatSettings = request.app.state.settings
    created = await write.run(
        lambda c: ai_service.create_job(
            c,
            user,
            conversation_id,
            body,
            deadline_seconds=settings.ai_job_deadline_seconds,
            quota=_quota(settings),
            session_idle=settings.session_idle,
        ),
        message="AI job queued",
        status_code=202,
        one_statement=True,
    )
    return await _enqueue_and_answer(created, user, db, request, prefer, stream)


@router.post(
    "/conversations/{conversation_id}/messages/{message_id}/regenerate",
    response_model=Envelope[AIReply],
    responses=AI_REPLY_RESPONSES,
)
async def regenerate_reply(
    conversation_id: ConversationId,
    message_id: Annotated[int, Path(ge=1, lt=2**31)],
    user: CurrentUser,
    write: Idempotent,
    db: Database,
    request: Request,
    prefer: PreferAsync = None,
    stream: StreamEvents = False,
) -> Response:
    """Generate an agent reply again; the earlier one stays in the history as `superseded`."""
    settings: ChatSettings = request.app.state.settings
    created = await write.run(
        lambda c: ai_service.create_regeneration(
            c,
            user,
            conversation_id,
            message_id,
            deadline_seconds=settings.ai_job_deadline_seconds,
            quota=_quota(settings),
        ),
        message="AI job queued",
        status_code=202,
        one_statement=True,
    )
    return await _enqueue_and_answer(created, user, db, request, prefer, stream)


def _quota(settings: ChatSettings) -> AIQuota:
    return AIQuota(
        max_concurrent_jobs=settings.ai_max_concurrent_jobs,
        daily_tokens=settings.ai_daily_token_limit,
        daily_cost=settings.ai_daily_cost_limit,
    )


async def _enqueue_and_answer(
    created: WriteResult,
    user: Principal,
    db: asyncpg.Pool,
    request: Request,
    prefer: str | None,
    stream: bool,
) -> Response:
    """Sends a stored job to the workers and answers with its reply, or at once when asked to."""
    settings: ChatSettings = request.app.state.settings
    jobs: JobRunner = request.app.state.jobs
    job_id = int(created.data["job_id"])
    respond_async = prefer is not None and "respond-async" in prefer.lower()
    # A fresh job answered in this request: listen for its end before sending it.
    expected = jobs.expect(job_id) if not (stream or respond_async or created.replayed) else None
    if not created.replayed:
        # After the commit, so the worker finds the row; a job whose publish is lost (a crash
        # right here) stays queued until the sweeper re-sends it.
        try:
            await jobs.enqueue(job_id)
        except BaseException:
            if expected is not None:
                jobs.forget(job_id, expected)
            raise
    if stream:
        return _job_events(request, user, db, job_id, after="0-0", job=created.data["job"])
    if respond_async:
        return ok(
            created.data["job"],
            "AI job queued",
            status_code=202,
            headers={"Location": f"/chat/jobs/{job_id}", "Preference-Applied": "respond-async"},
        )
    finished = await jobs.wait(
        job_id,
        within_seconds=settings.ai_wait_timeout_seconds,
        is_final=lambda: ai_service.is_final(db, user, job_id),
        expected=expected,
    )
    if not finished:
        raise AIReplyFailed(
            504,
            "ai_timeout",
            f"The AI reply is not ready after {settings.ai_wait_timeout_seconds:g} s; "
            f"follow it at /chat/jobs/{job_id}",
            {"job_id": job_id},
        )
    announced = expected.result() if expected is not None and expected.done() else None
    if announced is not None and announced.reply is not None:
        # The worker's announcement carries the stored reply: no read of it.
        return ok(ai_service.reply_from_row(job_id, announced.reply), "AI response generated")
    return ok(await ai_service.reply(db, user, job_id), "AI response generated")


def _job_events(
    request: Request,
    user: Principal,
    db: asyncpg.Pool,
    job_id: int,
    *,
    after: str,
    job: dict[str, Any] | None = None,
) -> StreamingResponse:
    settings: ChatSettings = request.app.state.settings

    async def events() -> AsyncIterator[bytes]:
        if job is not None:
            yield sse("job", job)
        async for chunk in job_event_stream(
            request.app.state.redis,
            redis_prefix=settings.redis_prefix,
            job_id=job_id,
            after=after,
            is_final=lambda: ai_service.is_final(db, user, job_id),
            final_event=lambda: ai_service.final_event(db, user, job_id),
            max_seconds=settings.ai_job_deadline_seconds,
        ):
            yield chunk

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=Envelope[JobPublic],
    responses={
        202: {"model": Envelope[JobPublic], "description": "Cancellation requested, not done yet"},
        **error_responses(401, 404, 409),
    },
)
async def cancel_job(job_id: JobId, user: CurrentUser, db: Database, request: Request) -> Response:
    """Cancel an AI job: a queued one at once; a running one stops generating and keeps its
    partial reply as `incomplete` (tokens counted)."""
    job, final = await ai_service.cancel(
        db, request.app.state.jobs, user, job_id, wait=CANCEL_WAIT_SECONDS
    )
    if final:
        return ok(job, f"Job {job['status']}")
    return ok(job, "Cancellation requested", status_code=202)


@router.get(
    "/jobs/{job_id}/events",
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"},
        **error_responses(401, 404),
    },
)
async def follow_job(
    job_id: JobId,
    user: CurrentUser,
    db: Database,
    request: Request,
    last_event_id: Annotated[
        str | None, Header(description="Resume after this event (sent by EventSource itself)")
    ] = None,
) -> Response:
    """Follow an AI job as Server-Sent Events (`token`, `reset`, then `reply` or `error`)."""
    async with db.acquire() as conn:
        await ai_service.get_job(conn, user, job_id)  # 404 unless it is the caller's
    return _job_events(request, user, db, job_id, after=parse_last_event_id(last_event_id))


@router.get(
    "/jobs/{job_id}", response_model=Envelope[JobPublic], responses=error_responses(401, 404)
)
async def get_job(job_id: JobId, user: CurrentUser, db: Database) -> Response:
    """One of the caller's AI jobs: status, attempts, error, tokens, cost and timings."""
    async with db.acquire() as conn:
        data = await ai_service.get_job(conn, user, job_id)
    return ok(data, "Job found")


# --- batch regeneration (administrators) ---------------------------------------------------------

BatchId = Annotated[int, Path(ge=1, lt=2**63)]


@router.post(
    "/admin/regenerations",
    response_model=Envelope[BatchPublic],
    status_code=201,
    responses={
        200: {
            "model": Envelope[RegenerationEstimate] | Envelope[BatchPublic],
            "description": "The dry run's estimate, or the batch that already has this key",
        },
        **error_responses(401, 403, 409, 422),
    },
)
async def create_regeneration(
    body: RegenerationCreate, admin: AdminUser, conn: Connection, request: Request
) -> Response:
    """Re-generate the agent replies a selection names (agent, conversations, time range),
    through the AI job queue with at most `concurrency` jobs at once and within the budget.
    `dry_run` first: how many replies, and the estimated tokens and cost. The same `key` (by
    default: the same selection) answers the existing batch instead of starting another."""
    if body.dry_run:
        return ok(await regeneration_service.estimate(conn, body), "Dry run: nothing started")
    settings: ChatSettings = request.app.state.settings
    async with conn.transaction():
        batch, created = await regeneration_service.create(
            conn, admin, body, job_deadline_seconds=settings.ai_job_deadline_seconds
        )
    if batch["status"] == "running":
        # Also for an existing running batch: re-running the command nudges its dispatch.
        await request.app.state.jobs.dispatch_batch(batch["id"])
    if created:
        return ok(
            batch,
            "Batch started",
            status_code=201,
            headers={"Location": f"/chat/admin/regenerations/{batch['id']}"},
        )
    return ok(batch, f"Batch {batch['id']} already exists with this key; nothing new started")


@router.get(
    "/admin/regenerations",
    response_model=Envelope[BatchList],
    responses=error_responses(401, 403, 422),
)
async def list_regenerations(
    admin: AdminUser, conn: Connection, limit: Limit = 20, offset: Offset = 0
) -> Response:
    """Batch regenerations, newest first, with their progress."""
    return ok(await regeneration_service.list_batches(conn, limit=limit, offset=offset), "Batches")


@router.get(
    "/admin/regenerations/{batch_id}",
    response_model=Envelope[BatchPublic],
    responses=error_responses(401, 403, 404),
)
async def get_regeneration(batch_id: BatchId, admin: AdminUser, conn: Connection) -> Response:
    """A batch and its progress: done, failed, remaining, rate and ETA."""
    return ok(await regeneration_service.get(conn, batch_id), "Batch found")


@router.post(
    "/admin/regenerations/{batch_id}/cancel",
    response_model=Envelope[BatchPublic],
    responses=error_responses(401, 403, 404, 409),
)
async def cancel_regeneration(
    batch_id: BatchId, admin: AdminUser, conn: Connection, request: Request
) -> Response:
    """Stop a batch: nothing more starts, its queued jobs are cancelled, running ones finish."""
    async with conn.transaction():
        batch, cancelled_jobs = await regeneration_service.cancel(conn, batch_id)
    jobs: JobRunner = request.app.state.jobs
    for job_id in cancelled_jobs:
        await jobs.announce(job_id, "cancelled")
    return ok(batch, "Batch cancelled")


@router.post(
    "/admin/regenerations/{batch_id}/resume",
    response_model=Envelope[BatchPublic],
    responses=error_responses(401, 403, 404, 422),
)
async def resume_regeneration(
    batch_id: BatchId,
    admin: AdminUser,
    conn: Connection,
    request: Request,
    body: RegenerationResume | None = None,
) -> Response:
    """Run a stopped batch again from where it stopped, optionally with a larger budget, another
    concurrency, or its failed replies retried."""
    async with conn.transaction():
        batch = await regeneration_service.resume(conn, batch_id, body or RegenerationResume())
    await request.app.state.jobs.dispatch_batch(batch_id)
    return ok(batch, "Batch resumed")
