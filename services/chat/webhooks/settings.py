"""Settings of the webhook delivery process (env prefix CHAT_WEBHOOKS_, plus the shared
DATABASE_URL, REDIS_URL, REDIS_PREFIX)."""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class WebhookSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="CHAT_WEBHOOKS_", extra="ignore", hide_input_in_errors=True
    )

    metrics_port: int = Field(default=9104, ge=0)
    # Sender threads: HTTP attempts in flight at once in this process.
    concurrency: int = Field(default=8, ge=1, le=256)
    # Attempts of one delivery before it is dead (the first one included).
    max_attempts: int = Field(default=8, ge=1, le=100)
    # After attempt n fails the next waits base * multiplier^(n-1), capped, with jitter (half
    # to all of it). The defaults give 5 s, 20 s, 80 s, 5 min, 21 min, 1 h, 1 h: a receiver down
    # for about two and a half hours still gets everything.
    backoff_base_seconds: float = Field(default=5.0, gt=0)
    backoff_multiplier: float = Field(default=4.0, ge=1)
    backoff_max_seconds: float = Field(default=3600.0, gt=0)
    # One HTTP attempt (connect, send, each read) may take this long.
    timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    # How often an idle sender looks for due deliveries (new ones of this process wake it
    # at once; other processes' and retries are found by this poll).
    poll_seconds: float = Field(default=0.5, gt=0)
    # The stream consumer (shared/stream_consumer.py).
    batch_size: int = Field(default=500, ge=1, le=10_000)
    claim_idle_ms: int = Field(default=30_000, ge=100)
    max_deliveries: int = Field(default=5, ge=1)
    # Delivered and dead deliveries (with their attempts) are deleted after this many days.
    # Longer than the relay's retention, so events re-appended after a Redis data loss are
    # still recognised as delivered.
    retention_days: int = Field(default=30, ge=1)

    @model_validator(mode="after")
    def _cap_not_below_base(self) -> WebhookSettings:
        if self.backoff_max_seconds < self.backoff_base_seconds:
            raise ValueError("CHAT_WEBHOOKS_BACKOFF_MAX_SECONDS is below the base")
        return self

    @property
    def lease_seconds(self) -> float:
        """How long a claimed delivery is held by its sender: past this, it is due again (its
        sender died). Longer than any attempt can take."""
        return self.timeout_seconds * 4 + 30
