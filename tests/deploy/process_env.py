"""Every process of the platform as the deploy files start it (`python -m <module>`), and a check
that the environment a compose service or a Kubernetes container gives it is complete: its
settings classes accept it, it listens where Prometheus and the other processes look, and it
reaches Postgres and Redis by the names they have there."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest

from shared.settings import JWTSettings, ServiceSettings
from tests.deploy.tools import ROOT


@dataclass(frozen=True)
class Process:
    module: str
    settings: str  # "package.module:Class"
    job: str | None  # its Prometheus job; None for the migration
    port_field: str | None = None
    port: int | None = None
    http: bool = False  # an HTTP API (checks tokens, has /healthz and /readyz)


PROCESSES = {
    p.module: p
    for p in (
        Process("services.gateway", "services.gateway.settings:GatewaySettings", "gateway",
                "port", 8000, http=True),
        Process("services.chat", "services.chat.settings:ChatSettings", "chat", "port", 8001,
                http=True),
        Process("services.analytics", "services.analytics.settings:AnalyticsSettings",
                "analytics", "port", 8002, http=True),
        Process("services.ai_worker", "services.ai_worker.settings:WorkerSettings", "ai_worker",
                "metrics_port", 9101),
        Process("services.chat.relay", "services.chat.relay:RelaySettings", "relay",
                "metrics_port", 9102),
        Process("services.analytics.aggregator",
                "services.analytics.settings:AggregatorSettings", "aggregator", "metrics_port",
                9103),
        Process("services.chat.webhooks", "services.chat.webhooks.settings:WebhookSettings",
                "webhooks", "metrics_port", 9104),
        Process("shared.db.migrate", "shared.settings:ServiceSettings", None),
    )
}  # fmt: skip


def module_exists(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def image_env() -> dict[str, str]:
    """The ENV of deploy/Dockerfile's final stage."""
    text = (ROOT / "deploy" / "Dockerfile").read_text().replace("\\\n", " ")
    final = text.rsplit("\nFROM ", 1)[1]
    env: dict[str, str] = {}
    for line in final.splitlines():
        if line.startswith("ENV "):
            env.update(re.findall(r"(\w+)=(\S+)", line))
    return env


def load_settings(process: Process, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The process's settings as it would read them from exactly `env`."""
    for name in list(os.environ):
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    module, cls = process.settings.split(":")
    return getattr(importlib.import_module(module), cls)()


def check_process_env(
    process: Process,
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    *,
    postgres_host: str,
    redis_host: str,
    service_urls: dict[str, str],
) -> None:
    where = f"{process.module}"
    settings = load_settings(process, env, monkeypatch)
    assert isinstance(settings, ServiceSettings), where
    assert urlsplit(settings.database_url).hostname == postgres_host, where
    assert urlsplit(settings.redis_url).hostname == redis_host, where
    assert settings.redis_prefix == "chat:", where
    if process.port_field is not None:
        assert settings.host == "0.0.0.0", f"{where} listens on {settings.host} only"
        assert getattr(settings, process.port_field) == process.port, where
    if process.http:
        JWTSettings()  # JWT_SECRET present and long enough
    if process.module == "services.gateway":
        assert settings.chat_url == service_urls["chat"]
        assert settings.analytics_url == service_urls["analytics"]
        assert settings.admin_email and settings.admin_password is not None
    if process.module == "services.analytics" and hasattr(settings, "chat_url"):
        assert settings.chat_url == service_urls["chat"]
    if process.module == "services.ai_worker":
        assert "LLM_BASE_URL" in env and settings.llm_base_url == env["LLM_BASE_URL"]
        assert "LLM_API_KEY" in env
