"""The read API: daily stats in the caller's time zone (DST included), the previous period, the
CSV export, range validation, the admin-only global view, and events applied out of order or
after their conversation was deleted."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from tests.analytics.support import (
    EventWriter,
    dashboard,
    global_view,
    wait_consistent,
    wait_for,
    wait_processed,
)
from tests.chat.factories import add_message, create_conversation
from tests.chat.helpers import assert_error, ok_data
from tests.harness import Stack, User


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def default_agent(http: httpx.Client, user: User) -> dict[str, Any]:
    listed = ok_data(http.get("/chat/agents", params={"limit": 100}, headers=user.headers))
    return next(agent for agent in listed["agents"] if agent["is_default"])


def day(date: str, conversations: int, messages: int, agent_messages: int = 0) -> dict[str, Any]:
    return {
        "date": date,
        "conversations": conversations,
        "messages": messages,
        "agent_messages": agent_messages,
    }


@pytest.fixture
def synthetic(stack: Stack, new_user: Callable[..., User]) -> Iterator[tuple[User, EventWriter]]:
    """A user and a conversation of theirs made of events written straight to the stream, at
    times of the test's choosing; deleted at the end (its counts leave the rollups)."""
    user = new_user()
    writer = EventWriter.open(stack, user.id)
    yield user, writer
    writer.delete()
    writer.close()


