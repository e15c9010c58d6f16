"""Helpers of the analytics tests: a scripted workload through the gateway, the figures as the
chat tables say them (plain SQL, computed here independently of the analytics code, following
the definitions in README.md), waiting on the aggregators, and synthetic events."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson
import psycopg
import redis

from services.analytics.rebuild import Report, verify
from shared.events import EVENT_STREAM
from tests.chat.factories import add_message, create_conversation, update_conversation
from tests.chat.helpers import ok_data
from tests.harness import Stack, User

DEADLINE = 90.0
POLL = 0.1  # a polling interval; each wait below is on a condition, with a deadline
AI_TIMEOUT = 60.0


def wait_consistent(stack: Stack, deadline: float = DEADLINE) -> Report:
    """Polls `rebuild --verify-only`'s check until the rollups equal the chat tables."""
    end = time.monotonic() + deadline
    while True:
        try:
            report = verify(stack.database_url)
        except psycopg.OperationalError:  # the shared server is momentarily out of connections
            assert time.monotonic() < end, "verify could not connect"
            time.sleep(POLL)
            continue
        if report.consistent:
            return report
        if time.monotonic() > end:
            listed = "\n".join(str(d) for d in report.differences[:30])
            raise AssertionError(f"{report.differing} differences after {deadline:.0f}s:\n{listed}")
        time.sleep(POLL)


def wait_for(check: Callable[[], Any], what: str, deadline: float = DEADLINE) -> Any:
    """Polls `check` until it returns something truthy; that value."""
    end = time.monotonic() + deadline
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(POLL)


def half_up(value: Fraction, places: int) -> float:
    exact = Decimal(value.numerator) / Decimal(value.denominator)
    return float(exact.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))


def mean_response_time(times: Sequence[float]) -> float | None:
    """README: the mean of processing times taken to the microsecond, in seconds to the ms."""
    if not times:
        return None
    return half_up(Fraction(sum(round(t * 1_000_000) for t in times), len(times) * 1_000_000), 3)


def success_rate(completed: int, failed: int) -> float | None:
    return half_up(Fraction(100 * completed, completed + failed), 1) if completed + failed else None


# --- the workload ---------------------------------------------------------------------------


def create_agent(http: httpx.Client, admin: User, name: str) -> int:
    body = {"name": name, "model": "default", "system_prompt": "Answer briefly."}
    return int(ok_data(http.post("/chat/agents", json=body, headers=admin.headers), 201)["id"])


def ask(http: httpx.Client, user: User, conversation_id: int, text: str, **body: Any) -> int:
    """An AI reply through the gateway; its HTTP status (200, or 502 when the model fails)."""
    response = http.post(
        f"/chat/conversations/{conversation_id}/ai-response",
        json={"message": text, **body},
        headers=user.headers,
        timeout=AI_TIMEOUT,
    )
    assert response.status_code in (200, 502), response.text
    return response.status_code


def scripted_workload(
    http: httpx.Client,
    user: User,
    agents: Sequence[int | None],
    *,
    rounds: int,
    progress: Callable[[], None] | None = None,
) -> None:
    """Conversations with various agents, messages, AI replies (some of them failing), an agent
    changed, single messages deleted, conversations archived and deleted with their messages
    and replies."""
    for index in range(rounds):
        agent = agents[index % len(agents)]
        conversation = create_conversation(http, user, agent_id=agent)
        cid = conversation["id"]
        for n in range(1 + index % 3):
            add_message(http, user, cid, content=f"hello {n} {secrets.token_hex(3)}")
        if index % 2 == 0:
            text = f"question {index} {secrets.token_hex(3)}"
            if index % 3 == 0:
                text = f"[[fail:500]] {text}"
            ask(http, user, cid, text, agent_id=agents[(index + 1) % len(agents)])
        if index % 4 == 1:
            update_conversation(http, user, cid, agent_id=agents[(index + 2) % len(agents)])
            ask(http, user, cid, f"after the change {secrets.token_hex(3)}")
        if index % 6 == 2:
            # Single messages deleted: a user message and the agent's reply.
            listed = ok_data(http.get(f"/chat/conversations/{cid}/messages", headers=user.headers))[
                "messages"
            ]
            for sender in ("user", "agent"):
                mid = next(m["id"] for m in listed if m["sender"] == sender)
                ok_data(
                    http.delete(f"/chat/conversations/{cid}/messages/{mid}", headers=user.headers)
                )
        if index % 5 == 3:
            update_conversation(http, user, cid, is_archived=True)
        if index % 5 == 4:
            ok_data(http.delete(f"/chat/conversations/{cid}", headers=user.headers))
        if progress is not None:
            progress()


