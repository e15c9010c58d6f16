"""The aggregator's arithmetic (services/analytics/rollups.py), without a database: one
conversation's events give the same rollups in any order and any split into batches, and a
deletion takes back exactly what the conversation added."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.analytics.rollups import (
    CONVERSATION_AGENTS,
    CONVERSATION_BUCKETS,
    TABLES,
    TOTALS,
    ConversationState,
    Rollups,
    Table,
    bucket_of,
    conversation_owners,
    plan_batch,
    subtract_stored,
    time_us,
)
from shared.events import Event, EventType, parse_event

T0 = datetime(2026, 3, 29, 0, 55, tzinfo=UTC)


def event(event_type: EventType, at: datetime, user_id: int = 7, **data: Any) -> tuple[Event, Any]:
    body = Event(
        id=uuid.uuid4(),
        type=event_type,
        version=1,
        occurred_at=at,
        user_id=user_id,
        data={"conversation_id": 1, **data},
    ).model_dump_json()
    return parse_event(body)


class Memory:
    """What the writer does, on dicts: the stored states and the rollup tables' contents."""

    def __init__(self) -> None:
        self.states: dict[int, ConversationState] = {}
        self.tables = Rollups()

    def apply(self, events: list[tuple[Event, Any]]) -> None:
        owners = conversation_owners(events)
        stored = {
            cid: self.states.get(cid) or ConversationState(cid, owner)
            for cid, owner in owners.items()
        }
        self.states.update(stored)
        plan = plan_batch(events, stored)
        if plan.deleted:
            ids = {state.conversation_id for state in plan.deleted}
            buckets = self._take(CONVERSATION_BUCKETS, ids)
            agents = self._take(CONVERSATION_AGENTS, ids)
            owned = {state.conversation_id: state.user_id for state in plan.deleted}
            subtract_stored(plan.rollups, owned, buckets, agents)
        for state in plan.states:
            self.states[state.conversation_id] = state
        for table in TABLES:
            for key, values in plan.rollups.changes(table):
                self.tables.add(table, key, values)

    def _take(self, table: Table, ids: set[int]) -> list[tuple[Any, ...]]:
        """Removes and returns deleted conversations' own rows, as the writer's DELETE does."""
        rows = self.tables.rows[table.name]
        keys = [key for key in rows if key[0] in ids]
        return [(*key, *rows.pop(key)) for key in keys]

    def contents(self) -> dict[str, list[tuple[Any, ...]]]:
        return {
            table.name: [(k, tuple(v)) for k, v in self.tables.changes(table)] for table in TABLES
        }


def lifecycle(deleted: bool) -> list[tuple[Event, Any]]:
    events = [
        event("conversation.created", T0, agent_id=3, title="t", created_at=T0),
        event("message.created", T0, message_id=1, sender="user", agent_id=None, created_at=T0),
        event(
            "message.created",
            T0 + timedelta(minutes=10),  # the next 15-minute bucket
            message_id=2,
            sender="agent",
            agent_id=3,
            created_at=T0 + timedelta(minutes=10),
        ),
        event(
            "ai.reply.completed",
            T0 + timedelta(minutes=10),
            job_id=1,
            agent_id=3,
            model="m",
            status="completed",
            message_id=2,
            input_tokens=1,
            output_tokens=1,
            cost="0",
            processing_time=1.2345678,
            time_to_first_token=None,
        ),
        event("ai.reply.failed", T0, job_id=2, agent_id=4, model="m", error_code="x"),
        event("conversation.updated", T0 + timedelta(minutes=20), changes={"agent_id": 4}),
    ]
    if deleted:
        events.append(event("conversation.deleted", T0 + timedelta(minutes=30), agent_id=4))
    return events


def in_order(events: list[tuple[Event, Any]]) -> dict[str, list[tuple[Any, ...]]]:
    memory = Memory()
    memory.apply(events)
    return memory.contents()


def test_the_rollups_of_a_conversation() -> None:
    got = in_order(lifecycle(deleted=False))
    b0, b1 = bucket_of(T0), bucket_of(T0 + timedelta(minutes=10))
    assert b0 == datetime(2026, 3, 29, 0, 45, tzinfo=UTC) and b1 == b0 + timedelta(minutes=15)
    assert got["conversation_buckets"] == [((1, b0, 0), (1, 0)), ((1, b1, 3), (1, 1))]
    assert got["conversation_agents"] == [((1, 3), (1, 0, 1_234_568)), ((1, 4), (0, 1, 0))]
    assert got["user_activity"] == [((7, b0), (1, 1, 0)), ((7, b1), (0, 1, 1))]
    assert got["user_agent_totals"] == [((7, 3), (1,))]
    # The conversation counts for its agent after the change.
    assert got["agent_totals"] == [((3,), (0, 1, 1, 0, 1_234_568)), ((4,), (1, 0, 0, 1, 0))]
    assert got["totals"] == [((1,), (1, 2, 1, 0, 1, 1, 1_234_568))]


def test_a_deletion_takes_back_everything() -> None:
    got = in_order(lifecycle(deleted=True))
    assert all(rows == [] for rows in got.values()), got


@pytest.mark.parametrize("deleted", [False, True])
def test_any_order_and_any_batches_give_the_same_rollups(deleted: bool) -> None:
    events = lifecycle(deleted)
    expected = in_order(events)
    for order in itertools.permutations(events):
        one_by_one, halves = Memory(), Memory()
        for single in order:
            one_by_one.apply([single])
        middle = len(order) // 2
        halves.apply(list(order[:middle]))
        halves.apply(list(order[middle:]))
        assert one_by_one.contents() == expected, [e.type for e, _ in order]
        assert halves.contents() == expected, [e.type for e, _ in order]


def test_a_replayed_event_after_the_deletion_changes_nothing() -> None:
    events = lifecycle(deleted=True)
    memory = Memory()
    memory.apply(events)
    memory.apply(events[:3])  # redelivered late, under new ids (as if never applied)
    assert all(rows == [] for rows in memory.contents().values())


def test_processing_times_are_whole_microseconds() -> None:
    assert time_us(1.2345678) == 1_234_568
    assert time_us(0.25) == 250_000
    assert TOTALS.value_names[3] == "users_with_conversations"
