"""Settings of the chat service (env prefix CHAT_, plus the shared DATABASE_URL, REDIS_URL,
JWT_*).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings

# Text the AI can read, and common images and documents; everything else is refused (415).
DEFAULT_ALLOWED_TYPES = (
    "text/plain,text/markdown,text/csv,application/json,"
    "image/png,image/jpeg,image/gif,image/webp,application/pdf"
)


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

    # --- attachments -----------------------------------------------------------------------------
    # Refused with 413 past these: one file, and everything one user has stored.
    attachment_max_file_bytes: int = Field(default=25 * 1024 * 1024, ge=1)
    attachment_max_user_bytes: int = Field(default=1024 * 1024 * 1024, ge=1)
    attachment_max_files: int = Field(default=10, ge=1, le=100)
    # Comma-separated content types accepted, each checked against the file's bytes.
    attachment_allowed_types: str = DEFAULT_ALLOWED_TYPES
    # Text attachments up to this size are given to the AI agent as context (larger: named only).
    attachment_context_max_bytes: int = Field(default=64 * 1024, ge=0, le=8 * 1024 * 1024)

    # --- object storage --------------------------------------------------------------------------
    storage_backend: Literal["local", "s3"] = "local"
    # local: the directory files are kept in (`make run`: .run/storage); default a temp directory.
    storage_dir: str | None = None
    # s3: any S3-compatible store; credentials from these or boto3's usual chain (env, role).
    s3_endpoint_url: str | None = None
    s3_bucket: str | None = None
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    s3_region: str = "us-east-1"
    # Upload part size: the most of a file one upload holds in memory (S3's minimum is 5 MiB).
    s3_part_size_bytes: int = Field(default=8 * 1024 * 1024, ge=5 * 1024 * 1024)
    # stream: downloads go through this service (default; see README "Storage"); redirect: a 302
    # to a pre-signed URL valid for `s3_presign_seconds`.
    s3_download_mode: Literal["stream", "redirect"] = "stream"
    s3_presign_seconds: int = Field(default=60, ge=1, le=3600)
    # How often objects of deleted attachments that could not be deleted at once are retried.
    storage_sweep_seconds: float = Field(default=60.0, gt=0)

    # --- export and import -----------------------------------------------------------------------
    # The largest export file `POST /chat/import` accepts (spooled to disk, never held in memory).
    import_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)

    @property
    def allowed_types(self) -> frozenset[str]:
        return frozenset(
            part.strip().lower()
            for part in self.attachment_allowed_types.split(",")
            if part.strip()
        )

    @model_validator(mode="after")
    def _storage_configured(self) -> ChatSettings:
        if self.storage_backend == "s3" and not self.s3_bucket:
            raise ValueError("CHAT_S3_BUCKET is required when CHAT_STORAGE_BACKEND=s3")
        return self