def test_daily_stats_follow_the_callers_time_zone_and_dst(
    http: httpx.Client, synthetic: tuple[User, EventWriter]
) -> None:
    user, writer = synthetic
    agent = default_agent(http, user)
    # Paris moves from UTC+1 to UTC+2 at 2026-03-29 01:00 UTC: its 29 March lasts 23 hours.
    writer.created(utc("2026-03-27T22:30:00"), agent["id"])
    for at in ("2026-03-27T23:10", "2026-03-28T22:50", "2026-03-28T23:05"):
        writer.message(utc(at))
    for at in ("2026-03-29T21:55", "2026-03-29T22:05"):
        writer.message(utc(at))
    writer.message(utc("2026-03-28T12:00"), agent_id=agent["id"])
    # The previous period (23-26 March): two agent messages.
    writer.message(utc("2026-03-24T12:00"), agent_id=agent["id"])
    writer.message(utc("2026-03-24T23:30"), agent_id=agent["id"])
    wait_for(lambda: dashboard(http, user)["total_messages"] == 8, "the synthetic events")

    paris = dashboard(http, user, tz="Europe/Paris", **{"from": "2026-03-27", "to": "2026-03-30"})
    assert paris["time_zone"] == "Europe/Paris"
    assert paris["range"] == {"from": "2026-03-27", "to": "2026-03-30", "days": 4}
    assert paris["daily_stats"] == [
        day("2026-03-27", 1, 0),
        day("2026-03-28", 0, 3, 1),  # 00:10, 13:00 (agent), 23:50 local
        day("2026-03-29", 0, 2),  # 00:05 (UTC+1), 23:55 (UTC+2)
        day("2026-03-30", 0, 1),  # 00:05
    ]
    named = {"agent_id": agent["id"], "name": agent["name"]}
    assert paris["period"] == {
        "conversations": 1,
        "messages": 6,
        "agent_messages": 1,
        "most_active_agent": {**named, "message_count": 1},
    }
    previous = paris["previous_period"]
    assert previous["range"] == {"from": "2026-03-23", "to": "2026-03-26", "days": 4}
    assert previous["daily_stats"] == [
        day("2026-03-23", 0, 0),
        day("2026-03-24", 0, 1, 1),
        day("2026-03-25", 0, 1, 1),  # 23:30 UTC is 00:30 the next day in Paris
        day("2026-03-26", 0, 0),
    ]
    assert (previous["conversations"], previous["messages"], previous["agent_messages"]) == (
        0,
        2,
        2,
    )
    assert previous["most_active_agent"] == {**named, "message_count": 2}
    assert paris["most_active_agent"] == {**named, "message_count": 3}
    assert (paris["total_conversations"], paris["total_messages"]) == (1, 8)

    in_utc = dashboard(http, user, tz="UTC", **{"from": "2026-03-27", "to": "2026-03-30"})
    assert in_utc["daily_stats"] == [
        day("2026-03-27", 1, 1),
        day("2026-03-28", 0, 3, 1),
        day("2026-03-29", 0, 2),
        day("2026-03-30", 0, 0),
    ]
    # UTC+5:45: 21:55 and 22:05 UTC on 29 March are 03:40 and 03:50 on the 30th.
    kathmandu = dashboard(http, user, tz="Asia/Kathmandu", days=2, to="2026-03-30")
    assert kathmandu["daily_stats"] == [day("2026-03-29", 0, 2), day("2026-03-30", 0, 2)]

    response = http.get(
        "/chat/analytics/dashboard/daily.csv",
        params={"tz": "Europe/Paris", "from": "2026-03-27", "to": "2026-03-30"},
        headers=user.headers,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert "chat-daily-2026-03-27-to-2026-03-30.csv" in response.headers["content-disposition"]
    assert list(csv.reader(io.StringIO(response.text))) == [
        ["date", "conversations", "messages", "agent_messages"],
        ["2026-03-27", "1", "0", "0"],
        ["2026-03-28", "0", "3", "1"],
        ["2026-03-29", "0", "2", "0"],
        ["2026-03-30", "0", "1", "0"],
    ]


def test_late_and_out_of_order_events(
    stack: Stack,
    http: httpx.Client,
    db: psycopg.Connection,
    admin: User,
    agents: list[int | None],
    synthetic: tuple[User, EventWriter],
) -> None:
    user, writer = synthetic
    first, second = agents[0], agents[1]
    now = datetime.now(UTC)

    def conversations_of(agent_id: int | None) -> int:
        listed = global_view(http, admin, limit=100)["top_performing_agents"]
        return next((a["total_conversations"] for a in listed if a["agent_id"] == agent_id), 0)

    # A message before its conversation's creation, and the agent change before the creation
    # it follows: applied in this order, they mean what they mean in the right order.
    wait_processed(
        db,
        [
            writer.message(now),
            writer.add("conversation.updated", occurred_at=now, changes={"agent_id": second}),
            writer.created(
                now - timedelta(seconds=1), first, occurred_at=now - timedelta(seconds=1)
            ),
        ],
    )
    data = dashboard(http, user)
    assert (data["total_conversations"], data["total_messages"]) == (1, 1), data
    assert (conversations_of(first), conversations_of(second)) == (0, 1)

    # Deleted: it leaves every figure, and events about it applied later change nothing.
    wait_processed(db, [writer.delete()])
    data = dashboard(http, user)
    assert (data["total_conversations"], data["total_messages"]) == (0, 0), data
    late = [writer.message(now), writer.created(now, first), writer.message(now, agent_id=first)]
    wait_processed(db, late)
    data = dashboard(http, user)
    assert (data["total_conversations"], data["total_messages"]) == (0, 0), data
    assert (conversations_of(first), conversations_of(second)) == (0, 0)
    wait_consistent(stack)


def test_range_parameters(http: httpx.Client, new_user: Callable[..., User]) -> None:
    user = new_user()
    data = dashboard(http, user)
    today = datetime.now(UTC).date()
    assert data["time_zone"] == "UTC"
    assert data["range"] == {
        "from": (today - timedelta(days=29)).isoformat(),
        "to": today.isoformat(),
        "days": 30,
    }
    assert len(data["daily_stats"]) == 30 and len(data["previous_period"]["daily_stats"]) == 30
    assert data["most_active_agent"] is None and data["average_response_time"] is None

    week = dashboard(http, user, days=7, to="2026-01-07")
    assert [d["date"] for d in week["daily_stats"]][0] == "2026-01-01"
    assert week["previous_period"]["range"] == {"from": "2025-12-25", "to": "2025-12-31", "days": 7}

    bad = [
        ({"tz": "Mars/Olympus_Mons"}, "tz"),
        ({"tz": "../../etc/passwd"}, "tz"),
        ({"from": "2026-02-02", "to": "2026-02-01"}, "from"),
        ({"days": 0}, "days"),
        ({"days": 367}, "days"),
        ({"from": "2026-01-01", "days": 3}, "days"),
        ({"from": "2024-01-01", "to": "2026-01-01"}, "from"),
        ({"from": "1900-01-01", "to": "1900-01-02"}, "from"),
        ({"to": "not-a-date"}, "to"),
    ]
    for params, where in bad:
        for path in ("/chat/analytics/dashboard", "/chat/analytics/dashboard/daily.csv"):
            body = assert_error(
                http.get(path, params=params, headers=user.headers), 422, "validation_error"
            )
            assert where in str(body["error"]["details"]), (params, body)


def test_each_user_sees_only_their_own(http: httpx.Client, new_user: Callable[..., User]) -> None:
    alice, bob = new_user(), new_user()
    conversation = create_conversation(http, alice)
    add_message(http, alice, conversation["id"])
    wait_for(lambda: dashboard(http, alice)["total_messages"] == 1, "alice's message")
    data = dashboard(http, bob)
    assert (data["total_conversations"], data["total_messages"]) == (0, 0), data


def test_global_view_is_for_administrators(
    http: httpx.Client, new_user: Callable[..., User], admin: User
) -> None:
    assert_error(http.get("/chat/analytics/global"), 401)
    user = new_user()
    assert_error(http.get("/chat/analytics/global", headers=user.headers), 403, "forbidden")
    data = global_view(http, admin)
    assert data["total_conversations_all_users"] >= 0
    assert len(data["top_performing_agents"]) <= 10
    assert_error(
        http.get("/chat/analytics/global", params={"limit": 0}, headers=admin.headers), 422
    )
