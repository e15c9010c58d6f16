"""Settings of the chat service (env prefix CHAT_, plus the shared DATABASE_URL, REDIS_URL,
JWT_*).
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class ChatSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CHAT_", extra="ignore", hide_input_in_errors=True)

    port: int = 8001
    # How long a stored Idempotency-Key answer is replayed before the key may be reused.
    idempotency_ttl_seconds: int = Field(default=24 * 3600, ge=60)
    # POST .../ai-response waits this long for the worker before answering 504; the job goes on
    # and stays readable at GET /chat/jobs/{id}. Shorter than the gateway's upstream timeout
    # (120 s), so the caller gets this 504, which names the job.
    ai_wait_timeout_seconds: float = Field(default=90.0, gt=0)
    # A job not finished by then is failed by the sweeper (deadline_exceeded). Longer than the
    # broker's visibility timeout plus a sweep, so a dead worker's jobs are redelivered first.
    ai_job_deadline_seconds: int = Field(default=600, ge=30)
    # Must match the AI worker's: both name the broker's redelivery delay.
    ai_visibility_timeout_seconds: int = Field(default=300, ge=3)
    # Per-user AI quotas, checked before a job is created (429 with Retry-After past them).
    ai_max_concurrent_jobs: int = Field(default=4, ge=1)
    ai_daily_token_limit: int = Field(default=1_000_000, ge=1)
    # In the agents' price units; 0 disables the cost quota.
    ai_daily_cost_limit: float = Field(default=0.0, ge=0)
    # Sessions (chat_session_history): a message this long or longer after the conversation's
    # latest session ended starts a new one. Fractions of a minute are allowed. The AI worker
    # reads the same variable (CHAT_SESSION_IDLE_MINUTES), so both writers apply one gap.
    session_idle_minutes: float = Field(default=30.0, gt=0)

    @property
    def session_idle(self) -> timedelta:
        return timedelta(minutes=self.session_idle_minutes)
