"""Request bodies (validated) and response shapes (documented) of the chat API, in the
seed's fields.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from shared.schemas import Envelope, ErrorEnvelope, error_responses

__all__ = ["Envelope", "ErrorEnvelope", "error_responses"]

Title = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]
Slug = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,49}$")]
ConversationStatus = Literal["active", "closed"]
Sender = Literal["user", "agent"]


def _no_nul(value: str) -> str:
    # Postgres text cannot hold NUL; refusing it here keeps it a 422 instead of a driver error.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


class StrictBody(BaseModel):
    """Unknown fields are refused (422): a typo or a forbidden field never passes silently."""

    model_config = ConfigDict(extra="forbid")


# --- conversations -------------------------------------------------------------------------------


class ConversationCreate(StrictBody):
    title: Title
    agent_id: int | None = Field(default=None, gt=0, lt=2**31)
    conversation_type: Slug = "chat"

    _nul = field_validator("title")(_no_nul)


class ConversationUpdate(StrictBody):
    """The fields a user may change; counters, owner and timestamps are the server's."""

    title: Title | None = None
    is_pinned: bool | None = None
    is_archived: bool | None = None
    status: ConversationStatus | None = None
    agent_id: int | None = Field(default=None, gt=0, lt=2**31)

    @model_validator(mode="after")
    def _something_to_change(self) -> ConversationUpdate:
        if not self.model_fields_set:
            raise ValueError("give at least one of title, is_pinned, is_archived, status, agent_id")
        for name in ("title", "is_pinned", "is_archived", "status"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self


class ConversationSummary(BaseModel):
    id: int
    title: str
    user_id: int
    agent_id: int | None
    conversation_type: str
    status: str
    is_archived: bool
    is_pinned: bool
    total_messages: int
    unread_count: int = Field(
        description="Agent messages after the owner's read pointer (all of them before the "
        "first POST .../read)"
    )
    last_message_at: datetime | None
    created_at: datetime
    updated_at: datetime


class ConversationList(BaseModel):
    conversations: list[ConversationSummary]
    total: int
    limit: int
    offset: int
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end"
    )
    has_more: bool


class ConversationRef(BaseModel):
    conversation_id: int


# --- read state and sessions ----------------------------------------------------------------------


class MarkRead(StrictBody):
    message_id: int | None = Field(
        default=None,
        gt=0,
        lt=2**31,
        description="Read up to and including this message of the conversation; default: its "
        "latest message",
    )


class ReadState(BaseModel):
    conversation_id: int
    last_read_message_id: int | None = Field(
        description="The read pointer: the last message read (null while nothing was marked)"
    )
    unread_count: int


class SessionPublic(BaseModel):
    id: int
    conversation_id: int
    session_start: datetime = Field(description="Time of the session's first message")
    session_end: datetime | None = Field(description="Time of its latest message")
    messages_count: int
    duration_minutes: int | None = Field(
        description="Whole minutes from start to end, rounded down"
    )
    created_at: datetime


class SessionList(BaseModel):
    sessions: list[SessionPublic]
    total: int
    limit: int
    offset: int


# --- messages ------------------------------------------------------------------------------------


MAX_MESSAGE_CHARS = 32_000


class MessageCreate(StrictBody):
    content: Annotated[str, StringConstraints(min_length=1, max_length=MAX_MESSAGE_CHARS)]
    sender_type: Sender = Field(
        default="user", description="`agent` is for administrators; users post as `user`"
    )
    content_type: Slug = "text"
    message_type: Slug = "text"

    _nul = field_validator("content")(_no_nul)

    @field_validator("content")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value


class AttachmentPublic(BaseModel):
    id: int
    file_name: str = Field(description="The uploaded name, cleaned of paths and control characters")
    file_type: str = Field(description="The content type its bytes were verified to be")
    file_size: int = Field(description="Bytes")
    created_at: datetime
    download_url: str = Field(description="GET it with the same token for the file's bytes")


class AttachmentList(BaseModel):
    attachments: list[AttachmentPublic]
    total: int


class MessagePublic(BaseModel):
    id: int
    conversation_id: int
    content: str
    content_type: str
    sender: str
    message_type: str
    status: str
    tokens_used: int | None
    processing_time: float | None
    created_at: datetime
    updated_at: datetime
    attachments: list[AttachmentPublic] = Field(default_factory=list)


