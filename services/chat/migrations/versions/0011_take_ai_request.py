"""`chat.take_ai_request`: an `ai-response` request's locks, checks and writes as one call.

Before, chat took the request in with four round trips: BEGIN, the locks, the statement that
reads what the checks need and writes the message and the job, COMMIT
(services/chat/job_intake.py explains why the locks cannot share that statement: it must read
with a snapshot taken after they are held). A PL/pgSQL function runs the same two statements,
each with its own snapshot (a volatile function's statements take a new one each under READ
COMMITTED), in one call: outside a transaction block that is one round trip, with the commit.
Each round trip on the reply's path costs the caller about 0.8 ms here (`python -m bench floor`).

The statements are those of job_intake.py at revision 0010, with the parameters named. No row
comes back when the conversation is missing or not the caller's (and then no lock is held and
nothing is written); otherwise one: the verdict (`refusal`, null to go ahead, and the usage it
was judged on) and, when it goes ahead, the job's columns (null otherwise).

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

SIGNATURE = """chat.take_ai_request(
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
)"""

FUNCTION = f"""
CREATE FUNCTION {SIGNATURE}
RETURNS TABLE (
    id bigint, conversation_id integer, user_id integer, agent_id integer, status varchar,
    model varchar, prompt_message_id integer, reply_message_id integer,
    regenerates_message_id integer, attempts integer, error_code varchar, error text,
    input_tokens integer, output_tokens integer, cost float8, processing_time float8,
    created_at timestamptz, started_at timestamptz, finished_at timestamptz, batch_id bigint,
    refusal text, active_jobs bigint, tokens_used bigint, cost_used float8,
    wanted_agent_id integer, session_id integer
)
LANGUAGE plpgsql VOLATILE
AS $fn$
#variable_conflict use_column
DECLARE
    v_agent_id integer;
BEGIN
    -- The conversation's row lock, then the user's quota lock (job_intake.lock_for_job: the
    -- advisory lock's argument comes from the locked row, so it is taken second).
    WITH conversation AS MATERIALIZED (
        SELECT c.id, c.user_id, c.agent_id FROM chat.conversations c
        WHERE c.id = p_conversation_id AND c.user_id = p_user_id
        FOR UPDATE
    )
    SELECT COALESCE(p_agent_id, conversation.agent_id)
    INTO v_agent_id
    FROM conversation
    WHERE pg_advisory_xact_lock(hashtext('chat.ai-quota'), conversation.user_id) IS NOT NULL;
    IF NOT FOUND THEN
        RETURN;
    END IF;

    -- A new snapshot: everything committed before the locks were held is seen.
    RETURN QUERY
    WITH usage AS (
        SELECT
            (SELECT count(*) FROM chat.ai_jobs j
             WHERE j.user_id = p_user_id AND j.status IN ('queued', 'running')
               AND j.batch_id IS NULL) AS active_jobs,
            COALESCE(sum(u.input_tokens + u.output_tokens), 0)::bigint AS tokens,
            COALESCE(sum(u.cost), 0)::float8 AS cost
        FROM chat.ai_usage u
        WHERE u.user_id = p_user_id AND u.batch_id IS NULL
          AND u.created_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
    ),
    agent AS (
        (SELECT a.id, a.model FROM chat.agents a WHERE a.id = v_agent_id AND a.is_active)
        UNION ALL
        (SELECT a.id, a.model FROM chat.agents a
         WHERE v_agent_id IS NULL AND a.is_default AND a.is_active LIMIT 1)
    ),
    verdict AS (
        SELECT usage.*,
               CASE WHEN usage.active_jobs >= p_max_concurrent_jobs THEN 'concurrent_jobs'
                    WHEN usage.tokens >= p_daily_tokens THEN 'daily_tokens'
                    WHEN p_daily_cost > 0 AND usage.cost >= p_daily_cost THEN 'daily_cost'
                    WHEN NOT EXISTS (SELECT FROM agent) THEN 'no_agent'
               END AS refusal
        FROM usage
    ),
    latest AS (
        SELECT m.id, m.sender, m.content FROM chat.messages m
        WHERE m.conversation_id = p_conversation_id ORDER BY m.id DESC LIMIT 1
    ),
    prompt AS (
        SELECT latest.id FROM latest WHERE latest.sender = 'user' AND latest.content = p_message
    ),
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
    session AS (
        SELECT chat.record_session_activity(p_conversation_id, message.created_at, p_session_idle)
            AS id
        FROM message
    ),
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
        RETURNING j.id, j.conversation_id, j.user_id, j.agent_id, j.status, j.model,
                  j.prompt_message_id, j.reply_message_id, j.regenerates_message_id, j.attempts,
                  j.error_code, j.error, j.input_tokens, j.output_tokens, j.cost::float8,
                  j.processing_time, j.created_at, j.started_at, j.finished_at, j.batch_id
    )
    SELECT job.*, verdict.refusal, verdict.active_jobs, verdict.tokens, verdict.cost,
           v_agent_id, (SELECT session.id FROM session)
    FROM verdict LEFT JOIN job ON true;
END
$fn$
"""


def upgrade() -> None:
    op.execute(FUNCTION)


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {SIGNATURE}")
