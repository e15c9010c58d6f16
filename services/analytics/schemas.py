"""Response shapes of the analytics API (documented in OpenAPI), in the seed's fields plus ours.
Every figure is defined in README.md ("Analytics")."""

from __future__ import annotations

from datetime import date

from pydantic import BaseModel, Field

from shared.schemas import Envelope, ErrorEnvelope, error_responses

__all__ = ["Envelope", "ErrorEnvelope", "error_responses"]


class AgentActivity(BaseModel):
    agent_id: int
    name: str | None = Field(description="null when the chat service cannot say (retired agent)")
    message_count: int


class DailyStat(BaseModel):
    date: date
    conversations: int
    messages: int
    agent_messages: int


class DateRange(BaseModel):
    # `from` is a Python keyword: the field is named from_ and shown as "from".
    from_: date = Field(alias="from")
    to: date
    days: int


class PeriodFigures(BaseModel):
    conversations: int
    messages: int
    agent_messages: int
    most_active_agent: AgentActivity | None


class PreviousPeriod(PeriodFigures):
    range: DateRange
    daily_stats: list[DailyStat]


class Dashboard(BaseModel):
    total_conversations: int
    total_messages: int
    total_agent_messages: int
    average_response_time: float | None = Field(
        description="seconds; null when no AI reply completed"
    )
    ai_replies_completed: int
    ai_replies_failed: int
    success_rate: float | None
    most_active_agent: AgentActivity | None
    daily_stats: list[DailyStat]
    time_zone: str
    range: DateRange
    period: PeriodFigures
    previous_period: PreviousPeriod


class AgentPerformance(BaseModel):
    agent_id: int
    name: str | None
    total_conversations: int
    success_rate: float | None = Field(description="percent; null when no job finished")
    messages: int
    ai_replies_completed: int
    ai_replies_failed: int
    average_response_time: float | None


class GlobalAnalytics(BaseModel):
    total_conversations_all_users: int
    total_messages_all_users: int
    average_conversations_per_user: float | None
    users_with_conversations: int
    total_agent_messages_all_users: int
    ai_replies_completed: int
    ai_replies_failed: int
    success_rate: float | None
    average_response_time: float | None
    top_performing_agents: list[AgentPerformance]
