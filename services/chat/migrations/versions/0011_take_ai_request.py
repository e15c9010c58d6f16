"""The AI intake in the database: a request's locks, checks and writes as one function call.

Before, chat took an `ai-response` or `regenerate` request in with four round trips: BEGIN, the
locks, the statement that reads what the checks need and writes the message and the job, COMMIT
(services/chat/job_intake.py explains why the locks cannot share that statement: it must read
with a snapshot taken after they are held). A PL/pgSQL function runs the same two statements,
each with its own snapshot (a volatile function's statements take a new one each under READ
COMMITTED), in one call: outside a transaction block that is one round trip, with the commit.
Each round trip on the reply's path costs the caller about 0.8 ms here (`python -m bench floor`).

- `chat.lock_for_ai_job`: the conversation's row lock, then the user's quota lock;
- `chat.ai_quota`: the user's usage today and which quota, if any, refuses a new job (one rule
  for both requests); `chat.ai_agent`: the agent a job would use;
- `chat.take_ai_request` and `chat.take_regeneration_request`: the requests, each answering the
  same columns (`RESULT`). No row when the conversation is missing or not the caller's (then no
  lock is held and nothing is written); otherwise one: the verdict (`refusal`, null to go
  ahead, and the usage it was judged on) and, when it goes ahead, the job's columns.

The statements are those of job_intake.py at revision 0010, with the parameters named. This SQL
is frozen here: a change to the intake is a new migration replacing the functions it touches.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The answer of both request functions: the job (null when refused), then the verdict.
RESULT = """
    id bigint, conversation_id integer, user_id integer, agent_id integer, status varchar,
    model varchar, prompt_message_id integer, reply_message_id integer,
    regenerates_message_id integer, attempts integer, error_code varchar, error text,
    input_tokens integer, output_tokens integer, cost float8, processing_time float8,
    created_at timestamptz, started_at timestamptz, finished_at timestamptz, batch_id bigint,
    refusal text, active_jobs bigint, tokens_used bigint, cost_used float8,
    wanted_agent_id integer, session_id integer
"""

# The inserted job's columns as RESULT has them.
JOB_RETURNING = """
    RETURNING j.id, j.conversation_id, j.user_id, j.agent_id, j.status, j.model,
              j.prompt_message_id, j.reply_message_id, j.regenerates_message_id, j.attempts,
              j.error_code, j.error, j.input_tokens, j.output_tokens, j.cost::float8,
              j.processing_time, j.created_at, j.started_at, j.finished_at, j.batch_id
