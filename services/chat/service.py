"""The chat service's logic: conversations, messages, search and agents, on behalf of one caller.

Functions take a connection and the verified caller, run their statements and return the
envelope's `data`; the transaction around them is opened in exactly one place (`unit_of_work`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from services.chat import job_intake as intake
from services.chat import repository as repo
from services.chat.ai_jobs import JobRunner
from services.chat.pagination import (
    check_cursor_with_offset,
    decode_conversation_cursor,
    decode_message_cursor,
    encode_conversation_cursor,
    encode_message_cursor,
)
from services.chat.schemas import (
    AgentCreate,
    AgentUpdate,
    AIResponseRequest,
    ConversationCreate,
    ConversationUpdate,
    MarkRead,
    MessageCreate,
)
from shared.db.pool import Conn
from shared.envelope import error_body
from shared.errors import (
    AppError,
    Conflict,
    Forbidden,
    NotFound,
    RateLimited,
    ValidationFailed,
)
from shared.tokens import Principal


def _page_row(row: asyncpg.Record) -> dict[str, Any]:
    """A list row without the page query's `total` column."""
    item = dict(row)
    del item["total"]
    return item


def _message_row(row: asyncpg.Record) -> dict[str, Any]:
    """A message of a page, with its attachments as clients see them."""
    item = _page_row(row)
    item["attachments"] = [
        {
            "id": attachment_id,
            "file_name": file_name,
            "file_type": file_type,
            "file_size": file_size,
            "created_at": created_at,
            "download_url": f"/chat/attachments/{attachment_id}/content",
        }
        for attachment_id, file_name, file_type, file_size, created_at in item["attachments"]
    ]
    return item


def _conversation_not_found(conversation_id: int) -> NotFound:
    return NotFound(f"Conversation {conversation_id} not found")


def _unknown_agent(agent_id: int) -> ValidationFailed:
    return ValidationFailed(
        f"agent_id: no active agent {agent_id}",
        details=[
            {"loc": ["body", "agent_id"], "msg": "no such active agent", "type": "value_error"}
        ],
    )