# --- what the chat tables say -------------------------------------------------------------


def local_days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


# An agent message's agent: the one that answered its AI job (as the worker recorded it), else
# the one it was posted for by hand, else the conversation's.
_AGENT_MESSAGES = """
    SELECT COALESCE(u.agent_id, j.agent_id, m.agent_id, c.agent_id) AS agent_id,
           (m.created_at AT TIME ZONE %(tz)s)::date AS day
    FROM chat.messages m
    JOIN chat.conversations c ON c.id = m.conversation_id
    LEFT JOIN chat.ai_usage u ON u.job_id = m.ai_job_id
    LEFT JOIN chat.ai_jobs j ON j.id = m.ai_job_id
    WHERE c.user_id = %(user)s AND m.sender = 'agent'
"""


def _top(counts: dict[int, int], names: dict[int, str]) -> dict[str, Any] | None:
    ranked = sorted(((-n, aid) for aid, n in counts.items() if aid is not None and n > 0))
    if not ranked:
        return None
    count, agent_id = -ranked[0][0], ranked[0][1]
    return {"agent_id": agent_id, "name": names.get(agent_id), "message_count": count}


def agent_names(db: psycopg.Connection) -> dict[int, str]:
    return {row[0]: row[1] for row in db.execute("SELECT id, name FROM chat.agents")}


def chat_dashboard(
    db: psycopg.Connection, user_id: int, *, tz: str, first: date, last: date
) -> dict[str, Any]:
    """The dashboard's figures for one user as the chat tables say them now."""
    names = agent_names(db)
    params = {"user": user_id, "tz": tz}
    conversations = db.execute(
        "SELECT (created_at AT TIME ZONE %(tz)s)::date FROM chat.conversations"
        " WHERE user_id = %(user)s",
        params,
    ).fetchall()
    messages = db.execute(
        """
        SELECT (m.created_at AT TIME ZONE %(tz)s)::date, m.sender FROM chat.messages m
        JOIN chat.conversations c ON c.id = m.conversation_id WHERE c.user_id = %(user)s
        """,
        params,
    ).fetchall()
    jobs = db.execute(
        """
        SELECT j.status, j.processing_time FROM chat.ai_jobs j
        JOIN chat.conversations c ON c.id = j.conversation_id
        WHERE c.user_id = %(user)s AND j.status IN ('completed', 'failed')
        """,
        params,
    ).fetchall()
    agent_messages = db.execute(_AGENT_MESSAGES, params).fetchall()
    completed = [float(t) for status, t in jobs if status == "completed"]
    failed = sum(1 for status, _ in jobs if status == "failed")
    length = (last - first).days + 1
    previous_last = first - timedelta(days=1)
    previous_first = previous_last - timedelta(days=length - 1)

    def daily(days: list[date]) -> list[dict[str, Any]]:
        return [
            {
                "date": day.isoformat(),
                "conversations": sum(1 for (d,) in conversations if d == day),
                "messages": sum(1 for d, _ in messages if d == day),
                "agent_messages": sum(1 for d, s in messages if d == day and s == "agent"),
            }
            for day in days
        ]

    def top(days: list[date] | None) -> dict[str, Any] | None:
        counts: dict[int, int] = {}
        for agent_id, day in agent_messages:
            if days is None or day in days:
                counts[agent_id] = counts.get(agent_id, 0) + 1
        return _top(counts, names)

    def sums(rows: list[dict[str, Any]]) -> dict[str, int]:
        return {k: sum(r[k] for r in rows) for k in ("conversations", "messages", "agent_messages")}

    current_days = local_days(first, last)
    previous_days = local_days(previous_first, previous_last)
    current, previous = daily(current_days), daily(previous_days)
    return {
        "total_conversations": len(conversations),
        "total_messages": len(messages),
        "total_agent_messages": sum(1 for _, s in messages if s == "agent"),
        "average_response_time": mean_response_time(completed),
        "ai_replies_completed": len(completed),
        "ai_replies_failed": failed,
        "success_rate": success_rate(len(completed), failed),
        "most_active_agent": top(None),
        "daily_stats": current,
        "time_zone": tz,
        "range": {"from": first.isoformat(), "to": last.isoformat(), "days": length},
        "period": {**sums(current), "most_active_agent": top(current_days)},
        "previous_period": {
            "range": {
                "from": previous_first.isoformat(),
                "to": previous_last.isoformat(),
                "days": length,
            },
            **sums(previous),
            "most_active_agent": top(previous_days),
            "daily_stats": previous,
        },
    }


