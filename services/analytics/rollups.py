"""What events do to the rollups: the tables' shapes, and a batch of events turned into additive
deltas (pure Python, no SQL; the aggregator writes the result, see aggregator.py).

Each figure is a sum of per-conversation contributions, kept per conversation as well
(`conversation_buckets`, `conversation_agents`, the conversation's own state), so a deletion
subtracts exactly what the conversation added. Applying is made order-independent, because
several aggregators share the stream and events of one conversation may be applied out of order:

- a deleted conversation stays as a tombstone: events about it applied later change nothing;
- the conversation's agent is the one set by the latest event (by `occurred_at`), and a
  conversation counts once its `conversation.created` has been applied, whatever came first;
- everything else is a count, and counts commute.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.events import (
    AIReplyFailed,
    AIReplyFinished,
    ConversationCreated,
    ConversationDeleted,
    ConversationUpdated,
    Event,
    MessageCreated,
    MessageDeleted,
)

BUCKET = timedelta(minutes=15)
NO_AGENT = 0  # the agent key of user messages and of agent messages without an agent


def bucket_of(at: datetime) -> datetime:
    """The 15-minute UTC interval `at` falls in (its start): every UTC offset in use is a
    multiple of 15 minutes, so these buckets add up to whole local days in any time zone."""
    at = at.astimezone(UTC)
    return at.replace(minute=at.minute - at.minute % 15, second=0, microsecond=0)


def time_us(seconds: float) -> int:
    """A processing time in whole microseconds (rounded half to even, as Postgres' round())."""
    return round(seconds * 1_000_000)


@dataclass(frozen=True)
class Table:
    """An additive rollup table: its key columns and its counter columns, with SQL types."""

    name: str
    keys: tuple[tuple[str, str], ...]
    values: tuple[tuple[str, str], ...]

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.keys)

    @property
    def value_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.values)


_REPLIES = (("replies_completed", "int"), ("replies_failed", "int"), ("reply_time_us", "bigint"))
CONVERSATION_BUCKETS = Table(
    "conversation_buckets",
    (("conversation_id", "int"), ("bucket", "timestamptz"), ("agent_id", "int")),
    (("messages", "int"), ("agent_messages", "int")),
)
CONVERSATION_AGENTS = Table(
    "conversation_agents", (("conversation_id", "int"), ("agent_id", "int")), _REPLIES
)
USER_ACTIVITY = Table(
    "user_activity",
    (("user_id", "int"), ("bucket", "timestamptz")),
    (("conversations", "int"), ("messages", "int"), ("agent_messages", "int")),
)
USER_AGENT_ACTIVITY = Table(
    "user_agent_activity",
    (("user_id", "int"), ("bucket", "timestamptz"), ("agent_id", "int")),
    (("messages", "int"),),
)
USER_TOTALS = Table(
    "user_totals",
    (("user_id", "int"),),
    (("conversations", "int"), ("messages", "int"), ("agent_messages", "int"), *_REPLIES),
)
USER_AGENT_TOTALS = Table(
    "user_agent_totals", (("user_id", "int"), ("agent_id", "int")), (("messages", "int"),)
)
AGENT_TOTALS = Table(
    "agent_totals",
    (("agent_id", "int"),),
    (("conversations", "int"), ("messages", "int"), *_REPLIES),
)
TOTALS = Table(
    "totals",
    (("id", "smallint"),),
    (
        ("conversations", "bigint"),
        ("messages", "bigint"),
        ("agent_messages", "bigint"),
        ("users_with_conversations", "bigint"),
        ("replies_completed", "bigint"),
        ("replies_failed", "bigint"),
        ("reply_time_us", "bigint"),
    ),
)
# In the order every writer locks them (a fixed order: concurrent aggregators cannot deadlock).
TABLES = (
    CONVERSATION_BUCKETS,
    CONVERSATION_AGENTS,
    USER_ACTIVITY,
    USER_AGENT_ACTIVITY,
    USER_TOTALS,
    USER_AGENT_TOTALS,
    AGENT_TOTALS,
    TOTALS,
)
TOTALS_KEY = (1,)

Key = tuple[Any, ...]


