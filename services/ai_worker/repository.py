"""Every SQL statement of the AI worker, on the chat schema (the worker is chat's executor)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Connection, RowMapping, text

from shared.events import event_trace_json, validate_data


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


def start_job(conn: Connection, job_id: int) -> RowMapping | None:
    """Marks a delivery of the job: running, one more attempt. None when it is already final
    (a duplicate or late delivery: nothing to do)."""
    return (
        conn.execute(
            text(
                """
                UPDATE chat.ai_jobs
                SET status = 'running', attempts = attempts + 1,
                    started_at = COALESCE(started_at, now())
                WHERE id = :id AND status IN ('queued', 'running')
                RETURNING id, conversation_id, user_id, agent_id, prompt_message_id,
                          regenerates_message_id, model, include_context, attempts, created_at,
                          batch_id,
                          (SELECT b.concurrency FROM chat.ai_batches b
                           WHERE b.id = ai_jobs.batch_id) AS batch_concurrency
                """
            ),
            {"id": job_id},
        )
        .mappings()
        .first()
    )


def get_agent(conn: Connection, agent_id: int | None) -> RowMapping | None:
    """The job's agent, or the default one when it has none (or it was deleted)."""
    return (
        conn.execute(
            text(
                """
                SELECT id, name, model, system_prompt, temperature, max_tokens,
                       input_price_per_1k, output_price_per_1k
                FROM chat.agents
                WHERE id = CAST(:id AS integer) OR is_default
                ORDER BY id = CAST(:id AS integer) DESC NULLS LAST
                LIMIT 1
                """
            ),
            {"id": agent_id},
        )
        .mappings()
        .first()
    )


def recent_messages(
    conn: Connection,
    *,
    conversation_id: int,
    up_to_id: int | None,
    limit: int,
    max_text_chars: int,
) -> list[RowMapping]:
    """The conversation's latest messages up to the prompt, newest first, each with its
    attachments (name, type, size, and for small text files their text, cut at
    `max_text_chars`: more could never fit the prompt, so it is not read)."""
    return list(
        conn.execute(
            text(
                """
                SELECT m.id, m.sender, m.content,
                       (SELECT COALESCE(json_agg(json_build_object(
                                  'file_name', a.file_name, 'file_type', a.file_type,
                                  'file_size', a.file_size,
                                  'text', left(a.text_content, :max_chars),
                                  'text_chars', length(a.text_content)) ORDER BY a.id), '[]')
                        FROM chat.message_attachments a WHERE a.message_id = m.id)
                           AS attachments
                FROM chat.messages m
                WHERE m.conversation_id = :cid
                  AND (CAST(:up_to AS integer) IS NULL OR m.id <= CAST(:up_to AS integer))
                ORDER BY m.id DESC LIMIT :limit
                """
            ),
            {
                "cid": conversation_id,
                "up_to": up_to_id,
                "limit": limit,
                "max_chars": max_text_chars,
            },
        ).mappings()
    )


