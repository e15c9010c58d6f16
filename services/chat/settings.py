"""Settings of the chat service (env prefix CHAT_, plus the shared DATABASE_URL, REDIS_URL,
JWT_*).
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class ChatSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CHAT_", extra="ignore", hide_input_in_errors=True)

    port: int = 8001
    # How long a stored Idempotency-Key answer is replayed before the key may be reused.
    idempotency_ttl_seconds: int = Field(default=24 * 3600, ge=60)
