"""The statements that take an AI reply request in: `POST .../ai-response` and `.../regenerate`.

Each request is two statements, not the ten or so of its parts, because every statement is a
round trip that costs the chat service CPU and the caller latency:

1. the conversation's row lock, then the user's quota lock (`lock_for_job`);
2. everything that must see the state those locks protect (quota usage, the latest message, the
   reply to redo, the agent), the verdict on it, and, only when the verdict is to go ahead,
   every write (`store_regeneration_job`).

For `ai-response`, the hottest of the two, both statements run inside one call of a PL/pgSQL
function (`take_ai_request`, defined by chat migration 0011, which holds its SQL): outside a
transaction block that is one round trip instead of four (BEGIN, 1, 2, COMMIT), which was about
2.3 ms of the reply's latency on our 2-core VMs. `regenerate` keeps its two statements in a
transaction.

Why the locks are a statement of their own: under READ COMMITTED a statement reads with the
snapshot taken when it starts, so a read in the statement that waits for a lock cannot see what
the lock's previous holder committed meanwhile. The usage read would miss the jobs a concurrent
request of the same user just stored (and let both through the quota), and the latest-message
read would miss the message a concurrent request just posted (and store it twice). Statement 2
starts after both locks are held, so its one snapshot sees everything committed before them, and
nobody can commit a competing job or message until this transaction ends.

The verdict (which check refuses, in the order the API answers them) is computed in SQL, so
statement 2 writes nothing on a refusal (no id is spent, no row is written and rolled back); the
service turns it into the error (`AIService`, services/chat/service.py).
"""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from services.chat.repository import JOB_COLUMNS
from shared.db.pool import Conn
from shared.events import event_trace_json

Record = asyncpg.Record

# The columns of statement 2's answer besides the job's (which are null on a refusal).
VERDICT_COLUMNS = (
    "refusal",
    "active_jobs",
    "tokens_used",
    "cost_used",
    "wanted_agent_id",
    "session_id",
)


async def lock_for_job(conn: Conn, *, user_id: int, conversation_id: int) -> Record | None:
    """Locks the caller's conversation (so its latest message stays the latest) and then the
    user's AI quota (so concurrent requests of one user cannot both pass its checks), both until
    commit; returns the conversation's agent_id, None (and no quota lock) when the conversation
    is missing or not theirs.

    One statement, locks in that order: the advisory lock's argument is a column of the locked
    row, and the outer SELECT only sees a row of the MATERIALIZED CTE once its LockRows node has
    the row lock (after any wait, and re-checked against the row's latest version). A plain
    `SELECT pg_advisory_xact_lock(...) ... FOR UPDATE` would not do: its target list is computed
    below the LockRows node, so the advisory lock would come first. It reads nothing else: see
    the module doc."""
    return await conn.fetchrow(
        """
        WITH conversation AS MATERIALIZED (
            SELECT id, user_id, agent_id FROM chat.conversations
            WHERE id = $1 AND user_id = $2
            FOR UPDATE
        )
        SELECT conversation.agent_id,
               pg_advisory_xact_lock(hashtext('chat.ai-quota'), conversation.user_id)
                   AS quota_locked
        FROM conversation
        """,
        conversation_id,
        user_id,
    )


# Statement 2 of `regenerate` takes these first parameters, which the fragments below use (the
# function of migration 0011 has its own copy, by name): $1 the conversation, $2 the user, $3
# concurrent jobs allowed, $4 tokens a day, $5 cost a day (0: no limit), $6 the job's deadline
# in seconds.

# The user's unfinished jobs, and tokens and cost used since midnight UTC. Jobs of batch
# regenerations are an administrator's, paid from the batch's budget: they do not count.
_USAGE_TODAY = """
    usage AS (
        SELECT
            (SELECT count(*) FROM chat.ai_jobs
             WHERE user_id = $2 AND status IN ('queued', 'running') AND batch_id IS NULL)
                AS active_jobs,
            COALESCE(sum(input_tokens + output_tokens), 0) AS tokens,
            COALESCE(sum(cost), 0)::float8 AS cost
        FROM chat.ai_usage
        WHERE user_id = $2 AND batch_id IS NULL
          AND created_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
    )
"""

# The quota's refusals, in the order the API answers them; a statement's own checks come first.
_QUOTA_REFUSALS = """
    WHEN usage.active_jobs >= $3::integer THEN 'concurrent_jobs'
    WHEN usage.tokens >= $4::bigint THEN 'daily_tokens'
    WHEN $5::float8 > 0 AND usage.cost >= $5::float8 THEN 'daily_cost'
"""


def _chosen_agent(wanted: str) -> str:
    """The CTE `agent`: the wanted agent if it is active, else (nothing wanted) the default
    one; empty when there is none. Two arms, so each is an index probe (the wanted agent by
    id, the default by uq_agents_default) and only one of them can match."""
    return f"""
    agent AS (
        (SELECT id, model FROM chat.agents WHERE id = {wanted} AND is_active)
        UNION ALL
        (SELECT id, model FROM chat.agents
         WHERE {wanted} IS NULL AND is_default AND is_active LIMIT 1)
    )
    """


