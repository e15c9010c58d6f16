"""How chat takes an AI reply request in: `POST .../ai-response` and `.../regenerate`.

Each request is one call of a PL/pgSQL function of chat migration 0011, which holds the SQL. The
function runs two statements, not the ten or so of the request's parts:

1. the conversation's row lock, then the user's quota lock (`chat.lock_for_ai_job`);
2. everything that must see the state those locks protect (quota usage, the latest message, the
   reply to redo, the agent), the verdict on it, and, only when the verdict is to go ahead,
   every write.

Called outside a transaction block, the call is one round trip, its commit included, instead of
four (BEGIN, 1, 2, COMMIT): about 2.3 ms of the reply's latency on our 2-core VMs. With an
Idempotency-Key it runs inside the key's transaction (services/chat/unit_of_work.py).

Why the locks are a statement of their own: under READ COMMITTED a statement reads with the
snapshot taken when it starts, so a read in the statement that waits for a lock cannot see what
the lock's previous holder committed meanwhile. The usage read would miss the jobs a concurrent
request of the same user just stored (and let both through the quota), and the latest-message
read would miss the message a concurrent request just posted (and store it twice). Statement 2
starts after both locks are held (a volatile function's statements each take a new snapshot),
so it sees everything committed before them, and nobody can commit a competing job or message
until the transaction ends.

The verdict (which check refuses, in the order the API answers them) is computed in SQL, so
statement 2 writes nothing on a refusal (no id is spent, no row is written and rolled back); the
service turns it into the error (`AIService`, services/chat/service.py). Changing any of this
is a new migration replacing the functions it touches.
"""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from shared.db.pool import Conn
from shared.events import event_trace_json

Record = asyncpg.Record

# The columns of the functions' answer besides the job's (which are null on a refusal).
VERDICT_COLUMNS = (
    "refusal",
    "active_jobs",
    "tokens_used",
    "cost_used",
    "wanted_agent_id",
    "session_id",
)


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
    """None when the conversation is missing or not the caller's; otherwise the verdict on the
    request (`refusal`, null to go ahead, with the usage it was judged on) and, when it goes
    ahead, the job (its columns; null otherwise). Going ahead stores the user's message first
    (with what every message post writes: the conversation's counters, its session, the
    `message.created` event) unless it is already the latest message, then the job answering
    it. `agent_id` None asks for the conversation's agent (`wanted_agent_id` says which)."""
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


async def take_regeneration_request(
    conn: Conn,
    *,
    conversation_id: int,
    user_id: int,
    message_id: int,
    deadline_seconds: int,
    max_concurrent_jobs: int,
    daily_tokens: int,
    daily_cost: float,
) -> Record | None:
    """As `take_ai_request`, for a job answering again the user message that an agent reply
    (`message_id`) answered; the verdict first checks that there is such a reply (`no_reply`)
    and that it answers a user message (`no_prompt`). `wanted_agent_id` is the agent it asks
    for: the reply's job's, else the conversation's."""
    return await conn.fetchrow(
        "SELECT * FROM chat.take_regeneration_request($1, $2, $3, $4, $5, $6, $7, $8)",
        conversation_id,
        user_id,
        max_concurrent_jobs,
        daily_tokens,
        daily_cost,
        deadline_seconds,
        message_id,
        event_trace_json(),  # the job's trace: the sweeper re-sends it on this request's behalf
    )
