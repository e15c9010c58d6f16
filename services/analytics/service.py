"""The analytics API's logic: the caller's dashboard, its daily stats as CSV, and the global view,
each read from the rollups in one consistent snapshot. Figures are defined in README.md."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import asyncpg

from services.analytics import repository as repo
from services.analytics.agents import AgentDirectory
from services.analytics.periods import Day, Period, select, zone
from shared.db.pool import Conn
from shared.tokens import Principal

MICROSECONDS = Decimal(1_000_000)


def _round(value: Decimal, places: str) -> float:
    """Half-up rounding of an exact decimal (never of a binary float)."""
    return float(value.quantize(Decimal(places), rounding=ROUND_HALF_UP))


def mean_seconds(total_us: int, count: int) -> float | None:
    """Mean of `count` durations summing to `total_us` microseconds, in seconds to the ms."""
    if count <= 0:
        return None
    return _round(Decimal(total_us) / count / MICROSECONDS, "0.001")


def percent(part: int, whole: int) -> float | None:
    """100 * part / whole to one decimal (95.5); None when whole is 0."""
    if whole <= 0:
        return None
    return _round(Decimal(100 * part) / whole, "0.1")


def ratio(total: int, count: int) -> float | None:
    if count <= 0:
        return None
    return _round(Decimal(total) / count, "0.01")


@dataclass(frozen=True)
class DailyRow:
    day: date
    conversations: int
    messages: int
    agent_messages: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "date": self.day,
            "conversations": self.conversations,
            "messages": self.messages,
            "agent_messages": self.agent_messages,
        }


def _range(period: Period) -> dict[str, Any]:
    return {"from": period.first, "to": period.last, "days": len(period.days)}


async def _daily(conn: Conn, user_id: int, days: Sequence[Day]) -> list[DailyRow]:
    rows = await repo.daily_activity(
        conn,
        user_id=user_id,
        days=[d.day for d in days],
        starts=[d.start for d in days],
        ends=[d.end for d in days],
    )
    return [
        DailyRow(r["day"], r["conversations"], r["messages"], r["agent_messages"]) for r in rows
    ]


def _most_active(rows: Sequence[asyncpg.Record], period: int) -> tuple[int, int] | None:
    """(agent, messages) with the most messages in the period; the lowest id on a tie."""
    best: tuple[int, int] | None = None
    for row in rows:
        if row["period"] != period:
            continue
        candidate = (int(row["agent_id"]), int(row["messages"]))
        if best is None or (candidate[1], -candidate[0]) > (best[1], -best[0]):
            best = candidate
    return best


def _agent(best: tuple[int, int] | None, names: dict[int, str | None]) -> dict[str, Any] | None:
    if best is None:
        return None
    return {"agent_id": best[0], "name": names.get(best[0]), "message_count": best[1]}


def _sums(rows: Sequence[DailyRow]) -> dict[str, int]:
    return {
        "conversations": sum(r.conversations for r in rows),
        "messages": sum(r.messages for r in rows),
        "agent_messages": sum(r.agent_messages for r in rows),
    }


class AnalyticsService:
    async def dashboard(
        self,
        pool: asyncpg.Pool,
        agents: AgentDirectory,
        user: Principal,
        authorization: str,
        *,
        time_zone: str,
        first: date | None,
        last: date | None,
        days: int | None,
    ) -> dict[str, Any]:
        tz = zone(time_zone)
        current, previous = select(tz=tz, first=first, last=last, days=days, today=None)
        async with (
            pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            totals = await repo.user_totals(conn, user_id=user.user_id)
            top = await repo.most_active_agent(conn, user_id=user.user_id)
            daily = await _daily(conn, user.user_id, previous.days + current.days)
            by_period = await repo.agents_by_period(
                conn,
                user_id=user.user_id,
                starts=[current.start, previous.start],
                ends=[current.end, previous.end],
            )
        before, now = daily[: len(previous.days)], daily[len(previous.days) :]
        overall = (int(top["agent_id"]), int(top["messages"])) if top is not None else None
        current_top, previous_top = _most_active(by_period, 1), _most_active(by_period, 2)
        wanted = {best[0] for best in (overall, current_top, previous_top) if best is not None}
        names = await agents.names(wanted, authorization) if wanted else {}
        completed = totals["replies_completed"] if totals else 0
        failed = totals["replies_failed"] if totals else 0
        return {
            "total_conversations": totals["conversations"] if totals else 0,
            "total_messages": totals["messages"] if totals else 0,
            "total_agent_messages": totals["agent_messages"] if totals else 0,
            "average_response_time": mean_seconds(
                totals["reply_time_us"] if totals else 0, completed
            ),
            "ai_replies_completed": completed,
            "ai_replies_failed": failed,
            "success_rate": percent(completed, completed + failed),
            "most_active_agent": _agent(overall, names),
            "daily_stats": [row.as_dict() for row in now],
            "time_zone": time_zone,
            "range": _range(current),
            "period": {**_sums(now), "most_active_agent": _agent(current_top, names)},
            "previous_period": {
                "range": _range(previous),
                **_sums(before),
                "most_active_agent": _agent(previous_top, names),
                "daily_stats": [row.as_dict() for row in before],
            },
        }

    async def daily_csv(
        self,
        pool: asyncpg.Pool,
        user: Principal,
        *,
        time_zone: str,
        first: date | None,
        last: date | None,
        days: int | None,
    ) -> tuple[str, bytes]:
        """(file name, CSV bytes) of the selected period's daily stats."""
        current, _ = select(tz=zone(time_zone), first=first, last=last, days=days, today=None)
        async with pool.acquire() as conn:
            rows = await _daily(conn, user.user_id, current.days)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(["date", "conversations", "messages", "agent_messages"])
        for row in rows:
            writer.writerow(
                [row.day.isoformat(), row.conversations, row.messages, row.agent_messages]
            )
        name = f"chat-daily-{current.first.isoformat()}-to-{current.last.isoformat()}.csv"
        return name, out.getvalue().encode()

    async def global_view(
        self, pool: asyncpg.Pool, agents: AgentDirectory, authorization: str, *, limit: int
    ) -> dict[str, Any]:
        async with (
            pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            totals = await repo.totals(conn)
            top = await repo.top_agents(conn, limit=limit)
        names = await agents.names([row["agent_id"] for row in top], authorization) if top else {}
        completed, failed = totals["replies_completed"], totals["replies_failed"]
        return {
            "total_conversations_all_users": totals["conversations"],
            "total_messages_all_users": totals["messages"],
            "average_conversations_per_user": ratio(
                totals["conversations"], totals["users_with_conversations"]
            ),
            "users_with_conversations": totals["users_with_conversations"],
            "total_agent_messages_all_users": totals["agent_messages"],
            "ai_replies_completed": completed,
            "ai_replies_failed": failed,
            "success_rate": percent(completed, completed + failed),
            "average_response_time": mean_seconds(totals["reply_time_us"], completed),
            "top_performing_agents": [
                {
                    "agent_id": row["agent_id"],
                    "name": names.get(row["agent_id"]),
                    "total_conversations": row["conversations"],
                    "success_rate": percent(
                        row["replies_completed"], row["replies_completed"] + row["replies_failed"]
                    ),
                    "messages": row["messages"],
                    "ai_replies_completed": row["replies_completed"],
                    "ai_replies_failed": row["replies_failed"],
                    "average_response_time": mean_seconds(
                        row["reply_time_us"], row["replies_completed"]
                    ),
                }
                for row in top
            ],
        }


analytics_service = AnalyticsService()
