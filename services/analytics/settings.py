"""Settings of the analytics service (env prefix ANALYTICS_, plus DATABASE_URL, JWT_*)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class AnalyticsSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="ANALYTICS_", extra="ignore", hide_input_in_errors=True
    )

    port: int = 8002
    db_pool_max_size: int = 10
