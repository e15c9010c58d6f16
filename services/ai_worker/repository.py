"""Every SQL statement of the AI worker, on the chat schema (the worker is chat's executor)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, RowMapping, text


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
                          regenerates_message_id, model, include_context, attempts, created_at
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
    conn: Connection, *, conversation_id: int, up_to_id: int | None, limit: int
) -> list[RowMapping]:
    """The conversation's latest messages up to the prompt, newest first."""
    return list(
        conn.execute(
            text(
                """
                SELECT id, sender, content FROM chat.messages
                WHERE conversation_id = :cid
                  AND (CAST(:up_to AS integer) IS NULL OR id <= CAST(:up_to AS integer))
                ORDER BY id DESC LIMIT :limit
                """
            ),
            {"cid": conversation_id, "up_to": up_to_id, "limit": limit},
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
    status: str = "completed",
) -> int | None:
    """In the caller's transaction: the agent message, the conversation's counters, the job's
    outcome and the usage record. None when this job's reply was stored already (the unique
    `messages.ai_job_id` guard), in which case nothing is written."""
    # Lock the conversation first: message times then follow commit order, as for user posts.
    locked = conn.execute(
        text("SELECT id FROM chat.conversations WHERE id = :cid FOR UPDATE"),
        {"cid": job["conversation_id"]},
    ).first()
    if locked is None:
        return None  # the conversation was deleted meanwhile
    message_id = conn.execute(
        text(
            """
            INSERT INTO chat.messages (conversation_id, content, sender, tokens_used,
                                       processing_time, ai_job_id, status, created_at,
                                       updated_at)
            VALUES (:cid, :content, 'agent', :tokens, :ptime, :job, :status, clock_timestamp(),
                    clock_timestamp())
            ON CONFLICT (ai_job_id) WHERE ai_job_id IS NOT NULL DO NOTHING
            RETURNING id
            """
        ),
        {
            "cid": job["conversation_id"],
            "content": content,
            "tokens": input_tokens + output_tokens,
            "ptime": processing_time,
            "job": job["id"],
            "status": "sent" if status == "completed" else status,
        },
    ).scalar()
    if message_id is None:
        return None
    if job["regenerates_message_id"] is not None:
        # The earlier reply stays in the history, marked as replaced.
        conn.execute(
            text(
                """
                UPDATE chat.messages SET status = 'superseded', updated_at = clock_timestamp()
                WHERE id = :mid AND conversation_id = :cid
                """
            ),
            {"mid": job["regenerates_message_id"], "cid": job["conversation_id"]},
        )
    conn.execute(
        text(
            """
            UPDATE chat.conversations
            SET total_messages = total_messages + 1, last_message_at = clock_timestamp(),
                updated_at = clock_timestamp()
            WHERE id = :cid
            """
        ),
        {"cid": job["conversation_id"]},
    )
    conn.execute(
        text(
            """
            UPDATE chat.ai_jobs
            SET status = :status, reply_message_id = :mid, model = :model,
                input_tokens = :itok, output_tokens = :otok, cost = :cost,
                processing_time = :ptime, time_to_first_token = :ttft, finished_at = now(),
                error_code = NULL, error = NULL
            WHERE id = :id
            """
        ),
        {
            "id": job["id"],
            "status": status,
            "mid": message_id,
            "model": model,
            "itok": input_tokens,
            "otok": output_tokens,
            "cost": cost,
            "ptime": processing_time,
            "ttft": time_to_first_token,
        },
    )
    conn.execute(
        text(
            """
            INSERT INTO chat.ai_usage (job_id, user_id, agent_id, model, input_tokens,
                                       output_tokens, cost, latency_seconds,
                                       time_to_first_token_seconds)
            VALUES (:job, :uid, :aid, :model, :itok, :otok, :cost, :lat, :ttft)
            ON CONFLICT (job_id) DO NOTHING
            """
        ),
        {
            "job": job["id"],
            "uid": job["user_id"],
            "aid": agent_id,
            "model": model,
            "itok": input_tokens,
            "otok": output_tokens,
            "cost": cost,
            "lat": processing_time,
            "ttft": time_to_first_token,
        },
    )
    return int(message_id)


def fail_job(conn: Connection, *, job_id: int, code: str, error: str) -> bool:
    """Final failure, unless the job reached a final state meanwhile."""
    row = conn.execute(
        text(
            """
            UPDATE chat.ai_jobs
            SET status = 'failed', error_code = :code, error = :error, finished_at = now()
            WHERE id = :id AND status IN ('queued', 'running')
            RETURNING id
            """
        ),
        {"id": job_id, "code": code, "error": error[:2000]},
    ).first()
    return row is not None


def job_status(conn: Connection, job_id: int) -> Any:
    return conn.execute(
        text("SELECT status FROM chat.ai_jobs WHERE id = :id"), {"id": job_id}
    ).scalar()


def expire_overdue_jobs(conn: Connection) -> list[int]:
    """Fails unfinished jobs past their deadline (one sweeper takes each: SKIP LOCKED)."""
    rows = conn.execute(
        text(
            """
            UPDATE chat.ai_jobs SET status = 'failed', error_code = 'deadline_exceeded',
                   error = 'The job did not finish before its deadline', finished_at = now()
            WHERE id IN (
                SELECT id FROM chat.ai_jobs
                WHERE status IN ('queued', 'running') AND deadline_at < now()
                FOR UPDATE SKIP LOCKED
            )
            RETURNING id
            """
        )
    )
    return [int(row[0]) for row in rows]


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
