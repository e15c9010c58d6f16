"""The platform's events: their one schema, shared by the writers (chat, ai_worker: through the
outbox), the relay, and the consumers (the analytics aggregator, the webhook dispatcher).

An event is a JSON object:

    {"id": "<uuid>", "type": "message.created", "version": 1,
     "occurred_at": "2026-11-27T10:00:00.123456Z", "user_id": 42, "data": {...},
     "trace": {"request_id": "<X-Request-ID>", "traceparent": "00-<trace id>-<span id>-01"}}

- `id` is unique per event and stable across redeliveries: consumers de-duplicate on it.
- `type` is one of `EVENT_TYPES`; `data` has the fields of that type's model below (more may be
  added in a later version; consumers ignore fields they do not know).
- `user_id` is the owner of what changed (the conversation's user).
- `occurred_at` is the commit-time clock of the change (UTC).
- `trace` (optional, added within version 1) is the request that caused the change: its
  X-Request-ID and the W3C `traceparent` of the hop that wrote the event (a chat request, or the
  AI worker's task on behalf of the request that enqueued it); see shared/tracing.py. It is
  absent on events written outside any request and on events from before it existed, and it is
  only for following a request through the logs: consumers never act on it (webhook bodies,
  being the event as it is, carry it too). A consumer from before it refuses an event with it
  (the envelope forbids unknown fields): upgrade the consumers before the writers.

Events are written to `chat.outbox` in the same transaction as the change, then appended by the
relay to the Redis stream `chat.events` (field `event`: the JSON above), in outbox order, at least
once. A consumer must therefore tolerate duplicates (same `id`) and validate what it reads
(`parse_event`): an entry that does not validate is dead-lettered, never applied.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared import tracing

EVENT_STREAM = "chat.events"
DEAD_LETTER_STREAM = "chat.events.dead"
SCHEMA_VERSION = 1


class _Data(BaseModel):
    # Unknown fields are ignored, so a newer writer does not break an older consumer.
    model_config = ConfigDict(extra="ignore", frozen=True)


class ConversationCreated(_Data):
    conversation_id: int
    agent_id: int | None
    title: str
    created_at: datetime


class ConversationUpdated(_Data):
    conversation_id: int
    # The fields that changed, with their new values (title, is_pinned, is_archived, status).
    changes: dict[str, Any]


class ConversationDeleted(_Data):
    conversation_id: int
    agent_id: int | None


class MessageCreated(_Data):
    conversation_id: int
    message_id: int
    sender: Literal["user", "agent"]
    # For agent messages: the agent that wrote it (the job's, else the conversation's).
    agent_id: int | None
    created_at: datetime


class MessageDeleted(_Data):
    conversation_id: int
    message_id: int
    sender: Literal["user", "agent"]
    # What the message counted for, so consumers can take it off: its agent (as message.created
    # named it) and its creation time.
    agent_id: int | None = None
    created_at: datetime | None = None


class ConversationRead(_Data):
    conversation_id: int
    last_read_message_id: int


class AIReplyFinished(_Data):
    job_id: int
    conversation_id: int
    agent_id: int | None
    model: str
    # completed | incomplete (cancelled while generating: the partial reply was kept)
    status: Literal["completed", "incomplete"]
    message_id: int
    input_tokens: int
    output_tokens: int
    cost: Decimal
    processing_time: float
    time_to_first_token: float | None
    batch_id: int | None = None


class AIReplyFailed(_Data):
    job_id: int
    conversation_id: int
    agent_id: int | None
    model: str
    error_code: str
    batch_id: int | None = None


class AIReplyCancelled(_Data):
    job_id: int
    conversation_id: int
    agent_id: int | None
    batch_id: int | None = None


EVENT_TYPES: dict[str, type[_Data]] = {
    "conversation.created": ConversationCreated,
    "conversation.updated": ConversationUpdated,
    "conversation.deleted": ConversationDeleted,
    "conversation.read": ConversationRead,
    "message.created": MessageCreated,
    "message.deleted": MessageDeleted,
    "ai.reply.completed": AIReplyFinished,
    "ai.reply.failed": AIReplyFailed,
    "ai.reply.cancelled": AIReplyCancelled,
}
EventType = Literal[
    "conversation.created",
    "conversation.updated",
    "conversation.deleted",
    "conversation.read",
    "message.created",
    "message.deleted",
    "ai.reply.completed",
    "ai.reply.failed",
    "ai.reply.cancelled",
]


class EventTrace(BaseModel):
    """The request behind an event (see `trace` above); lenient, as it only names things."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    request_id: str | None = None
    traceparent: str | None = None

    @property
    def trace_id(self) -> str | None:
        """The trace id field of `traceparent`, for log lines about the event. Read, not
        validated (the writer made it with shared/tracing.py): consumers log it for thousands
        of events a second."""
        value = self.traceparent
        if value is None or len(value) < 55 or value[2] != "-" or value[35] != "-":
            return None
        return value[3:35]


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: UUID
    type: EventType
    version: int = Field(ge=1)
    occurred_at: datetime
    user_id: int
    data: dict[str, Any]
    trace: EventTrace | None = None

    def payload(self) -> _Data:
        """`data` validated against its type's model."""
        return EVENT_TYPES[self.type].model_validate(self.data)


class InvalidEvent(ValueError):
    """A stream entry that is not a valid event (dead-lettered with this reason)."""


def parse_event(raw: bytes | str) -> tuple[Event, _Data]:
    """The event and its validated data, or InvalidEvent saying what is wrong."""
    try:
        event = Event.model_validate(orjson.loads(raw))
        if event.version > SCHEMA_VERSION:
            raise InvalidEvent(f"version {event.version} is newer than {SCHEMA_VERSION}")
        return event, event.payload()
    except (orjson.JSONDecodeError, ValidationError) as exc:
        raise InvalidEvent(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc


def event_trace_json() -> str | None:
    """What a writer stores in the outbox's `trace` column: the current request's (or task's)
    trace context as JSON, None outside any."""
    trace = tracing.event_trace()
    return orjson.dumps(trace).decode() if trace is not None else None


def iso_utc(column: str) -> str:
    """SQL for a timestamptz as the text pydantic writes for it (`validate_data`'s JSON mode),
    so an event built in SQL stores exactly what one built in Python would: ISO 8601 in UTC with a
    `Z`, microseconds only when there are any."""
    return f"""(
        to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
        || CASE WHEN date_trunc('second', {column}) = {column} THEN ''
                ELSE to_char({column} AT TIME ZONE 'UTC', '.US') END
        || 'Z'
    )"""


def validate_data(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    """What a writer stores in the outbox: `data` checked against its type (raises on a bug)."""
    return EVENT_TYPES[event_type].model_validate(data).model_dump(mode="json")