class MessageList(BaseModel):
    messages: list[MessagePublic]
    total: int
    limit: int
    offset: int
    next_cursor: str | None
    has_more: bool


class MessageCreated(BaseModel):
    message_id: int
    conversation_id: int
    content: str
    sender: str
    content_type: str
    message_type: str
    status: str
    created_at: datetime
    total_messages: int = Field(description="The conversation's message count after this one")


class MessageRef(BaseModel):
    message_id: int
    conversation_id: int


class MessageWithAttachments(MessageCreated):
    attachments: list[AttachmentPublic]


class ImportResult(BaseModel):
    conversations: int
    messages: int
    attachments_restored: int = Field(description="Files restored from a ZIP archive")
    attachments_skipped: int = Field(
        description="Attachments listed without their file (a JSON export carries none)"
    )
    conversation_ids: list[int] = Field(description="The new conversations, in the file's order")


# --- search --------------------------------------------------------------------------------------


class SearchResult(BaseModel):
    message_id: int
    conversation_id: int
    content: str
    sender: str
    created_at: datetime
    snippet: str = Field(description="HTML-escaped excerpt with matches wrapped in <mark>")
    rank: float


class SearchResults(BaseModel):
    results: list[SearchResult]
    query: str
    total: int
    limit: int
    offset: int


# --- agents --------------------------------------------------------------------------------------

Price = Annotated[Decimal, Field(ge=0, le=1000, max_digits=12, decimal_places=6)]


class AgentCreate(StrictBody):
    name: Title
    description: Annotated[str, StringConstraints(max_length=2000)] = ""
    model: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]
    system_prompt: Annotated[str, StringConstraints(max_length=20_000)] = ""
    temperature: float = Field(default=0.7, ge=0, le=2)
    max_tokens: int = Field(default=512, gt=0, le=200_000)
    input_price_per_1k: Price = Decimal("0")
    output_price_per_1k: Price = Decimal("0")
    is_active: bool = True


class AgentUpdate(StrictBody):
    name: Title | None = None
    description: Annotated[str, StringConstraints(max_length=2000)] | None = None
    model: (
        Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]
        | None
    ) = None
    system_prompt: Annotated[str, StringConstraints(max_length=20_000)] | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, gt=0, le=200_000)
    input_price_per_1k: Price | None = None
    output_price_per_1k: Price | None = None
    is_active: bool | None = None

    @model_validator(mode="after")
    def _something_to_change(self) -> AgentUpdate:
        if not self.model_fields_set:
            raise ValueError("give at least one field to change")
        for name in self.model_fields_set:
            if getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self


class AgentPublic(BaseModel):
    id: int
    name: str
    description: str
    model: str
    system_prompt: str
    temperature: float
    max_tokens: int
    input_price_per_1k: float
    output_price_per_1k: float
    is_active: bool
    is_default: bool
    created_at: datetime
    updated_at: datetime


class AgentList(BaseModel):
    agents: list[AgentPublic]
    total: int
    limit: int
    offset: int


class AgentRef(BaseModel):
    agent_id: int


# --- AI replies ----------------------------------------------------------------------------------

JobStatus = Literal["queued", "running", "completed", "failed", "cancelled", "incomplete"]


class AIResponseRequest(StrictBody):
    message: Annotated[str, StringConstraints(min_length=1, max_length=MAX_MESSAGE_CHARS)]
    agent_id: int | None = Field(
        default=None, gt=0, lt=2**31, description="Defaults to the conversation's agent"
    )
    include_context: bool = Field(
        default=True, description="Send the agent's system prompt and recent history"
    )

    _nul = field_validator("message")(_no_nul)

    @field_validator("message")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value


class AIReply(BaseModel):
    message_id: int
    ai_response: str
    tokens_used: int
    processing_time: float
    cost: float
    created_at: datetime
    job_id: int
    model: str
    input_tokens: int
    output_tokens: int


class JobPublic(BaseModel):
    id: int
    conversation_id: int
    agent_id: int | None
    status: JobStatus
    model: str
    prompt_message_id: int | None
    reply_message_id: int | None
    regenerates_message_id: int | None
    attempts: int
    error_code: str | None
    error: str | None
    input_tokens: int | None
    output_tokens: int | None
    cost: float | None
    processing_time: float | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    batch_id: int | None = Field(description="The batch regeneration that started it, if any")


# --- batch regeneration (administrators) ---------------------------------------------------------