class ConversationService:
    async def list(
        self,
        conn: Conn,
        user: Principal,
        *,
        limit: int,
        offset: int,
        cursor: str | None,
        archived: bool | None,
    ) -> dict[str, Any]:
        check_cursor_with_offset(cursor, offset)
        after = decode_conversation_cursor(cursor) if cursor else None
        rows, total = await repo.list_conversations(
            conn, user_id=user.user_id, limit=limit, offset=offset, after=after, archived=archived
        )
        has_more = len(rows) > limit
        page = rows[:limit]
        last = page[-1] if page else None
        return {
            "conversations": [_page_row(row) for row in page],
            "total": total,
            "limit": limit,
            "offset": offset,
            "next_cursor": (
                encode_conversation_cursor(last["is_pinned"], last["id"])
                if has_more and last
                else None
            ),
            "has_more": has_more,
        }

    async def create(self, conn: Conn, user: Principal, body: ConversationCreate) -> dict[str, Any]:
        if body.agent_id is not None:
            await agent_service.require_active(conn, body.agent_id)
        row = await repo.insert_conversation(
            conn,
            user_id=user.user_id,
            title=body.title,
            agent_id=body.agent_id,
            conversation_type=body.conversation_type,
        )
        await repo.add_event(
            conn,
            "conversation.created",
            user_id=user.user_id,
            data={
                "conversation_id": row["id"],
                "agent_id": row["agent_id"],
                "title": row["title"],
                "created_at": row["created_at"],
            },
        )
        return {"conversation_id": row["id"], "conversation": dict(row)}

    async def get(self, conn: Conn, user: Principal, conversation_id: int) -> dict[str, Any]:
        row = await repo.get_conversation(
            conn, user_id=user.user_id, conversation_id=conversation_id
        )
        if row is None:
            raise _conversation_not_found(conversation_id)
        return dict(row)

    async def update(
        self,
        conn: Conn,
        user: Principal,
        conversation_id: int,
        body: ConversationUpdate,
    ) -> dict[str, Any]:
        changes = body.model_dump(include=body.model_fields_set)
        if changes.get("agent_id") is not None:
            await agent_service.require_active(conn, changes["agent_id"])
        row = await repo.update_conversation(
            conn, user_id=user.user_id, conversation_id=conversation_id, changes=changes
        )
        if row is None:
            raise _conversation_not_found(conversation_id)
        await repo.add_event(
            conn,
            "conversation.updated",
            user_id=user.user_id,
            data={"conversation_id": row["id"], "changes": changes},
        )
        return {"conversation_id": row["id"], "conversation": dict(row)}

    async def delete(self, conn: Conn, user: Principal, conversation_id: int) -> dict[str, Any]:
        deleted = await repo.delete_conversation(
            conn, user_id=user.user_id, conversation_id=conversation_id
        )
        if deleted is None:
            raise _conversation_not_found(conversation_id)
        await repo.add_event(
            conn,
            "conversation.deleted",
            user_id=user.user_id,
            data={"conversation_id": conversation_id, "agent_id": deleted["agent_id"]},
        )
        return {"conversation_id": conversation_id}

    async def mark_read(
        self, conn: Conn, user: Principal, conversation_id: int, body: MarkRead
    ) -> dict[str, Any]:
        """Moves the owner's read pointer forward to the given message (default: the latest);
        a pointer already past it stays. The event is written only when the pointer moved."""
        target = await repo.read_target(
            conn, user_id=user.user_id, conversation_id=conversation_id, message_id=body.message_id
        )
        if target is None:
            raise _conversation_not_found(conversation_id)
        if body.message_id is not None and target["message_id"] is None:
            raise ValidationFailed(
                f"message_id: message {body.message_id} is not in conversation {conversation_id}",
                details=[
                    {
                        "loc": ["body", "message_id"],
                        "msg": "no such message in this conversation",
                        "type": "value_error",
                    }
                ],
            )
        read_up_to = target["message_id"] or target["latest_message_id"]
        if read_up_to is not None and await repo.advance_read_pointer(
            conn, conversation_id=conversation_id, message_id=read_up_to
        ):
            await repo.add_event(
                conn,
                "conversation.read",
                user_id=user.user_id,
                data={"conversation_id": conversation_id, "last_read_message_id": read_up_to},
            )
        state = await repo.read_state(conn, conversation_id=conversation_id)
        return {
            "conversation_id": conversation_id,
            "last_read_message_id": state["last_read_message_id"],
            "unread_count": state["unread_count"],
        }

    async def sessions(
        self, conn: Conn, user: Principal, conversation_id: int, *, limit: int, offset: int
    ) -> dict[str, Any]:
        if not await repo.owns_conversation(
            conn, user_id=user.user_id, conversation_id=conversation_id
        ):
            raise _conversation_not_found(conversation_id)
        rows, total = await repo.list_sessions(
            conn, conversation_id=conversation_id, limit=limit, offset=offset
        )
        return {
            "sessions": [_page_row(row) for row in rows],
            "total": total,
            "limit": limit,
            "offset": offset,
        }