def chat_global(db: psycopg.Connection, *, limit: int = 100) -> dict[str, Any]:
    """The global view's figures as the chat tables say them now."""
    names = agent_names(db)
    conversations, users = db.execute(
        "SELECT count(*), count(DISTINCT user_id) FROM chat.conversations"
    ).fetchone() or (0, 0)
    messages, agent_messages = db.execute(
        "SELECT count(*), count(*) FILTER (WHERE sender = 'agent') FROM chat.messages"
    ).fetchone() or (0, 0)
    by_agent: dict[int, dict[str, Any]] = {}

    def agent(agent_id: int) -> dict[str, Any]:
        return by_agent.setdefault(
            agent_id, {"conversations": 0, "messages": 0, "completed": [], "failed": 0}
        )

    for agent_id, count in db.execute(
        "SELECT agent_id, count(*) FROM chat.conversations WHERE agent_id IS NOT NULL GROUP BY 1"
    ):
        agent(agent_id)["conversations"] = count
    for agent_id, count in db.execute(
        """
        SELECT COALESCE(u.agent_id, j.agent_id, c.agent_id), count(*) FROM chat.messages m
        JOIN chat.conversations c ON c.id = m.conversation_id
        LEFT JOIN chat.ai_usage u ON u.job_id = m.ai_job_id
        LEFT JOIN chat.ai_jobs j ON j.id = m.ai_job_id
        WHERE m.sender = 'agent' GROUP BY 1
        """
    ):
        if agent_id is not None:
            agent(agent_id)["messages"] = count
    all_completed: list[float] = []
    all_failed = 0
    for status, agent_id, seconds in db.execute(
        """
        SELECT j.status, CASE WHEN j.status = 'completed' THEN COALESCE(u.agent_id, j.agent_id)
                              ELSE j.agent_id END, j.processing_time
        FROM chat.ai_jobs j LEFT JOIN chat.ai_usage u ON u.job_id = j.id
        WHERE j.status IN ('completed', 'failed')
        """
    ):
        if status == "completed":
            all_completed.append(float(seconds))
        else:
            all_failed += 1
        if agent_id is None:
            continue
        if status == "completed":
            agent(agent_id)["completed"].append(float(seconds))
        else:
            agent(agent_id)["failed"] += 1

    def rank(item: tuple[int, dict[str, Any]]) -> tuple[Any, ...]:
        agent_id, figures = item
        done = len(figures["completed"]) + figures["failed"]
        rate = Fraction(len(figures["completed"]), done) if done else None
        return (rate is None, -figures["conversations"], -(rate or 0), agent_id)

    top = [
        {
            "agent_id": agent_id,
            "name": names.get(agent_id),
            "total_conversations": figures["conversations"],
            "success_rate": success_rate(len(figures["completed"]), figures["failed"]),
            "messages": figures["messages"],
            "ai_replies_completed": len(figures["completed"]),
            "ai_replies_failed": figures["failed"],
            "average_response_time": mean_response_time(figures["completed"]),
        }
        for agent_id, figures in sorted(by_agent.items(), key=rank)
    ][:limit]
    return {
        "total_conversations_all_users": conversations,
        "total_messages_all_users": messages,
        "average_conversations_per_user": (
            half_up(Fraction(conversations, users), 2) if users else None
        ),
        "users_with_conversations": users,
        "total_agent_messages_all_users": agent_messages,
        "ai_replies_completed": len(all_completed),
        "ai_replies_failed": all_failed,
        "success_rate": success_rate(len(all_completed), all_failed),
        "average_response_time": mean_response_time(all_completed),
        "top_performing_agents": top,
    }