BatchStatus = Literal["running", "completed", "cancelled", "budget_exhausted"]
BatchKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$")]
MAX_BATCH_CONVERSATIONS = 10_000


class RegenerationSelection(StrictBody):
    """Which agent replies: all of the given filters apply; at least one is required, so a
    batch never re-generates everything by accident. Superseded replies are never selected."""

    agent_id: int | None = Field(default=None, gt=0, lt=2**31, description="Replies by this agent")
    conversation_ids: list[Annotated[int, Field(gt=0, lt=2**31)]] | None = Field(
        default=None, min_length=1, max_length=MAX_BATCH_CONVERSATIONS
    )
    created_after: datetime | None = Field(
        default=None, description="Replies created at or after this time (ISO 8601; UTC if naive)"
    )
    created_before: datetime | None = Field(
        default=None, description="Replies created before this time"
    )

    @model_validator(mode="after")
    def _selects_something(self) -> RegenerationSelection:
        if (
            self.agent_id is None
            and self.conversation_ids is None
            and self.created_after is None
            and self.created_before is None
        ):
            raise ValueError(
                "give at least one of agent_id, conversation_ids, created_after, created_before"
            )
        if (
            self.created_after is not None
            and self.created_before is not None
            and _utc(self.created_after) >= _utc(self.created_before)
        ):
            raise ValueError("created_after must be earlier than created_before")
        return self

    def canonical(self) -> dict[str, object]:
        """The selection as stored and hashed: sorted ids, UTC times, no empty filters."""
        out: dict[str, object] = {}
        if self.agent_id is not None:
            out["agent_id"] = self.agent_id
        if self.conversation_ids is not None:
            out["conversation_ids"] = sorted(set(self.conversation_ids))
        if self.created_after is not None:
            out["created_after"] = _utc(self.created_after).isoformat()
        if self.created_before is not None:
            out["created_before"] = _utc(self.created_before).isoformat()
        return out


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class RegenerationCreate(RegenerationSelection):
    concurrency: int = Field(
        default=8,
        ge=1,
        le=256,
        description="At most this many of its jobs call the model at once (up to as many more, "
        "at most 8, wait ready with their prompt built)",
    )
    max_tokens: int | None = Field(
        default=None, gt=0, lt=2**62, description="Token budget (input + output) of the batch"
    )
    max_cost: Decimal | None = Field(
        default=None, gt=0, max_digits=14, decimal_places=6, description="Cost budget"
    )
    key: BatchKey | None = Field(
        default=None,
        description="The batch's identity: the same key answers the existing batch instead of "
        "starting another. Defaults to a hash of the selection.",
    )
    dry_run: bool = Field(
        default=False, description="Only count the replies and estimate tokens and cost"
    )


class RegenerationResume(StrictBody):
    """New limits for a resumed batch (unchanged when not given)."""

    concurrency: int | None = Field(
        default=None, ge=1, le=256, description="Model calls at once (see RegenerationCreate)"
    )
    max_tokens: int | None = Field(default=None, gt=0, lt=2**62)
    max_cost: Decimal | None = Field(default=None, gt=0, max_digits=14, decimal_places=6)
    retry_failed: bool = Field(
        default=False, description="Also retry the replies whose job failed or was cancelled"
    )


class RegenerationEstimate(BaseModel):
    dry_run: bool
    key: str
    selection: dict[str, object]
    replies: int
    conversations: int
    users: int
    estimated_tokens: int
    estimated_cost: float
    within_budget: bool = Field(description="Whether the estimate fits the budget given")


class BatchProgress(BaseModel):
    total: int
    done: int = Field(description="Replies regenerated (completed or incomplete)")
    failed: int
    cancelled: int
    in_flight: int
    pending: int
    remaining: int = Field(description="pending + in_flight")
    percent: float
    tokens_used: int
    cost_used: float
    elapsed_seconds: float
    replies_per_second: float
    eta_seconds: float | None = Field(description="At the rate so far; null until one finished")


class BatchPublic(BaseModel):
    id: int
    key: str
    status: BatchStatus
    selection: dict[str, object]
    concurrency: int
    max_tokens: int | None
    max_cost: float | None
    estimated_tokens: int
    estimated_cost: float
    created_by: int
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    progress: BatchProgress


class BatchList(BaseModel):
    batches: list[BatchPublic]
    total: int
    limit: int
    offset: int