class MessageService:
    async def list(
        self,
        conn: Conn,
        user: Principal,
        conversation_id: int,
        *,
        limit: int,
        offset: int,
        cursor: str | None,
        order: str,
    ) -> dict[str, Any]:
        check_cursor_with_offset(cursor, offset)
        after = decode_message_cursor(cursor, order) if cursor else None
        if not await repo.owns_conversation(
            conn, user_id=user.user_id, conversation_id=conversation_id
        ):
            raise _conversation_not_found(conversation_id)
        rows, total = await repo.list_messages(
            conn,
            conversation_id=conversation_id,
            limit=limit,
            offset=offset,
            order=order,
            after=after,
        )
        has_more = len(rows) > limit
        page = rows[:limit]
        return {
            "messages": [_message_row(row) for row in page],
            "total": total,
            "limit": limit,
            "offset": offset,
            "next_cursor": encode_message_cursor(page[-1]["id"], order) if has_more else None,
            "has_more": has_more,
        }

    async def add(
        self,
        conn: Conn,
        user: Principal,
        conversation_id: int,
        body: MessageCreate,
        *,
        session_idle: timedelta,
    ) -> dict[str, Any]:
        if body.sender_type == "agent" and not user.is_admin:
            raise Forbidden("Only agents (the AI worker) and administrators post agent messages")
        # Counter first: its row lock orders concurrent posts and proves ownership in one step.
        counted = await repo.record_new_message(
            conn, user_id=user.user_id, conversation_id=conversation_id
        )
        if counted is None:
            raise _conversation_not_found(conversation_id)
        row = await repo.insert_message(
            conn,
            conversation_id=conversation_id,
            content=body.content,
            sender=body.sender_type,
            content_type=body.content_type,
            message_type=body.message_type,
            at=counted["last_message_at"],
            agent_id=counted["agent_id"] if body.sender_type == "agent" else None,
        )
        await repo.record_session_activity(
            conn, conversation_id=conversation_id, at=row["created_at"], idle_gap=session_idle
        )
        await repo.add_event(
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
        }

    async def delete(
        self, conn: Conn, user: Principal, conversation_id: int, message_id: int
    ) -> dict[str, Any]:
        gone = await repo.delete_message(
            conn, user_id=user.user_id, conversation_id=conversation_id, message_id=message_id
        )
        if gone is None:
            raise NotFound(f"Message {message_id} not found in conversation {conversation_id}")
        await repo.add_event(
            conn,
            "message.deleted",
            user_id=user.user_id,
            data={
                "conversation_id": conversation_id,
                "message_id": message_id,
                "sender": gone["sender"],
                "agent_id": gone["agent_id"],
                "created_at": gone["created_at"],
            },
        )
        return {"message_id": message_id, "conversation_id": conversation_id}


def render_snippet(headline: str) -> str:
    """The headline (HTML-escaped in SQL already) with its highlight markers as <mark> tags."""
    return headline.replace(repo.HIGHLIGHT_START, "<mark>").replace(repo.HIGHLIGHT_STOP, "</mark>")


# Runs of `-` nest NOT operators in websearch_to_tsquery until Postgres gives up ("tsquery stack
# too small"); one `-` says the same thing.
_DASH_RUN = re.compile(r"-(?:\s*-)+")


def normalize_query(query: str) -> str:
    return _DASH_RUN.sub("-", query.replace("\x00", " "))


class SearchService:
    async def search(
        self,
        conn: Conn,
        user: Principal,
        *,
        query: str,
        conversation_id: int | None,
        sender: str | None,
        date_from: datetime | None,
        date_to: datetime | None,
        limit: int,
        offset: int,
    ) -> dict[str, Any]:
        try:
            rows, total = await repo.search_messages(
                conn,
                user_id=user.user_id,
                query=normalize_query(query),
                conversation_id=conversation_id,
                sender=sender,
                date_from=_as_utc(date_from),
                date_to=_as_utc(date_to),
                limit=limit,
                offset=offset,
            )
        except asyncpg.exceptions.InternalServerError as exc:
            # Postgres's query parser has fixed limits (operator nesting, query size) that no
            # check here can foresee; past them the query is the client's to simplify.
            if "tsquery" not in str(exc):
                raise
            raise ValidationFailed(
                "query: too complex to search; use fewer operators",
                details=[{"loc": ["query", "query"], "msg": "too complex", "type": "value_error"}],
            ) from exc
        results = [
            {
                "message_id": row["id"],
                "conversation_id": row["conversation_id"],
                "content": row["content"],
                "sender": row["sender"],
                "created_at": row["created_at"],
                "snippet": render_snippet(row["snippet"]),
                "rank": round(float(row["rank"]), 6),
            }
            for row in rows
        ]
        return {
            "results": results,
            "query": query,
            "total": total,
            "limit": limit,
            "offset": offset,
        }


