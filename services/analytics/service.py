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


def _days(
    days: Sequence[Day],
    index: Sequence[int],
    conversations: Sequence[int],
    messages: Sequence[int],
    agent_messages: Sequence[int],
) -> list[DailyRow]:
    """Every day of the range, zeros included, from the days that had activity (1-based)."""
    found = {
        i: (c, m, am)
        for i, c, m, am in zip(index, conversations, messages, agent_messages, strict=True)
    }
    return [DailyRow(d.day, *map(int, found.get(n, (0, 0, 0)))) for n, d in enumerate(days, 1)]


def _most_active(
    periods: Sequence[int], agents: Sequence[int], messages: Sequence[int], period: int
) -> tuple[int, int] | None:
    """(agent, messages) with the most messages in the period; the lowest id on a tie."""
    best: tuple[int, int] | None = None
    for p, agent_id, count in zip(periods, agents, messages, strict=True):
        if p == period and (best is None or (count, -agent_id) > (best[1], -best[0])):
            best = (int(agent_id), int(count))
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
        shown = previous.days + current.days
        async with pool.acquire() as conn:
            row = await repo.dashboard(
                conn,
                user_id=user.user_id,
                day_starts=[d.start for d in shown],
                end=current.end,
                period_starts=[previous.start, current.start],
            )
        daily = _days(
            shown,
            row["day_index"],
            row["day_conversations"],
            row["day_messages"],
            row["day_agent_messages"],
        )
        before, now = daily[: len(previous.days)], daily[len(previous.days) :]
        overall = (
            (int(row["top_agent_id"]), int(row["top_messages"]))
            if row["top_agent_id"] is not None
            else None
        )
        by_period = (row["period_index"], row["period_agent"], row["period_messages"])
        previous_top = _most_active(*by_period, 1)
        current_top = _most_active(*by_period, 2)
        wanted = {best[0] for best in (overall, current_top, previous_top) if best is not None}
        names = await agents.names(wanted, authorization) if wanted else {}
        completed = row["replies_completed"] or 0
        failed = row["replies_failed"] or 0
        return {
            "total_conversations": row["conversations"] or 0,
            "total_messages": row["messages"] or 0,
            "total_agent_messages": row["agent_messages"] or 0,
            "average_response_time": mean_seconds(row["reply_time_us"] or 0, completed),
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
            found = await repo.daily_activity(
                conn,
                user_id=user.user_id,
                day_starts=[d.start for d in current.days],
                end=current.end,
            )
        rows = _days(
            current.days,
            [r["i"] for r in found],
            [r["c"] for r in found],
            [r["m"] for r in found],
            [r["am"] for r in found],
        )
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