async def take_ai_request(
    conn: Conn,
    *,
    conversation_id: int,
    user_id: int,
    agent_id: int | None,
    message: str,
    include_context: bool,
    deadline_seconds: int,
    max_concurrent_jobs: int,
    daily_tokens: int,
    daily_cost: float,
    session_idle: timedelta,
) -> Record | None:
    """An `ai-response` request taken in by one call of `chat.take_ai_request` (chat migration
    0011): statements 1 and 2 of the module doc, each with its own snapshot, so outside a
    transaction block the request costs one round trip, its commit included. None when the
    conversation is missing or not the caller's; otherwise the verdict on the request
    (`refusal`, null to go ahead, with the usage it was judged on) and, when it goes ahead, the
    job (its columns; null otherwise). Going ahead stores the user's message first (with what
    every message post writes: the conversation's counters, its session, the `message.created`
    event) unless it is already the latest message, then the job answering it; `agent_id`
    None asks for the conversation's agent."""
    return await conn.fetchrow(
        "SELECT * FROM chat.take_ai_request($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        conversation_id,
        user_id,
        max_concurrent_jobs,
        daily_tokens,
        daily_cost,
        deadline_seconds,
        agent_id,
        message,
        session_idle,
        include_context,
        event_trace_json(),  # the event's and the job's trace (the sweeper re-sends on its behalf)
    )


_STORE_REGENERATION_JOB = f"""
    WITH {_USAGE_TODAY},
    -- An agent message of the conversation, with the user message it answered (its job's
    -- prompt, else the latest user message before it) and its agent.
    reply AS (
        SELECT m.id, j.agent_id, COALESCE(j.include_context, true) AS include_context,
               COALESCE(j.prompt_message_id, (
                   SELECT max(p.id) FROM chat.messages p
                   WHERE p.conversation_id = m.conversation_id AND p.id < m.id
                     AND p.sender = 'user')) AS prompt_message_id
        FROM chat.messages m
        LEFT JOIN chat.ai_jobs j ON j.id = m.ai_job_id
        WHERE m.id = $7 AND m.conversation_id = $1 AND m.sender = 'agent'
    ),
    wanted AS (SELECT COALESCE((SELECT agent_id FROM reply), $8::integer) AS agent_id),
    {_chosen_agent("(SELECT agent_id FROM wanted)")},
    verdict AS (
        SELECT usage.*,
               CASE WHEN NOT EXISTS (SELECT FROM reply) THEN 'no_reply'
                    WHEN (SELECT prompt_message_id FROM reply) IS NULL THEN 'no_prompt'
                    {_QUOTA_REFUSALS}
                    WHEN NOT EXISTS (SELECT FROM agent) THEN 'no_agent'
               END AS refusal
        FROM usage
    ),
    job AS (
        INSERT INTO chat.ai_jobs (conversation_id, user_id, agent_id, prompt_message_id, model,
                                  include_context, deadline_at, regenerates_message_id, trace)
        SELECT $1, $2, agent.id, reply.prompt_message_id, agent.model, reply.include_context,
               now() + make_interval(secs => $6), reply.id, $9::jsonb
        FROM agent, reply
        WHERE (SELECT refusal FROM verdict) IS NULL
        RETURNING {JOB_COLUMNS}
    )
    SELECT job.*, verdict.refusal, verdict.active_jobs, verdict.tokens AS tokens_used,
           verdict.cost AS cost_used, (SELECT agent_id FROM wanted) AS wanted_agent_id,
           NULL::integer AS session_id
    FROM verdict LEFT JOIN job ON true
"""


async def store_regeneration_job(
    conn: Conn,
    *,
    conversation_id: int,
    user_id: int,
    message_id: int,
    conversation_agent_id: int | None,
    deadline_seconds: int,
    max_concurrent_jobs: int,
    daily_tokens: int,
    daily_cost: float,
) -> Record:
    """After `lock_for_job`: as `take_ai_request`, for a job answering the user message an
    agent reply (`message_id`) answered, again; the verdict first checks that there is such a
    reply (`no_reply`) and that it answers a user message (`no_prompt`). `wanted_agent_id` is
    the agent it asked for: the reply's job's, else the conversation's."""
    row = await conn.fetchrow(
        _STORE_REGENERATION_JOB,
        conversation_id,
        user_id,
        max_concurrent_jobs,
        daily_tokens,
        daily_cost,
        deadline_seconds,
        message_id,
        conversation_agent_id,
        event_trace_json(),  # the job's trace: the sweeper re-sends it on this request's behalf
    )
    assert row is not None  # `verdict` is an aggregate: always one row
    return row