"""

LOCK = """
CREATE FUNCTION chat.lock_for_ai_job(
    p_conversation_id integer, p_user_id integer,
    OUT conversation_found boolean, OUT conversation_agent_id integer
)
LANGUAGE plpgsql VOLATILE
AS $fn$
BEGIN
    -- One statement, locks in this order: the advisory lock's argument is a column of the
    -- locked row, and the outer SELECT only sees a row of the MATERIALIZED CTE once its LockRows
    -- node has the row lock (after any wait, re-checked against the row's latest version). It
    -- reads nothing else: what the checks read is read by the caller's next statement.
    WITH conversation AS MATERIALIZED (
        SELECT c.id, c.user_id, c.agent_id FROM chat.conversations c
        WHERE c.id = p_conversation_id AND c.user_id = p_user_id
        FOR UPDATE
    )
    SELECT conversation.agent_id INTO conversation_agent_id
    FROM conversation
    WHERE pg_advisory_xact_lock(hashtext('chat.ai-quota'), conversation.user_id) IS NOT NULL;
    conversation_found := FOUND;
END
$fn$
"""

# Jobs of batch regenerations are an administrator's, paid from the batch's budget: they do not
# count. Refusals in the order the API answers them (a request's own checks come before them).
QUOTA = """
CREATE FUNCTION chat.ai_quota(
    p_user_id integer, p_max_concurrent_jobs integer, p_daily_tokens bigint,
    p_daily_cost float8
)
RETURNS TABLE (active_jobs bigint, tokens bigint, cost float8, quota_refusal text)
LANGUAGE sql STABLE
AS $fn$
    SELECT usage.active_jobs, usage.tokens, usage.cost,
           CASE WHEN usage.active_jobs >= p_max_concurrent_jobs THEN 'concurrent_jobs'
                WHEN usage.tokens >= p_daily_tokens THEN 'daily_tokens'
                WHEN p_daily_cost > 0 AND usage.cost >= p_daily_cost THEN 'daily_cost'
           END
    FROM (
        SELECT
            (SELECT count(*) FROM chat.ai_jobs j
             WHERE j.user_id = p_user_id AND j.status IN ('queued', 'running')
               AND j.batch_id IS NULL) AS active_jobs,
            COALESCE(sum(u.input_tokens + u.output_tokens), 0)::bigint AS tokens,
            COALESCE(sum(u.cost), 0)::float8 AS cost
        FROM chat.ai_usage u
        WHERE u.user_id = p_user_id AND u.batch_id IS NULL
          AND u.created_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
    ) usage
$fn$
"""

# The wanted agent if it is active, else (nothing wanted) the default one; none when there is
# none. Two arms, so each is an index probe (the wanted agent by id, the default by
# uq_agents_default) and only one of them can match.
AGENT = """
CREATE FUNCTION chat.ai_agent(p_agent_id integer)
RETURNS TABLE (id integer, model varchar)
LANGUAGE sql STABLE
AS $fn$
    (SELECT a.id, a.model FROM chat.agents a WHERE a.id = p_agent_id AND a.is_active)
    UNION ALL
    (SELECT a.id, a.model FROM chat.agents a
     WHERE p_agent_id IS NULL AND a.is_default AND a.is_active LIMIT 1)
$fn$
"""

AI_REQUEST = f"""
CREATE FUNCTION chat.take_ai_request(
    p_conversation_id integer,
    p_user_id integer,
    p_max_concurrent_jobs integer,
    p_daily_tokens bigint,
    p_daily_cost float8,
    p_deadline_seconds integer,
    p_agent_id integer,
    p_message text,
    p_session_idle interval,
    p_include_context boolean,
    p_trace jsonb
)
RETURNS TABLE ({RESULT})
LANGUAGE plpgsql VOLATILE
AS $fn$
#variable_conflict use_column
DECLARE
    v_found boolean;
    v_agent_id integer;
BEGIN
    SELECT l.conversation_found, COALESCE(p_agent_id, l.conversation_agent_id)
    INTO v_found, v_agent_id
    FROM chat.lock_for_ai_job(p_conversation_id, p_user_id) l;
    IF NOT v_found THEN
        RETURN;
    END IF;

    -- A new snapshot: everything committed before the locks were held is seen.
    RETURN QUERY
    WITH usage AS (
        SELECT * FROM chat.ai_quota(p_user_id, p_max_concurrent_jobs, p_daily_tokens, p_daily_cost)
    ),
    agent AS (SELECT * FROM chat.ai_agent(v_agent_id)),
    verdict AS (
        SELECT usage.*,
               CASE WHEN usage.quota_refusal IS NOT NULL THEN usage.quota_refusal
                    WHEN NOT EXISTS (SELECT FROM agent) THEN 'no_agent'
               END AS refusal
        FROM usage
    ),
    -- The latest message, when it is this one from the user (a retry): it is not stored twice.
    latest AS (
        SELECT m.id, m.sender, m.content FROM chat.messages m
        WHERE m.conversation_id = p_conversation_id ORDER BY m.id DESC LIMIT 1
    ),
    prompt AS (
        SELECT latest.id FROM latest WHERE latest.sender = 'user' AND latest.content = p_message
    ),
    -- As repository.record_new_message (the row is locked already, so times follow commit
    -- order); the conditions keep every write below from happening on a refusal or a retry.
    counted AS (
        UPDATE chat.conversations c
        SET total_messages = c.total_messages + 1,
            last_message_at = clock_timestamp(),
            updated_at = clock_timestamp()
        WHERE c.id = p_conversation_id AND c.user_id = p_user_id
          AND (SELECT verdict.refusal FROM verdict) IS NULL AND NOT EXISTS (SELECT FROM prompt)
        RETURNING c.id, c.last_message_at
    ),
    message AS (
        INSERT INTO chat.messages AS m
            (conversation_id, content, sender, content_type, message_type, created_at, updated_at)
        SELECT counted.id, p_message, 'user', 'text', 'text', counted.last_message_at,
               counted.last_message_at
        FROM counted
        RETURNING m.id, m.conversation_id, m.created_at
    ),
    -- Migration 0006's session rule. A SELECT in WITH runs only as far as it is read: the final
    -- SELECT reads it whole, and it has a row only when a message was stored.
    session AS (
        SELECT chat.record_session_activity(p_conversation_id, message.created_at, p_session_idle)
            AS id
        FROM message
    ),
    -- The time as pydantic writes it (shared/events.py `iso_utc`).
    event AS (
        INSERT INTO chat.outbox (type, user_id, data, trace)
        SELECT 'message.created', p_user_id,
               jsonb_build_object(
                   'conversation_id', message.conversation_id,
                   'message_id', message.id,
                   'sender', 'user',
                   'agent_id', NULL,
                   'created_at',
                   to_char(message.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
                   || CASE WHEN date_trunc('second', message.created_at) = message.created_at
                           THEN ''
                           ELSE to_char(message.created_at AT TIME ZONE 'UTC', '.US') END
                   || 'Z'
               ),
               p_trace
        FROM message
    ),
    job AS (
        INSERT INTO chat.ai_jobs AS j
            (conversation_id, user_id, agent_id, prompt_message_id, model, include_context,
             deadline_at, trace)
        SELECT p_conversation_id, p_user_id, agent.id,
               COALESCE((SELECT message.id FROM message), (SELECT prompt.id FROM prompt)),
               agent.model, p_include_context, now() + make_interval(secs => p_deadline_seconds),
               p_trace
        FROM agent
        WHERE (SELECT verdict.refusal FROM verdict) IS NULL
        {JOB_RETURNING}
    )
    SELECT job.*, verdict.refusal, verdict.active_jobs, verdict.tokens, verdict.cost,
           v_agent_id, (SELECT session.id FROM session)
    FROM verdict LEFT JOIN job ON true;
END
$fn$
"""

REGENERATION_REQUEST = f"""
CREATE FUNCTION chat.take_regeneration_request(
    p_conversation_id integer,
    p_user_id integer,
    p_max_concurrent_jobs integer,
    p_daily_tokens bigint,
    p_daily_cost float8,
    p_deadline_seconds integer,
    p_message_id integer,
    p_trace jsonb
)
RETURNS TABLE ({RESULT})
LANGUAGE plpgsql VOLATILE
AS $fn$
#variable_conflict use_column
DECLARE
    v_found boolean;
    v_conversation_agent_id integer;
BEGIN
    SELECT l.conversation_found, l.conversation_agent_id
    INTO v_found, v_conversation_agent_id
    FROM chat.lock_for_ai_job(p_conversation_id, p_user_id) l;
    IF NOT v_found THEN
        RETURN;
    END IF;

    -- A new snapshot: everything committed before the locks were held is seen.
    RETURN QUERY
    WITH usage AS (
        SELECT * FROM chat.ai_quota(p_user_id, p_max_concurrent_jobs, p_daily_tokens, p_daily_cost)
    ),
    -- An agent message of the conversation, with the user message it answered (its job's
    -- prompt, else the latest user message before it) and its agent.
    reply AS (
        SELECT m.id, rj.agent_id, COALESCE(rj.include_context, true) AS include_context,
               COALESCE(rj.prompt_message_id, (
                   SELECT max(p.id) FROM chat.messages p
                   WHERE p.conversation_id = m.conversation_id AND p.id < m.id
                     AND p.sender = 'user')) AS prompt_message_id
        FROM chat.messages m
        LEFT JOIN chat.ai_jobs rj ON rj.id = m.ai_job_id
        WHERE m.id = p_message_id AND m.conversation_id = p_conversation_id
          AND m.sender = 'agent'
    ),
    wanted AS (
        SELECT COALESCE((SELECT reply.agent_id FROM reply), v_conversation_agent_id) AS agent_id
    ),
    agent AS (SELECT * FROM chat.ai_agent((SELECT wanted.agent_id FROM wanted))),
    verdict AS (
        SELECT usage.*,
               CASE WHEN NOT EXISTS (SELECT FROM reply) THEN 'no_reply'
                    WHEN (SELECT reply.prompt_message_id FROM reply) IS NULL THEN 'no_prompt'
                    WHEN usage.quota_refusal IS NOT NULL THEN usage.quota_refusal
                    WHEN NOT EXISTS (SELECT FROM agent) THEN 'no_agent'
               END AS refusal
        FROM usage
    ),
    job AS (
        INSERT INTO chat.ai_jobs AS j
            (conversation_id, user_id, agent_id, prompt_message_id, model, include_context,
             deadline_at, regenerates_message_id, trace)
        SELECT p_conversation_id, p_user_id, agent.id, reply.prompt_message_id, agent.model,
               reply.include_context, now() + make_interval(secs => p_deadline_seconds),
               reply.id, p_trace
        FROM agent, reply
        WHERE (SELECT verdict.refusal FROM verdict) IS NULL
        {JOB_RETURNING}
    )
    SELECT job.*, verdict.refusal, verdict.active_jobs, verdict.tokens, verdict.cost,
           (SELECT wanted.agent_id FROM wanted), NULL::integer
    FROM verdict LEFT JOIN job ON true;
END
$fn$
"""

FUNCTIONS = {
    "chat.lock_for_ai_job(integer, integer)": LOCK,
    "chat.ai_quota(integer, integer, bigint, float8)": QUOTA,
    "chat.ai_agent(integer)": AGENT,
    "chat.take_ai_request(integer, integer, integer, bigint, float8, integer, integer, text, "
    "interval, boolean, jsonb)": AI_REQUEST,
    "chat.take_regeneration_request(integer, integer, integer, bigint, float8, integer, "
    "integer, jsonb)": REGENERATION_REQUEST,
}


def upgrade() -> None:
    for definition in FUNCTIONS.values():
        op.execute(definition)


def downgrade() -> None:
    for signature in reversed(FUNCTIONS):
        op.execute(f"DROP FUNCTION {signature}")
