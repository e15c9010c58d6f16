"""Synthetic chat events for the analytics benchmark: what a busy platform's outbox would hold.

Each conversation: `conversation.created`, then messages alternating user / agent, each agent
message with its `ai.reply.completed` (1 in 20 replies fails instead: `ai.reply.failed`, no
message); 1 in 25 conversations changes its agent, 1 in 20 is deleted at the end. Conversations
start at random times over `days` days and their events are interleaved in time order, as many
users' activity is in a real stream. Deterministic for a given seed.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson


@dataclass(frozen=True)
class Plan:
    users: int
    conversations: int
    messages: int  # per conversation
    agents: tuple[int, ...]
    days: int = 30
    first_conversation_id: int = 1
    first_user_id: int = 1
    seed: int = 7


def _event(
    event_type: str, at: datetime, user_id: int, data: dict[str, Any]
) -> tuple[datetime, dict[str, Any]]:
    return at, {
        "id": str(uuid.UUID(int=random.getrandbits(128), version=4)),
        "type": event_type,
        "version": 1,
        "occurred_at": at,
        "user_id": user_id,
        "data": data,
    }


def _conversation(
    plan: Plan, rng: random.Random, cid: int, now: datetime
) -> list[tuple[datetime, dict[str, Any]]]:
    user_id = plan.first_user_id + rng.randrange(plan.users)
    agent = rng.choice(plan.agents)
    at = now - timedelta(seconds=rng.uniform(0, plan.days * 86400))
    events = [
        _event(
            "conversation.created",
            at,
            user_id,
            {"conversation_id": cid, "agent_id": agent, "title": "bench", "created_at": at},
        )
    ]
    message_id = cid * 1000
    job_id = cid * 1000
    for index in range(plan.messages):
        at += timedelta(seconds=rng.uniform(5, 90))
        message_id += 1
        if index % 2 == 0:
            data = {"conversation_id": cid, "message_id": message_id, "sender": "user",
                    "agent_id": None, "created_at": at}  # fmt: skip
            events.append(_event("message.created", at, user_id, data))
            continue
        job_id += 1
        common = {"job_id": job_id, "conversation_id": cid, "agent_id": agent, "model": "m"}
        if rng.random() < 0.05:
            events.append(_event("ai.reply.failed", at, user_id, {**common, "error_code": "x"}))
            continue
        data = {"conversation_id": cid, "message_id": message_id, "sender": "agent",
                "agent_id": agent, "created_at": at}  # fmt: skip
        events.append(_event("message.created", at, user_id, data))
        events.append(
            _event(
                "ai.reply.completed",
                at,
                user_id,
                {
                    **common,
                    "status": "completed",
                    "message_id": message_id,
                    "input_tokens": 40,
                    "output_tokens": 60,
                    "cost": "0.0001",
                    "processing_time": rng.uniform(0.2, 3.0),
                    "time_to_first_token": 0.1,
                },
            )  # fmt: skip
        )
    if rng.random() < 0.04:
        at += timedelta(seconds=5)
        agent = rng.choice(plan.agents)
        data = {"conversation_id": cid, "changes": {"agent_id": agent}}
        events.append(_event("conversation.updated", at, user_id, data))
    if rng.random() < 0.05:
        at += timedelta(seconds=5)
        data = {"conversation_id": cid, "agent_id": agent}
        events.append(_event("conversation.deleted", at, user_id, data))
    return events


def generate(plan: Plan, now: datetime | None = None) -> list[bytes]:
    """The plan's events as the relay appends them (JSON bytes), in time order."""
    rng = random.Random(plan.seed)
    random.seed(plan.seed)  # event ids
    now = now or datetime.now(UTC)
    events: list[tuple[datetime, dict[str, Any]]] = []
    for offset in range(plan.conversations):
        events.extend(_conversation(plan, rng, plan.first_conversation_id + offset, now))
    events.sort(key=lambda pair: pair[0])
    return [orjson.dumps(event, option=orjson.OPT_UTC_Z) for _, event in events]


def conversation_stream(
    plan: Plan, now: datetime | None = None
) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """(type, user id, data) of the plan's events one conversation after another, for writing
    them to the outbox at a steady rate (each conversation's events in order)."""
    rng = random.Random(plan.seed)
    random.seed(plan.seed)
    now = now or datetime.now(UTC)
    for offset in range(plan.conversations):
        for _, event in _conversation(plan, rng, plan.first_conversation_id + offset, now):
            yield event["type"], event["user_id"], event["data"]
