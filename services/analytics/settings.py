"""Settings of the analytics service (env prefix ANALYTICS_) and of its event aggregator
(ANALYTICS_AGGREGATOR_), plus the shared DATABASE_URL, REDIS_URL, REDIS_PREFIX and JWT_*."""

from __future__ import annotations

import os
import socket

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class AnalyticsSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="ANALYTICS_", extra="ignore", hide_input_in_errors=True
    )

    port: int = 8002
    db_pool_max_size: int = 10
    # Where agent names come from (the chat service's GET /chat/agents/{id}, with the caller's
    # token): events carry agent ids only, and this service reads no other schema.
    chat_url: str = "http://127.0.0.1:8001"
    # How long a looked-up agent name is reused before asking the chat service again.
    agent_name_ttl_seconds: float = Field(default=60.0, ge=0)


def _default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class AggregatorSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="ANALYTICS_AGGREGATOR_", extra="ignore", hide_input_in_errors=True
    )

    # Its Prometheus metrics (and its liveness probe) are served on this port.
    metrics_port: int = Field(default=9103, ge=0)
    # Aggregators of one group share the stream's entries; each consumer name must be unique.
    group: str = "analytics"
    consumer: str = Field(default_factory=_default_consumer)
    batch_size: int = Field(default=1000, ge=1, le=10_000)
    block_ms: int = Field(default=1000, ge=1)
    # Entries pending this long (their aggregator died, or applying them failed) are taken over.
    claim_idle_ms: int = Field(default=30_000, ge=100)
    # An entry delivered this many times without being applied goes to the dead-letter stream.
    max_deliveries: int = Field(default=5, ge=1)
    # Applied event ids are remembered this long: longer than the relay replays events after
    # Redis lost its data (CHAT_RELAY_RETENTION_SECONDS, 3600 by default), so a replayed event
    # is always recognised.
    processed_retention_seconds: int = Field(default=7200, ge=60)
    prune_interval_seconds: float = Field(default=60.0, gt=0)
