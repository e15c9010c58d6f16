"""Every SQL statement of the AI worker, on the chat schema (the worker is chat's executor)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Connection, RowMapping, text

from shared.events import event_trace_json, iso_utc, validate_data


def add_events(conn: Connection, user_id: int, *events: tuple[str, dict[str, Any]]) -> None:
    """Writes events (shared/events.py: type and data) to the outbox in the caller's
    transaction, in one statement, in the order given, with the trace context of the task (or
    sweep) in progress."""
    sql, params = _outbox_insert(user_id, events)
    conn.execute(text(sql), params)


def _outbox_insert(
    user_id: int, events: tuple[tuple[str, dict[str, Any]], ...]
) -> tuple[str, dict[str, Any]]:
    """The INSERT of `add_events` and its parameters (prefixed `ev_`), to run alone or as the
    main statement under other writes' CTEs."""
    values = ", ".join(
        f"(:ev_type{i}, :ev_uid, CAST(:ev_data{i} AS jsonb), CAST(:ev_trace AS jsonb))"
        for i in range(len(events))
    )
    params: dict[str, Any] = {"ev_uid": user_id, "ev_trace": event_trace_json()}
    for i, (event_type, data) in enumerate(events):
        params[f"ev_type{i}"] = event_type
        params[f"ev_data{i}"] = orjson.dumps(validate_data(event_type, data)).decode()
    return f"INSERT INTO chat.outbox (type, user_id, data, trace) VALUES {values}", params


@dataclass(frozen=True, slots=True)
class StartedJob:
    """A delivery of a job that is not final: the job, its agent (None when there is none, not
    even a default one) and the conversation up to the prompt, newest first."""

    job: dict[str, Any]
    agent: dict[str, Any] | None
    history: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class StoredReply:
    message_id: int
    created_at: datetime


def start_job(
    conn: Connection, job_id: int, *, history_limit: int, max_text_chars: int
) -> StartedJob | None:
    """Marks a delivery of the job (running, one more attempt) and reads what its prompt needs:
    the agent (the job's, else the default one) and the conversation's latest messages up to
    the prompt, newest first, each with its attachments (name, type, size, and for small text
    files their text, cut at `max_text_chars`: more could never fit the prompt, so it is not
    read). None when the job is final already (a duplicate or late delivery: nothing to do).

    One statement, run outside a transaction: it is atomic alone, and every round trip (BEGIN,
    each read, COMMIT) is driver work in the job's thread, in the interactive reply's path."""
    row = (
        conn.execute(
            text(
                """
                WITH job AS (
                    UPDATE chat.ai_jobs
                    SET status = 'running', attempts = attempts + 1,
                        started_at = COALESCE(started_at, now())
                    WHERE id = :id AND status IN ('queued', 'running')
                    RETURNING id, conversation_id, user_id, agent_id, prompt_message_id,
                              regenerates_message_id, model, include_context, attempts,
                              created_at, batch_id
                )
                SELECT job.*,
                       (SELECT b.concurrency FROM chat.ai_batches b
                        WHERE b.id = job.batch_id) AS batch_concurrency,
                       a.id AS agent__id, a.name AS agent__name, a.model AS agent__model,
                       a.system_prompt AS agent__system_prompt,
                       a.temperature AS agent__temperature, a.max_tokens AS agent__max_tokens,
                       a.input_price_per_1k AS agent__input_price_per_1k,
                       a.output_price_per_1k AS agent__output_price_per_1k,
                       (SELECT COALESCE(json_agg(h ORDER BY h.id DESC), '[]')
                        FROM (
                            SELECT m.id, m.sender, m.content,
                                   (SELECT COALESCE(json_agg(json_build_object(
                                              'file_name', f.file_name,
                                              'file_type', f.file_type,
                                              'file_size', f.file_size,
                                              'text', left(f.text_content, :max_chars),
                                              'text_chars', length(f.text_content))
                                              ORDER BY f.id), '[]')
                                    FROM chat.message_attachments f
                                    WHERE f.message_id = m.id) AS attachments
                            FROM chat.messages m
                            WHERE m.conversation_id = job.conversation_id
                              AND (job.prompt_message_id IS NULL
                                   OR m.id <= job.prompt_message_id)
                            ORDER BY m.id DESC LIMIT :limit
                        ) h) AS history
                FROM job
                LEFT JOIN LATERAL (
                    SELECT id, name, model, system_prompt, temperature, max_tokens,
                           input_price_per_1k, output_price_per_1k
                    FROM chat.agents
                    WHERE id = job.agent_id OR is_default
                    ORDER BY id = job.agent_id DESC NULLS LAST
                    LIMIT 1
                ) a ON true
                """
            ),
            {"id": job_id, "limit": history_limit, "max_chars": max_text_chars},
        )
        .mappings()
        .first()
    )
    if row is None:
        return None
    job: dict[str, Any] = {}
    agent: dict[str, Any] = {}
    for key, value in row.items():
        if key.startswith("agent__"):
            agent[key[len("agent__") :]] = value
        elif key != "history":
            job[key] = value
    history = row["history"]
    if isinstance(history, str):  # json, as text when no loader is registered
        history = orjson.loads(history)
    return StartedJob(job, agent if agent["id"] is not None else None, list(history))