def _as_utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


class AgentService:
    async def list(
        self,
        conn: Conn,
        user: Principal,
        *,
        limit: int,
        offset: int,
        include_inactive: bool,
    ) -> dict[str, Any]:
        if include_inactive and not user.is_admin:
            raise Forbidden("Only administrators see retired agents")
        rows, total = await repo.list_agents(
            conn, include_inactive=include_inactive, limit=limit, offset=offset
        )
        return {"agents": [dict(r) for r in rows], "total": total, "limit": limit, "offset": offset}

    async def get(self, conn: Conn, user: Principal, agent_id: int) -> dict[str, Any]:
        row = await repo.get_agent(conn, agent_id=agent_id, include_inactive=user.is_admin)
        if row is None:
            raise NotFound(f"Agent {agent_id} not found")
        return dict(row)

    async def require_active(self, conn: Conn, agent_id: int) -> None:
        if await repo.get_agent(conn, agent_id=agent_id, include_inactive=False) is None:
            raise _unknown_agent(agent_id)

    async def create(self, conn: Conn, body: AgentCreate) -> dict[str, Any]:
        row = await repo.insert_agent(conn, fields=body.model_dump())
        return dict(row)

    async def update(self, conn: Conn, agent_id: int, body: AgentUpdate) -> dict[str, Any]:
        row = await repo.update_agent(
            conn, agent_id=agent_id, changes=body.model_dump(include=body.model_fields_set)
        )
        if row is None:
            raise NotFound(f"Agent {agent_id} not found")
        return dict(row)

    async def delete(self, conn: Conn, agent_id: int) -> dict[str, Any]:
        if not await repo.deactivate_agent(conn, agent_id=agent_id):
            raise NotFound(f"Agent {agent_id} not found")
        return {"agent_id": agent_id}


conversation_service = ConversationService()
message_service = MessageService()
search_service = SearchService()
agent_service = AgentService()


@dataclass(frozen=True, slots=True)
class AIQuota:
    max_concurrent_jobs: int
    daily_tokens: int
    daily_cost: float


FINAL_JOB_STATUSES = frozenset({"completed", "failed", "cancelled", "incomplete"})
# A failed job's error code → the status the caller gets: the model timing out is a gateway
# timeout, anything else the model provider did wrong is a bad gateway.
_FAILURE_STATUS = {"llm_timeout": 504}


