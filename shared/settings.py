"""Settings every service reads; each service extends them with its own prefixed fields."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIN_HS256_SECRET_BYTES = 32


class JWTSettings(BaseSettings):
    """How tokens are signed and checked (RFC 8725: the algorithm is pinned, not read)."""

    # Validation errors must not echo the input: it is the signing key.
    model_config = SettingsConfigDict(env_prefix="JWT_", extra="ignore", hide_input_in_errors=True)

    algorithm: Literal["HS256", "RS256"] = "HS256"
    # No default: a service must not start with a guessable signing key.
    secret: str | None = None
    # RS256 mode verifies tokens of an external identity provider against its key set.
    jwks_url: str | None = None
    issuer: str = "chat-platform"
    audience: str = "chat-platform-api"
    access_token_ttl_seconds: int = Field(default=3600, ge=60, le=7 * 24 * 3600)
    leeway_seconds: int = Field(default=10, ge=0, le=300)

    @model_validator(mode="after")
    def _check_key_material(self) -> JWTSettings:
        if self.algorithm == "HS256":
            if not self.secret:
                raise ValueError(
                    "JWT_SECRET is required (HS256); generate one with "
                    "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`"
                )
            if len(self.secret.encode()) < MIN_HS256_SECRET_BYTES:
                raise ValueError(
                    f"JWT_SECRET must be at least {MIN_HS256_SECRET_BYTES} bytes for HS256 "
                    f"(got {len(self.secret.encode())})"
                )
        elif not self.jwks_url:
            raise ValueError("JWT_JWKS_URL is required when JWT_ALGORITHM=RS256")
        return self


class ServiceSettings(BaseSettings):
    """Connection settings shared by every process; services add their own, prefixed ones."""

    # URLs may carry passwords: validation errors name the field, never echo its value.
    model_config = SettingsConfigDict(extra="ignore", hide_input_in_errors=True)

    database_url: str = Field(
        default="postgresql://postgres@127.0.0.1:5432/chat",
        validation_alias=AliasChoices("DATABASE_URL", "database_url"),
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("REDIS_URL", "redis_url"),
    )
    # Every Redis key the platform writes starts with this, so runs and tenants can share a server.
    redis_prefix: str = Field(
        default="chat:", validation_alias=AliasChoices("REDIS_PREFIX", "redis_prefix")
    )
    log_level: str = Field(default="INFO", validation_alias=AliasChoices("LOG_LEVEL", "log_level"))
    host: str = "127.0.0.1"
    port: int = 8000
    db_pool_min_size: int = Field(default=2, ge=1)
    db_pool_max_size: int = Field(default=20, ge=1)
    # uvicorn worker processes of an HTTP service (`<PREFIX>WORKERS`; unset: WEB_CONCURRENCY,
    # else 1). Each has its own database pool of up to db_pool_max_size connections.
    workers: int | None = Field(default=None, ge=1, le=64)

    @field_validator("log_level")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()