def store_reply(
    conn: Connection,
    *,
    job: Mapping[str, Any],
    agent_id: int | None,
    model: str,
    content: str,
    input_tokens: int,
    output_tokens: int,
    cost: Decimal,
    processing_time: float,
    time_to_first_token: float | None,
    session_idle: timedelta,
    status: str = "completed",
) -> StoredReply | None:
    """The agent message, the conversation's counters and session, the job's outcome, the usage
    record and the events, all or nothing. None, with nothing written, when this job's reply
    was stored already (the unique `messages.ai_job_id` guard), when the job is final already
    (the sweeper failed it at its deadline: the caller was told, the reply is too late), or when
    the conversation was deleted.

    One statement, run outside a transaction (it is atomic alone): one round trip where a
    transaction of two statements took five with its BEGIN, COMMIT and the pool's ping, each
    of them driver work in the job's thread, in the interactive reply's path. Every write
    below reads the inserted `message`, so none happens when there is none; data-modifying
    CTEs run once each, whatever the main query reads of them, and touch distinct rows."""
    # The events' `message_id` and `created_at` come from the inserted row, in SQL: the data
    # is checked here with stand-ins for them (the same types), then they are set.
    completed = {
        "job_id": job["id"],
        "conversation_id": job["conversation_id"],
        "agent_id": agent_id,
        "model": model,
        "status": status,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cost": cost,
        "processing_time": processing_time,
        "time_to_first_token": time_to_first_token,
        "batch_id": job["batch_id"],
        "message_id": 0,
    }
    message = {
        "conversation_id": job["conversation_id"],
        "sender": "agent",
        "agent_id": agent_id,
        "message_id": 0,
        "created_at": _EPOCH,
    }
    row = conn.execute(
        _STORE_REPLY,
        {
            "cid": job["conversation_id"],
            "content": content,
            "tokens": input_tokens + output_tokens,
            "ptime": processing_time,
            "job": job["id"],
            "message_status": "sent" if status == "completed" else status,
            "gap": session_idle,
            "regenerates": job["regenerates_message_id"],
            "status": status,
            "model": model,
            "itok": input_tokens,
            "otok": output_tokens,
            "cost": cost,
            "ttft": time_to_first_token,
            "uid": job["user_id"],
            "aid": agent_id,
            "batch": job["batch_id"],
            "created_event": _event_json("message.created", message),
            "completed_event": _event_json("ai.reply.completed", completed),
            "trace": event_trace_json(),
        },
    ).first()
    if row is None:
        return None  # stored already, final already, or the conversation was deleted
    return StoredReply(message_id=int(row[0]), created_at=row[1])


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _event_json(event_type: str, data: dict[str, Any]) -> str:
    return orjson.dumps(validate_data(event_type, data)).decode()


