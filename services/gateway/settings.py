"""Settings of the gateway (env prefix GATEWAY_, plus DATABASE_URL, REDIS_URL, JWT_*, ADMIN_*)."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_", extra="ignore", hide_input_in_errors=True
    )

    port: int = 8000
    chat_url: str = "http://127.0.0.1:8001"
    analytics_url: str = "http://127.0.0.1:8002"
    # Per user, for every /chat request: a sustained rate plus a burst (GCRA, kept in Redis).
    rate_limit_per_minute: int = Field(default=600, ge=1)
    rate_limit_burst: int = Field(default=60, ge=1)
    # Per client address, for /auth/login, /auth/token and /auth/register (password guessing).
    auth_rate_limit_per_minute: int = Field(default=30, ge=1)
    auth_rate_limit_burst: int = Field(default=10, ge=1)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    # Bodies of uploads (a message's files, an import), streamed through rather than buffered:
    # at least the chat service's files per message times its per-file limit (10 x 25 MiB).
    max_upload_bytes: int = Field(default=300 * 1024 * 1024, ge=1024)
    upstream_timeout_seconds: float = Field(default=120.0, gt=0)
    upstream_connections: int = Field(default=256, ge=1)
    # An idle pooled connection is dropped well before the services' 75 s keep-alive ends.
    upstream_keepalive_seconds: float = Field(default=30.0, gt=0)
    admin_email: str | None = Field(
        default=None, validation_alias=AliasChoices("ADMIN_EMAIL", "GATEWAY_ADMIN_EMAIL")
    )
    admin_password: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("ADMIN_PASSWORD", "GATEWAY_ADMIN_PASSWORD")
    )
    db_pool_max_size: int = Field(default=10, ge=1)
    # Browser origins allowed to call the API cross-origin (comma-separated); none by default,
    # since the web app is expected on the same origin as the gateway.
    cors_origins: str = ""

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]