def store_reply(
    conn: Connection,
    *,
    job: RowMapping,
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
) -> int | None:
    """In the caller's transaction: the agent message, the conversation's counters and session,
    the job's outcome and the usage record. None, with nothing written, when this job's reply
    was stored already (the unique `messages.ai_job_id` guard), when the job is final already
    (the sweeper failed it at its deadline: the caller was told, the reply is too late), or when
    the conversation was deleted.

    Two statements (round trips), not eight: the job's worker thread spends its CPU on the
    driver's work per statement, which competes with the other jobs' threads for the GIL."""
    # The conversation is locked first (message times then follow commit order, as for user
    # posts); the message is inserted and counted into the conversation's session (the SQL
    # function of chat migration 0006, the chat service's rule) in the same statement.
    inserted = conn.execute(
        text(
            """
            WITH conversation AS (
                SELECT id FROM chat.conversations WHERE id = :cid FOR UPDATE
            ), job AS (
                -- After the conversation (the order a conversation's delete locks them in);
                -- the sweeper skips a locked job, and one it failed first is not stored.
                SELECT j.id FROM chat.ai_jobs j, conversation
                WHERE j.id = :job AND j.status IN ('queued', 'running')
                FOR UPDATE OF j
            ), message AS (
                INSERT INTO chat.messages (conversation_id, content, sender, tokens_used,
                                           processing_time, ai_job_id, status, created_at,
                                           updated_at)
                SELECT conversation.id, :content, 'agent', :tokens, :ptime, :job, :status,
                       clock_timestamp(), clock_timestamp()
                FROM conversation, job
                ON CONFLICT (ai_job_id) WHERE ai_job_id IS NOT NULL DO NOTHING
                RETURNING id, created_at
            )
            SELECT message.id, message.created_at,
                   chat.record_session_activity(:cid, message.created_at, :gap)
            FROM message
            """
        ),
        {
            "cid": job["conversation_id"],
            "content": content,
            "tokens": input_tokens + output_tokens,
            "ptime": processing_time,
            "job": job["id"],
            "status": "sent" if status == "completed" else status,
            "gap": session_idle,
        },
    ).first()
    if inserted is None:
        return None  # stored already, final already, or the conversation was deleted
    message_id, created_at, _ = inserted
    completed = {
        "job_id": job["id"],
        "conversation_id": job["conversation_id"],
        "agent_id": agent_id,
        "model": model,
        "status": status,
        "message_id": message_id,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cost": cost,
        "processing_time": processing_time,
        "time_to_first_token": time_to_first_token,
        "batch_id": job["batch_id"],
    }
    message = {
        "conversation_id": job["conversation_id"],
        "message_id": message_id,
        "sender": "agent",
        "agent_id": agent_id,
        "created_at": created_at,
    }
    events, event_params = _outbox_insert(
        job["user_id"], (("message.created", message), ("ai.reply.completed", completed))
    )
    # The rest in one statement: data-modifying CTEs run once each, whatever the main statement
    # (the events) reads of them, and touch distinct rows. The earlier reply (when this one
    # regenerates it) stays in the history, marked as replaced.
    conn.execute(
        text(
            """
            WITH superseded AS (
                UPDATE chat.messages SET status = 'superseded', updated_at = clock_timestamp()
                WHERE id = CAST(:regenerates AS bigint) AND conversation_id = :cid
            ), counters AS (
                UPDATE chat.conversations
                SET total_messages = total_messages + 1, last_message_at = clock_timestamp(),
                    updated_at = clock_timestamp()
                WHERE id = :cid
            ), outcome AS (
                UPDATE chat.ai_jobs
                SET status = :status, reply_message_id = :mid, model = :model,
                    input_tokens = :itok, output_tokens = :otok, cost = :cost,
                    processing_time = :ptime, time_to_first_token = :ttft, finished_at = now(),
                    error_code = NULL, error = NULL
                WHERE id = :job
            ), usage AS (
                INSERT INTO chat.ai_usage (job_id, user_id, agent_id, model, input_tokens,
                                           output_tokens, cost, latency_seconds,
                                           time_to_first_token_seconds, batch_id)
                VALUES (:job, :uid, :aid, :model, :itok, :otok, :cost, :ptime, :ttft, :batch)
                ON CONFLICT (job_id) DO NOTHING
            )
            """
            + events
        ),
        {
            "regenerates": job["regenerates_message_id"],
            "cid": job["conversation_id"],
            "status": status,
            "mid": message_id,
            "model": model,
            "itok": input_tokens,
            "otok": output_tokens,
            "cost": cost,
            "ptime": processing_time,
            "ttft": time_to_first_token,
            "job": job["id"],
            "uid": job["user_id"],
            "aid": agent_id,
            "batch": job["batch_id"],
            **event_params,
        },
    )
    return int(message_id)


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


def claim_unstarted_jobs(conn: Connection, *, older_than_seconds: int, limit: int) -> list[int]:
    """Queued jobs no worker has started for a while: marked re-sent now, to be published again."""
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
            RETURNING id
            """
        ),
        {"age": older_than_seconds, "limit": limit},
    )
    return [int(row[0]) for row in rows]


# --- batch regeneration ---------------------------------------------------------------------------


def lock_running_batch(conn: Connection, batch_id: int) -> RowMapping | None:
    """The batch, locked until commit (one dispatcher at a time), if it is still running."""
    return (
        conn.execute(
            text(
                """
                SELECT id, concurrency, max_tokens, max_cost, job_deadline_seconds
                FROM chat.ai_batches WHERE id = :id AND status = 'running'
                FOR UPDATE
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