# The conversation is locked first (message times then follow commit order, as for user posts);
# the message is counted into the conversation's session by the SQL function of chat migration
# 0006 (the chat service's rule). The earlier reply (when this one regenerates it) stays in the
# history, marked as replaced. Events: in the outbox's order, `message.created` first.
_STORE_REPLY = text(
    f"""
    WITH conversation AS (
        SELECT id FROM chat.conversations WHERE id = :cid FOR UPDATE
    ), job AS (
        -- After the conversation (the order a conversation's delete locks them in); the
        -- sweeper skips a locked job, and one it failed first is not stored.
        SELECT j.id FROM chat.ai_jobs j, conversation
        WHERE j.id = :job AND j.status IN ('queued', 'running')
        FOR UPDATE OF j
    ), message AS (
        INSERT INTO chat.messages (conversation_id, content, sender, tokens_used, processing_time,
                                   ai_job_id, status, created_at, updated_at)
        SELECT conversation.id, :content, 'agent', :tokens, :ptime, :job, :message_status,
               clock_timestamp(), clock_timestamp()
        FROM conversation, job
        ON CONFLICT (ai_job_id) WHERE ai_job_id IS NOT NULL DO NOTHING
        RETURNING id, created_at
    ), session AS (
        SELECT chat.record_session_activity(:cid, message.created_at, :gap) AS id FROM message
    ), superseded AS (
        UPDATE chat.messages earlier SET status = 'superseded', updated_at = clock_timestamp()
        FROM message
        WHERE earlier.id = CAST(:regenerates AS bigint) AND earlier.conversation_id = :cid
    ), counters AS (
        UPDATE chat.conversations c
        SET total_messages = total_messages + 1, last_message_at = message.created_at,
            updated_at = message.created_at
        FROM message
        WHERE c.id = :cid
    ), outcome AS (
        UPDATE chat.ai_jobs j
        SET status = :status, reply_message_id = message.id, model = :model,
            input_tokens = :itok, output_tokens = :otok, cost = :cost, processing_time = :ptime,
            time_to_first_token = :ttft, finished_at = now(), error_code = NULL, error = NULL
        FROM message
        WHERE j.id = :job
    ), usage AS (
        INSERT INTO chat.ai_usage (job_id, user_id, agent_id, model, input_tokens, output_tokens,
                                   cost, latency_seconds, time_to_first_token_seconds, batch_id)
        SELECT :job, :uid, :aid, :model, :itok, :otok, :cost, :ptime, :ttft, :batch FROM message
        ON CONFLICT (job_id) DO NOTHING
    ), events AS (
        INSERT INTO chat.outbox (type, user_id, data, trace)
        SELECT e.type, :uid,
               e.data || jsonb_build_object('message_id', message.id)
                      || CASE WHEN e.type = 'message.created' THEN jsonb_build_object(
                             'created_at', {iso_utc("message.created_at")})
                         ELSE '{{}}' END,
               CAST(:trace AS jsonb)
        FROM message,
             (VALUES (1, 'message.created', CAST(:created_event AS jsonb)),
                     (2, 'ai.reply.completed', CAST(:completed_event AS jsonb)))
                 AS e (n, type, data)
        ORDER BY e.n
    )
    SELECT message.id, message.created_at, session.id FROM message, session
    """
)


_FAILED_JOB = "id, user_id, conversation_id, agent_id, model, error_code, batch_id"


def _failed_event(conn: Connection, job: RowMapping) -> None:
    data = {
        "job_id": job["id"],
        "conversation_id": job["conversation_id"],
        "agent_id": job["agent_id"],
        "model": job["model"],
        "error_code": job["error_code"],
        "batch_id": job["batch_id"],
    }
    add_events(conn, job["user_id"], ("ai.reply.failed", data))


def fail_job(conn: Connection, *, job_id: int, code: str, error: str) -> bool:
    """Final failure, unless the job reached a final state meanwhile."""
    row = (
        conn.execute(
            text(
                f"""
                UPDATE chat.ai_jobs
                SET status = 'failed', error_code = :code, error = :error, finished_at = now()
                WHERE id = :id AND status IN ('queued', 'running')
                RETURNING {_FAILED_JOB}
                """
            ),
            {"id": job_id, "code": code, "error": error[:2000]},
        )
        .mappings()
        .first()
    )
    if row is not None:
        _failed_event(conn, row)
    return row is not None


def cancel_job(conn: Connection, *, job_id: int, error: str) -> bool:
    """Cancels a job that has not called the model (a batch job cancelled while it waited for
    its batch's slot), unless it reached a final state meanwhile."""
    row = (
        conn.execute(
            text(
                """
                UPDATE chat.ai_jobs
                SET status = 'cancelled', error_code = 'cancelled', error = :error,
                    finished_at = now()
                WHERE id = :id AND status IN ('queued', 'running')
                RETURNING id, user_id, conversation_id, agent_id, batch_id
                """
            ),
            {"id": job_id, "error": error[:2000]},
        )
        .mappings()
        .first()
    )
    if row is not None:
        data = {
            "job_id": row["id"],
            "conversation_id": row["conversation_id"],
            "agent_id": row["agent_id"],
            "batch_id": row["batch_id"],
        }
        add_events(conn, row["user_id"], ("ai.reply.cancelled", data))
    return row is not None


def batch_is_running(conn: Connection, batch_id: int) -> bool:
    return bool(
        conn.execute(
            text("SELECT status = 'running' FROM chat.ai_batches WHERE id = :id"),
            {"id": batch_id},
        ).scalar()
    )