class Rollups:
    """Deltas (or, from zero, whole contents) of the rollup tables, keyed like the tables."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[Key, list[int]]] = {table.name: {} for table in TABLES}

    def add(self, table: Table, key: Key, values: Sequence[int]) -> None:
        row = self.rows[table.name].get(key)
        if row is None:
            self.rows[table.name][key] = list(values)
        else:
            for index, value in enumerate(values):
                row[index] += value

    def changes(self, table: Table) -> list[tuple[Key, list[int]]]:
        """The table's non-zero deltas, sorted by key (the order rows are locked in)."""
        return sorted((k, v) for k, v in self.rows[table.name].items() if any(v))

    def add_conversation(self, state: ConversationState, sign: int) -> None:
        """A conversation's own contribution: one conversation, on its creation's bucket."""
        if not state.counted or state.created_at is None:
            return
        self.add(USER_ACTIVITY, (state.user_id, bucket_of(state.created_at)), (sign, 0, 0))
        self.add(USER_TOTALS, (state.user_id,), (sign, 0, 0, 0, 0, 0))
        if state.agent_id is not None:
            self.add(AGENT_TOTALS, (state.agent_id,), (sign, 0, 0, 0, 0))
        self.add(TOTALS, TOTALS_KEY, (sign, 0, 0, 0, 0, 0, 0))

    def add_messages(
        self,
        *,
        conversation_id: int,
        user_id: int,
        bucket: datetime,
        agent_id: int,
        messages: int,
        agent_messages: int,
        per_conversation: bool = True,
    ) -> None:
        if per_conversation:
            self.add(
                CONVERSATION_BUCKETS,
                (conversation_id, bucket, agent_id),
                (messages, agent_messages),
            )
        self.add(USER_ACTIVITY, (user_id, bucket), (0, messages, agent_messages))
        self.add(USER_TOTALS, (user_id,), (0, messages, agent_messages, 0, 0, 0))
        if agent_id != NO_AGENT and agent_messages:
            self.add(USER_AGENT_ACTIVITY, (user_id, bucket, agent_id), (agent_messages,))
            self.add(USER_AGENT_TOTALS, (user_id, agent_id), (agent_messages,))
            self.add(AGENT_TOTALS, (agent_id,), (0, agent_messages, 0, 0, 0))
        self.add(TOTALS, TOTALS_KEY, (0, messages, agent_messages, 0, 0, 0, 0))

    def add_replies(
        self,
        *,
        conversation_id: int,
        user_id: int,
        agent_id: int,
        completed: int,
        failed: int,
        time_us: int,
        per_conversation: bool = True,
    ) -> None:
        if per_conversation:
            self.add(CONVERSATION_AGENTS, (conversation_id, agent_id), (completed, failed, time_us))
        self.add(USER_TOTALS, (user_id,), (0, 0, 0, completed, failed, time_us))
        if agent_id != NO_AGENT:
            self.add(AGENT_TOTALS, (agent_id,), (0, 0, completed, failed, time_us))
        self.add(TOTALS, TOTALS_KEY, (0, 0, 0, 0, completed, failed, time_us))


@dataclass
class ConversationState:
    """A conversation's row in `analytics.conversations`."""

    conversation_id: int
    user_id: int
    agent_id: int | None = None
    agent_set_at: datetime | None = None
    created_at: datetime | None = None
    deleted_at: datetime | None = None

    @property
    def counted(self) -> bool:
        """Whether it counts as a conversation now: created, not deleted."""
        return self.created_at is not None and self.deleted_at is None

    def set_agent(self, agent_id: int | None, at: datetime) -> None:
        if self.agent_set_at is None or at > self.agent_set_at:
            self.agent_id, self.agent_set_at = agent_id, at


@dataclass
class _Draft:
    """What this batch adds to one conversation, before we know whether it survives the batch."""

    messages: dict[tuple[datetime, int], list[int]] = field(default_factory=dict)
    replies: dict[int, list[int]] = field(default_factory=dict)

    def message(self, bucket: datetime, agent_id: int, agent_message: bool, sign: int = 1) -> None:
        row = self.messages.setdefault((bucket, agent_id), [0, 0])
        row[0] += sign
        row[1] += sign * int(agent_message)

    def reply(self, agent_id: int, completed: int, failed: int, time_us: int) -> None:
        row = self.replies.setdefault(agent_id, [0, 0, 0])
        row[0] += completed
        row[1] += failed
        row[2] += time_us


@dataclass
class BatchPlan:
    """A batch's effect: the deltas, the conversation rows to save, and the conversations
    deleted by it (whose stored contributions the writer subtracts)."""

    rollups: Rollups
    states: list[ConversationState]
    deleted: list[ConversationState]
    ignored: int  # events about conversations deleted before this batch


Handler = Callable[[Event, Any, ConversationState, _Draft], None]


def _created(event: Event, data: ConversationCreated, state: ConversationState, _: _Draft) -> None:
    if state.created_at is None:
        state.created_at = data.created_at
    state.set_agent(data.agent_id, event.occurred_at)


def _updated(event: Event, data: ConversationUpdated, state: ConversationState, _: _Draft) -> None:
    if "agent_id" in data.changes:
        value = data.changes["agent_id"]
        state.set_agent(int(value) if value is not None else None, event.occurred_at)


def _deleted(event: Event, _: ConversationDeleted, state: ConversationState, __: _Draft) -> None:
    state.deleted_at = event.occurred_at