def dashboard(http: httpx.Client, user: User, **params: Any) -> dict[str, Any]:
    data: dict[str, Any] = ok_data(
        http.get("/chat/analytics/dashboard", params=params, headers=user.headers)
    )
    return data


def global_view(http: httpx.Client, admin: User, **params: Any) -> dict[str, Any]:
    data: dict[str, Any] = ok_data(
        http.get("/chat/analytics/global", params=params, headers=admin.headers)
    )
    return data


def assert_figures_match_chat_tables(
    http: httpx.Client,
    db: psycopg.Connection,
    users: Sequence[User],
    admin: User,
    *,
    tz: str,
    deadline: float = DEADLINE,
) -> None:
    """Every dashboard figure of `users` and every global figure equals what the chat tables
    say (polled: the last events may still be on their way)."""
    today = datetime.now(ZoneInfo(tz)).date()
    first = today - timedelta(days=6)
    end = time.monotonic() + deadline
    while True:
        problems = []
        for user in users:
            want = chat_dashboard(db, user.id, tz=tz, first=first, last=today)
            got = dashboard(http, user, tz=tz, to=today.isoformat(), days=7)
            if got != want:
                problems.append(f"dashboard of user {user.id}:\n  api  {got}\n  chat {want}")
        want_global = chat_global(db)
        got_global = global_view(http, admin, limit=100)
        if got_global != want_global:
            problems.append(f"global:\n  api  {got_global}\n  chat {want_global}")
        if not problems:
            return
        assert time.monotonic() < end, "\n".join(problems)
        time.sleep(POLL)


# --- synthetic events, for times the API cannot produce -------------------------------------


@dataclass
class EventWriter:
    """Appends events straight to the stream (as the relay would), for a conversation id far
    above the chat service's; `delete()` at the end takes everything back off the rollups."""

    client: redis.Redis
    stream: str
    user_id: int
    conversation_id: int

    @classmethod
    def open(cls, stack: Stack, user_id: int) -> EventWriter:
        return cls(
            redis.Redis.from_url(stack.redis_url),
            f"{stack.redis_prefix}{EVENT_STREAM}",
            user_id,
            1_900_000_000 + secrets.randbelow(100_000_000),
        )

    def add(self, event_type: str, *, occurred_at: datetime | None = None, **data: Any) -> str:
        """Appends one event; returns its id."""
        event_id = str(uuid.uuid4())
        event = {
            "id": event_id,
            "type": event_type,
            "version": 1,
            "occurred_at": occurred_at or datetime.now(UTC),
            "user_id": self.user_id,
            "data": {"conversation_id": self.conversation_id, **data},
        }
        self.client.xadd(self.stream, {"event": orjson.dumps(event)})
        return event_id

    def created(
        self, at: datetime, agent_id: int | None, occurred_at: datetime | None = None
    ) -> str:
        return self.add(
            "conversation.created",
            occurred_at=occurred_at,
            agent_id=agent_id,
            title="synthetic",
            created_at=at,
        )

    def message(self, at: datetime, *, agent_id: int | None = None) -> str:
        return self.add(
            "message.created",
            message_id=secrets.randbelow(2**31),
            sender="agent" if agent_id is not None else "user",
            agent_id=agent_id,
            created_at=at,
        )

    def delete(self) -> str:
        return self.add("conversation.deleted", agent_id=None)

    def close(self) -> None:
        self.client.close()


def wait_processed(db: psycopg.Connection, event_ids: Sequence[str]) -> None:
    """Until the aggregators have applied (or skipped as changing nothing) these events."""

    def done() -> bool:
        row = db.execute(
            "SELECT count(*) FROM analytics.processed_events WHERE event_id = ANY(%s::uuid[])",
            (list(event_ids),),
        ).fetchone()
        return row is not None and row[0] == len(set(event_ids))

    wait_for(done, f"{len(event_ids)} events to be processed")