def job_status(conn: Connection, job_id: int) -> Any:
    return conn.execute(
        text("SELECT status FROM chat.ai_jobs WHERE id = :id"), {"id": job_id}
    ).scalar()


def expire_overdue_jobs(conn: Connection) -> list[int]:
    """Fails unfinished jobs past their deadline (one sweeper takes each: SKIP LOCKED); their
    batches are topped up by the sweep that follows."""
    rows = conn.execute(
        text(
            f"""
            UPDATE chat.ai_jobs SET status = 'failed', error_code = 'deadline_exceeded',
                   error = 'The job did not finish before its deadline', finished_at = now()
            WHERE id IN (
                SELECT id FROM chat.ai_jobs
                WHERE status IN ('queued', 'running') AND deadline_at < now()
                FOR UPDATE SKIP LOCKED
            )
            RETURNING {_FAILED_JOB}
            """
        )
    ).mappings()
    expired = list(rows)
    for row in expired:
        _failed_event(conn, row)
    return [int(row["id"]) for row in expired]


def claim_unstarted_jobs(
    conn: Connection, *, older_than_seconds: int, limit: int
) -> list[tuple[int, Any]]:
    """Queued jobs no worker has started for a while: marked re-sent now, to be published again,
    each with the trace of the request that created it."""
    rows = conn.execute(
        text(
            """
            UPDATE chat.ai_jobs SET requeued_at = now()
            WHERE id IN (
                SELECT id FROM chat.ai_jobs
                WHERE status = 'queued' AND attempts = 0
                  AND COALESCE(requeued_at, created_at) < now() - make_interval(secs => :age)
                ORDER BY id
                LIMIT :limit
                FOR UPDATE SKIP LOCKED
            )
            RETURNING id, trace
            """
        ),
        {"age": older_than_seconds, "limit": limit},
    )
    return [(int(row[0]), row[1]) for row in rows]


# --- batch regeneration ---------------------------------------------------------------------------


def lock_running_batch(
    conn: Connection, batch_id: int, *, skip_locked: bool = False
) -> RowMapping | None:
    """The batch, locked until commit (one dispatcher at a time), if it is still running; with
    `skip_locked`, None too when another transaction holds it."""
    return (
        conn.execute(
            text(
                f"""
                SELECT id, concurrency, max_tokens, max_cost, job_deadline_seconds
                FROM chat.ai_batches WHERE id = :id AND status = 'running'
                FOR UPDATE{" SKIP LOCKED" if skip_locked else ""}
                """
            ),
            {"id": batch_id},
        )
        .mappings()
        .first()
    )


def batch_in_flight(conn: Connection, batch_id: int) -> int:
    """The batch's jobs queued or running: all a batch without a budget needs to know, read
    from the unfinished jobs alone (batch_load reads every item of the batch)."""
    return int(
        conn.execute(
            text(
                """
                SELECT count(*) FROM chat.ai_jobs
                WHERE batch_id = :id AND status IN ('queued', 'running')
                """
            ),
            {"id": batch_id},
        ).scalar_one()
    )


def batch_load(conn: Connection, batch_id: int) -> RowMapping:
    """Jobs in flight, what the finished ones used, and the estimate of those in flight."""
    row = (
        conn.execute(
            text(
                """
                SELECT
                    count(*) FILTER (WHERE j.status IN ('queued', 'running')) AS in_flight,
                    COALESCE(sum(COALESCE(j.input_tokens, 0) + COALESCE(j.output_tokens, 0))
                             FILTER (WHERE j.status NOT IN ('queued', 'running')), 0)
                        AS spent_tokens,
                    COALESCE(sum(COALESCE(j.cost, 0))
                             FILTER (WHERE j.status NOT IN ('queued', 'running')), 0)
                        AS spent_cost,
                    COALESCE(sum(i.estimated_tokens)
                             FILTER (WHERE j.status IN ('queued', 'running')), 0)
                        AS reserved_tokens,
                    COALESCE(sum(i.estimated_cost)
                             FILTER (WHERE j.status IN ('queued', 'running')), 0)
                        AS reserved_cost
                FROM chat.ai_batch_items i JOIN chat.ai_jobs j ON j.id = i.job_id
                WHERE i.batch_id = :id
                """
            ),
            {"id": batch_id},
        )
        .mappings()
        .one()
    )
    return row


