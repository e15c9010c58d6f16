"""Settings of the AI worker (env prefix AI_WORKER_, plus DATABASE_URL, REDIS_URL, LLM_*)."""

from __future__ import annotations

from datetime import timedelta

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class WorkerSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="AI_WORKER_", extra="ignore", hide_input_in_errors=True
    )

    # LLM calls wait on the network: one process keeps this many in flight on threads.
    concurrency: int = Field(default=32, ge=1, le=512)
    metrics_port: int = Field(default=9101, ge=0)
    llm_base_url: str = Field(
        default="http://127.0.0.1:8080/v1",
        validation_alias=AliasChoices("LLM_BASE_URL", "AI_WORKER_LLM_BASE_URL"),
    )
    llm_api_key: SecretStr = Field(
        default=SecretStr("not-needed-for-local-servers"),
        validation_alias=AliasChoices("LLM_API_KEY", "AI_WORKER_LLM_API_KEY"),
    )
    # The model asked for when an agent's model is "default" (the embedded server's, say).
    llm_default_model: str = Field(
        default="default", validation_alias=AliasChoices("LLM_MODEL", "AI_WORKER_LLM_MODEL")
    )
    llm_timeout_seconds: float = Field(default=60.0, gt=0)
    # Our retries (the SDK's own are off): 429, 5xx, timeouts and dropped connections.
    llm_max_attempts: int = Field(default=4, ge=1, le=10)
    llm_backoff_base_seconds: float = Field(default=0.5, ge=0)
    llm_backoff_max_seconds: float = Field(default=8.0, ge=0)
    # How much conversation history a prompt may carry, in (estimated) tokens.
    context_budget_tokens: int = Field(default=3000, ge=256)
    # A task delivered this many times without finishing (worker killed mid-job each time)
    # is failed instead of tried again.
    max_deliveries: int = Field(default=3, ge=1)
    task_time_limit_seconds: int = Field(default=240, ge=2)
    # The broker redelivers an unacknowledged task after this; it must exceed the time limit,
    # or a slow task would run twice at once.
    visibility_timeout_seconds: int = Field(default=300, ge=3)

    # The sweeper: how often it runs, and how long a job may sit queued and unstarted before it
    # is sent again (its first publish may have been lost with a crashed chat process).
    sweep_interval_seconds: float = Field(default=30.0, gt=0)
    requeue_after_seconds: int = Field(default=120, ge=1)

    # The session idle gap of chat_session_history: the chat service's own variable, read here
    # too, so agent replies and user messages are grouped into sessions by the same gap.
    session_idle_minutes: float = Field(
        default=30.0, gt=0, validation_alias=AliasChoices("CHAT_SESSION_IDLE_MINUTES")
    )

    @property
    def session_idle(self) -> timedelta:
        return timedelta(minutes=self.session_idle_minutes)

    @model_validator(mode="after")
    def _visibility_exceeds_time_limit(self) -> WorkerSettings:
        if self.visibility_timeout_seconds <= self.task_time_limit_seconds:
            raise ValueError(
                "AI_WORKER_VISIBILITY_TIMEOUT_SECONDS must exceed AI_WORKER_TASK_TIME_LIMIT_SECONDS"
            )
        return self