class AIService:
    async def create_job(
        self,
        conn: Conn,
        user: Principal,
        conversation_id: int,
        body: AIResponseRequest,
        *,
        deadline_seconds: int,
        quota: AIQuota,
        session_idle: timedelta,
    ) -> dict[str, Any]:
        """Stores the job (and the user's message first, unless it is already the latest one,
        so the history stays whole). One statement, atomic alone: without an Idempotency-Key it
        runs outside a transaction block, committed when it returns; then the caller enqueues
        (services/chat/job_intake.py)."""
        stored = await intake.take_ai_request(
            conn,
            conversation_id=conversation_id,
            user_id=user.user_id,
            agent_id=body.agent_id,
            message=body.message,
            include_context=body.include_context,
            deadline_seconds=deadline_seconds,
            max_concurrent_jobs=quota.max_concurrent_jobs,
            daily_tokens=quota.daily_tokens,
            daily_cost=quota.daily_cost,
            session_idle=session_idle,
        )
        if stored is None:
            raise _conversation_not_found(conversation_id)
        return _stored_job(stored, quota)

    async def create_regeneration(
        self,
        conn: Conn,
        user: Principal,
        conversation_id: int,
        message_id: int,
        *,
        deadline_seconds: int,
        quota: AIQuota,
    ) -> dict[str, Any]:
        """A job that answers the same user message again; the earlier reply is kept (marked
        `superseded` when the new one is stored). One statement, as `create_job`."""
        stored = await intake.take_regeneration_request(
            conn,
            conversation_id=conversation_id,
            user_id=user.user_id,
            message_id=message_id,
            deadline_seconds=deadline_seconds,
            max_concurrent_jobs=quota.max_concurrent_jobs,
            daily_tokens=quota.daily_tokens,
            daily_cost=quota.daily_cost,
        )
        if stored is None:
            raise _conversation_not_found(conversation_id)
        if stored["refusal"] == "no_reply":
            raise NotFound(f"No agent reply {message_id} in conversation {conversation_id}")
        if stored["refusal"] == "no_prompt":
            raise ValidationFailed("This reply answers no user message; there is nothing to redo")
        return _stored_job(stored, quota)

    async def get_job(self, conn: Conn, user: Principal, job_id: int) -> dict[str, Any]:
        row = await repo.get_job(conn, user_id=user.user_id, job_id=job_id)
        if row is None:
            raise NotFound(f"Job {job_id} not found")
        return dict(row)

    async def is_final(self, db: asyncpg.Pool, user: Principal, job_id: int) -> bool:
        async with db.acquire() as conn:
            row = await repo.get_job(conn, user_id=user.user_id, job_id=job_id)
        return row is not None and row["status"] in FINAL_JOB_STATUSES

    async def cancel(
        self, db: asyncpg.Pool, jobs: JobRunner, user: Principal, job_id: int, *, wait: float
    ) -> tuple[dict[str, Any], bool]:
        """Cancels a queued job at once, or asks the worker to stop a running one (its partial
        reply is kept as `incomplete`); (the job as it is now, whether it is final)."""
        async with db.acquire() as conn:
            job = await self.get_job(conn, user, job_id)
            if job["status"] in FINAL_JOB_STATUSES:
                raise Conflict(f"Job {job_id} is already {job['status']}")
            async with conn.transaction():
                cancelled = await repo.cancel_queued_job(conn, user_id=user.user_id, job_id=job_id)
                if cancelled is not None:
                    await add_cancelled_event(conn, cancelled)
        if cancelled is not None:
            await jobs.announce(job_id, "cancelled")
            return dict(cancelled), True
        await jobs.request_cancel(job_id)
        final = await jobs.wait(
            job_id, within_seconds=wait, is_final=lambda: self.is_final(db, user, job_id)
        )
        async with db.acquire() as conn:
            return await self.get_job(conn, user, job_id), final

    async def final_event(self, db: asyncpg.Pool, user: Principal, job_id: int) -> tuple[str, Any]:
        """The last Server-Sent Event of a finished job: its reply, or its error envelope."""
        try:
            return "reply", await self.reply(db, user, job_id)
        except AIReplyFailed as exc:
            return "error", error_body(exc.code, exc.message, exc.details)

    async def reply(self, db: asyncpg.Pool, user: Principal, job_id: int) -> dict[str, Any]:
        """The finished job's reply in the seed's shape, or the error the caller should see."""
        async with db.acquire() as conn:
            row = await repo.get_job_reply(conn, user_id=user.user_id, job_id=job_id)
        if row is None:
            raise NotFound(f"Job {job_id} not found")
        return self.reply_from_row(job_id, row)

    def reply_from_row(
        self, job_id: int, row: Mapping[str, Any] | asyncpg.Record
    ) -> dict[str, Any]:
        """The reply of a job's row as `get_job_reply` reads it, or as the worker announced it
        (shared/jobs.py `JobDone`: the same fields, its time as an ISO string)."""
        if row["status"] == "cancelled":
            raise AIReplyFailed(
                409,
                "ai_cancelled",
                "The AI reply was cancelled before it started",
                {"job_id": job_id, "status": "cancelled"},
            )
        if row["status"] not in ("completed", "incomplete") or row["reply_message_id"] is None:
            raise AIReplyFailed(
                _FAILURE_STATUS.get(row["error_code"] or "", 502),
                row["error_code"] or f"ai_{row['status']}",
                f"The AI reply {row['status']}: {row['error'] or 'no reply was produced'}",
                {"job_id": job_id, "status": row["status"]},
            )
        input_tokens, output_tokens = row["input_tokens"] or 0, row["output_tokens"] or 0
        return {
            "message_id": row["reply_message_id"],
            "ai_response": row["reply_content"],
            "tokens_used": input_tokens + output_tokens,
            "processing_time": round(float(row["processing_time"] or 0.0), 3),
            "cost": float(row["cost"] or 0.0),
            "created_at": _as_datetime(row["reply_created_at"]),
            "job_id": job_id,
            "model": row["model"],
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            # "incomplete": cancelled while generating; the text is what was produced until then.
            "status": row["status"],
        }