def pending_batch_items(conn: Connection, batch_id: int, limit: int) -> list[RowMapping]:
    """The batch's next undispatched items, in reply order."""
    return list(
        conn.execute(
            text(
                """
                SELECT message_id, estimated_tokens, estimated_cost
                FROM chat.ai_batch_items
                WHERE batch_id = :id AND job_id IS NULL
                ORDER BY message_id
                LIMIT :limit
                """
            ),
            {"id": batch_id, "limit": limit},
        ).mappings()
    )


# Creates one queued job per picked item (with the agent's model as it is now) and records it
# on the item; `{picked}` selects the items.
_CREATE_BATCH_JOBS = """
WITH picked AS ({picked}), created AS (
    INSERT INTO chat.ai_jobs (conversation_id, user_id, agent_id, prompt_message_id,
                              regenerates_message_id, model, include_context,
                              deadline_at, batch_id, created_at)
    -- clock_timestamp(): the time the job exists, after the batch lock was granted
    -- (now() is the transaction's start, possibly before the lock wait).
    SELECT p.conversation_id, p.user_id, a.id, p.prompt_message_id, p.message_id,
           COALESCE(a.model, 'default'), p.include_context,
           now() + make_interval(secs => :deadline), :batch, clock_timestamp()
    FROM picked p LEFT JOIN chat.agents a ON a.id = p.agent_id
    ORDER BY p.message_id
    RETURNING id, regenerates_message_id
)
UPDATE chat.ai_batch_items i SET job_id = created.id
FROM created
WHERE i.batch_id = :batch AND i.message_id = created.regenerates_message_id
RETURNING created.id
"""


def create_batch_jobs(
    conn: Connection, *, batch_id: int, message_ids: list[int], deadline_seconds: int
) -> list[int]:
    """One queued job for each of these items (those still without one)."""
    picked = """
        SELECT i.* FROM chat.ai_batch_items i
        WHERE i.batch_id = :batch AND i.message_id = ANY(:ids) AND i.job_id IS NULL
    """
    rows = conn.execute(
        text(_CREATE_BATCH_JOBS.format(picked=picked)),
        {"batch": batch_id, "ids": message_ids, "deadline": deadline_seconds},
    )
    return sorted(int(row[0]) for row in rows)


def create_next_batch_jobs(
    conn: Connection, *, batch_id: int, cap: int, deadline_seconds: int
) -> list[int]:
    """Jobs for the batch's next items, as many as bring its unfinished jobs up to `cap`: the
    whole top-up of a batch without a budget in one statement (no estimates to add up). Run
    under the batch's lock, so the count is of committed jobs."""
    picked = """
        SELECT i.* FROM chat.ai_batch_items i
        WHERE i.batch_id = :batch AND i.job_id IS NULL
        ORDER BY i.message_id
        LIMIT GREATEST(0, CAST(:cap AS integer) - (
            SELECT count(*) FROM chat.ai_jobs
            WHERE batch_id = :batch AND status IN ('queued', 'running')))
    """
    rows = conn.execute(
        text(_CREATE_BATCH_JOBS.format(picked=picked)),
        {"batch": batch_id, "cap": cap, "deadline": deadline_seconds},
    )
    return sorted(int(row[0]) for row in rows)


def has_pending_batch_items(conn: Connection, batch_id: int) -> bool:
    return bool(
        conn.execute(
            text(
                """
                SELECT EXISTS (SELECT 1 FROM chat.ai_batch_items
                               WHERE batch_id = :id AND job_id IS NULL)
                """
            ),
            {"id": batch_id},
        ).scalar()
    )


def finish_batch(conn: Connection, *, batch_id: int, status: str) -> None:
    conn.execute(
        text(
            """
            UPDATE chat.ai_batches SET status = :status, finished_at = now(), updated_at = now()
            WHERE id = :id AND status = 'running'
            """
        ),
        {"id": batch_id, "status": status},
    )


def running_batches(conn: Connection) -> list[int]:
    rows = conn.execute(text("SELECT id FROM chat.ai_batches WHERE status = 'running'"))
    return [int(row[0]) for row in rows]


# --- queue metrics --------------------------------------------------------------------------------


def queued_jobs(conn: Connection) -> tuple[int, float]:
    """How many jobs are queued (no worker started them yet) and the age in seconds of the
    oldest one (0 when none); read through the partial index on unfinished jobs."""
    row = conn.execute(
        text(
            """
            SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)
            FROM chat.ai_jobs WHERE status = 'queued'
            """
        )
    ).one()
    return int(row[0]), max(0.0, float(row[1]))