def _message(_: Event, data: MessageCreated, __: ConversationState, draft: _Draft) -> None:
    is_agent = data.sender == "agent"
    agent_id = (data.agent_id or NO_AGENT) if is_agent else NO_AGENT
    draft.message(bucket_of(data.created_at), agent_id, is_agent)


def _message_deleted(_: Event, data: MessageDeleted, __: ConversationState, draft: _Draft) -> None:
    if data.created_at is None:
        return  # written before deletions carried what to subtract: nothing to take off
    is_agent = data.sender == "agent"
    agent_id = (data.agent_id or NO_AGENT) if is_agent else NO_AGENT
    draft.message(bucket_of(data.created_at), agent_id, is_agent, sign=-1)


def _reply_finished(_: Event, data: AIReplyFinished, __: ConversationState, draft: _Draft) -> None:
    # An `incomplete` reply (cancelled while generating) is neither a success nor a failure.
    if data.status == "completed":
        draft.reply(data.agent_id or NO_AGENT, 1, 0, time_us(data.processing_time))


def _reply_failed(_: Event, data: AIReplyFailed, __: ConversationState, draft: _Draft) -> None:
    draft.reply(data.agent_id or NO_AGENT, 0, 1, 0)


# The event types that change a rollup; the others (ai.reply.cancelled, conversation.read) are
# recorded as processed and change nothing.
HANDLERS: dict[str, Handler] = {
    "conversation.created": _created,
    "conversation.updated": _updated,
    "conversation.deleted": _deleted,
    "message.created": _message,
    "message.deleted": _message_deleted,
    "ai.reply.completed": _reply_finished,
    "ai.reply.failed": _reply_failed,
}


def conversation_owners(events: Iterable[tuple[Event, Any]]) -> dict[int, int]:
    """conversation id → owner of the conversations a batch is about (rows to lock first)."""
    owners: dict[int, int] = {}
    for event, data in events:
        if event.type in HANDLERS:
            owners.setdefault(data.conversation_id, event.user_id)
    return owners


def plan_batch(
    events: Sequence[tuple[Event, Any]], stored: dict[int, ConversationState]
) -> BatchPlan:
    """The deltas of `events` (new ones, in stream order) given the stored (locked) states of
    the conversations they are about."""
    states = {cid: replace(state) for cid, state in stored.items()}
    drafts: dict[int, _Draft] = {}
    ignored = 0
    for event, data in events:
        handler = HANDLERS.get(event.type)
        if handler is None:
            continue
        cid = data.conversation_id
        if stored[cid].deleted_at is not None:
            ignored += 1  # deleted earlier: a late or replayed event changes nothing
            continue
        handler(event, data, states[cid], drafts.setdefault(cid, _Draft()))

    plan = BatchPlan(Rollups(), [], [], ignored)
    for cid, state in states.items():
        before = stored[cid]
        if before.deleted_at is not None:
            continue
        if state != before:
            plan.states.append(state)
        plan.rollups.add_conversation(before, -1)
        if state.deleted_at is not None:
            # Deleted by this batch: what it adds is dropped, what it had is subtracted.
            plan.deleted.append(state)
            continue
        plan.rollups.add_conversation(state, +1)
        draft = drafts.get(cid)
        if draft is None:
            continue
        for (bucket, agent_id), (messages, agent_messages) in draft.messages.items():
            plan.rollups.add_messages(
                conversation_id=cid,
                user_id=state.user_id,
                bucket=bucket,
                agent_id=agent_id,
                messages=messages,
                agent_messages=agent_messages,
            )
        for agent_id, (completed, failed, spent_us) in draft.replies.items():
            plan.rollups.add_replies(
                conversation_id=cid,
                user_id=state.user_id,
                agent_id=agent_id,
                completed=completed,
                failed=failed,
                time_us=spent_us,
            )
    return plan


def subtract_stored(
    rollups: Rollups,
    owners: dict[int, int],
    buckets: Iterable[tuple[int, datetime, int, int, int]],
    agents: Iterable[tuple[int, int, int, int, int]],
) -> None:
    """Takes deleted conversations' stored rows (`conversation_buckets`, `conversation_agents`,
    already removed by the writer) off the user, agent and global rollups."""
    for cid, bucket, agent_id, messages, agent_messages in buckets:
        rollups.add_messages(
            conversation_id=cid,
            user_id=owners[cid],
            bucket=bucket,
            agent_id=agent_id,
            messages=-messages,
            agent_messages=-agent_messages,
            per_conversation=False,
        )
    for cid, agent_id, completed, failed, spent_us in agents:
        rollups.add_replies(
            conversation_id=cid,
            user_id=owners[cid],
            agent_id=agent_id,
            completed=-completed,
            failed=-failed,
            time_us=-spent_us,
            per_conversation=False,
        )