def _as_datetime(value: datetime | str) -> datetime:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def _stored_job(stored: asyncpg.Record, quota: AIQuota) -> dict[str, Any]:
    """The answer for a job job_intake stored, or the error its verdict refused it with (the
    service's checks were answered before: the checks here follow them in the API's order)."""
    refusal = stored["refusal"]
    if refusal is not None:
        raise _refusal_error(refusal, stored, quota)
    job = dict(stored)
    for column in intake.VERDICT_COLUMNS:
        del job[column]
    return {"job_id": job["id"], "job": job}


def _refusal_error(refusal: str, verdict: asyncpg.Record, quota: AIQuota) -> AppError:
    """Limits checked before any model call: concurrent jobs, and tokens and cost per UTC day
    (per user: job_intake holds a per-user lock until the job is stored); then the agent."""
    if refusal == "concurrent_jobs":
        return RateLimited(
            f"{verdict['active_jobs']} AI replies are already being generated for you; "
            f"at most {quota.max_concurrent_jobs} at once",
            headers={"Retry-After": "2"},
            details={"quota": "concurrent_jobs", "limit": quota.max_concurrent_jobs},
        )
    if refusal in ("daily_tokens", "daily_cost"):
        over_tokens = refusal == "daily_tokens"
        now = datetime.now(UTC)
        midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        return RateLimited(
            f"Your AI quota for today is used up ({refusal}); it resets at 00:00 UTC",
            headers={"Retry-After": str(max(1, int((midnight - now).total_seconds())))},
            details={
                "quota": refusal,
                "limit": quota.daily_tokens if over_tokens else quota.daily_cost,
                "used": verdict["tokens_used"] if over_tokens else verdict["cost_used"],
            },
        )
    assert refusal == "no_agent", refusal
    agent_id = verdict["wanted_agent_id"]
    if agent_id is not None:
        return _unknown_agent(agent_id)
    return ValidationFailed("agent_id: the conversation has no agent and none is default")


async def add_cancelled_event(conn: Conn, job: Any) -> None:
    """The event of a job cancelled before any worker started it."""
    await repo.add_event(
        conn,
        "ai.reply.cancelled",
        user_id=job["user_id"],
        data={
            "job_id": job["id"],
            "conversation_id": job["conversation_id"],
            "agent_id": job["agent_id"],
            "batch_id": job["batch_id"],
        },
    )


class AIReplyFailed(AppError):
    """The job ended without a reply (or did not end in time): a 502/504 naming the job."""

    code = "ai_failed"

    def __init__(self, status_code: int, code: str, message: str, details: Any) -> None:
        super().__init__(message, details=details)
        self.status_code = status_code  # type: ignore[misc]
        self.code = code  # type: ignore[misc]


ai_service = AIService()
