"""The container image (deploy/Dockerfile, linted by hadolint) and the compose file
(deploy/compose.yaml). No container engine runs here, so the compose file is checked for what
`docker compose config` would not catch anyway: every process is there with the right image and
command, its environment is complete for its settings, the dependencies start in order, and
what Prometheus and Grafana mount exists."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.deploy.process_env import (
    PROCESSES,
    check_process_env,
    image_env,
    module_exists,
)
from tests.deploy.tools import ROOT, run, tool

DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
# A value for every variable compose.yaml reads from deploy/.env.
DOTENV = {
    "POSTGRES_PASSWORD": "pg-password",
    "JWT_SECRET": "j" * 48,
    "ADMIN_PASSWORD": "admin-password",
    "GRAFANA_ADMIN_PASSWORD": "grafana-password",
    "LLM_BASE_URL": "https://llm.example/v1",
    "LLM_API_KEY": "sk-test",
}
# compose service -> the module its command runs.
APP_SERVICES = {
    "migrate": "shared.db.migrate",
    "gateway": "services.gateway",
    "chat": "services.chat",
    "analytics": "services.analytics",
    "ai-worker": "services.ai_worker",
    "relay": "services.chat.relay",
    "aggregator": "services.analytics.aggregator",
    "webhooks": "services.chat.webhooks",
}


def _interpolate(text: str, values: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} against `values`."""

    def one(match: re.Match[str]) -> str:
        name, operator, rest = match.group(1), match.group(2), match.group(3)
        if name in values:
            return values[name]
        if operator == ":?":
            raise AssertionError(f"compose.yaml requires {name}: {rest}")
        return rest or ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, text)


def _compose(values: dict[str, str] = DOTENV) -> dict[str, Any]:
    return dict(yaml.safe_load(_interpolate(COMPOSE.read_text(), values)))


# --- the image -----------------------------------------------------------------------------------


def test_hadolint_passes_the_dockerfile() -> None:
    run(tool("hadolint"), "--failure-threshold", "info", str(DOCKERFILE))


def test_the_image_is_multi_stage_slim_and_non_root() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?", text, re.MULTILINE)
    assert len(stages) == 2 and stages[0][1] == "builder"
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.MULTILINE)
    final = text.rsplit("\nFROM ", 1)[1]
    # Wheels are built in the builder and only mounted into the final stage.
    assert "pip wheel" in text.split("\nFROM ")[1]
    assert "--mount=type=bind,from=builder" in final and "--no-index" in final
    user = re.findall(r"^USER (\S+)", final, re.MULTILINE)
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert re.search(r'^CMD \["python", "-m", "services\.gateway"\]', final, re.MULTILINE)


def test_the_build_context_holds_only_what_the_image_copies() -> None:
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") :][:4] == ["*", "!pyproject.toml", "!shared/", "!services/"]
    for source in re.findall(r"^COPY (?!--from)(\S+)", DOCKERFILE.read_text(), re.MULTILINE):
        assert f"!{source.rstrip('/')}/" in ignore or f"!{source}" in ignore, source


def test_every_process_listens_on_all_interfaces_in_the_image() -> None:
    env = image_env()
    for process in PROCESSES.values():
        if process.port_field is not None:
            prefix = {
                "services.gateway": "GATEWAY_",
                "services.chat": "CHAT_",
                "services.analytics": "ANALYTICS_",
                "services.ai_worker": "AI_WORKER_",
                "services.chat.relay": "CHAT_RELAY_",
                "services.analytics.aggregator": "ANALYTICS_AGGREGATOR_",
                "services.chat.webhooks": "CHAT_WEBHOOKS_",
            }[process.module]
            assert env.get(f"{prefix}HOST") == "0.0.0.0", process.module
    assert env["PYTHONPATH"] == "/app"


# --- the compose file ----------------------------------------------------------------------------


def test_compose_runs_the_whole_system() -> None:
    services = _compose()["services"]
    assert set(services) == {*APP_SERVICES, "postgres", "redis", "prometheus", "grafana"}
    for name, module in APP_SERVICES.items():
        service = services[name]
        assert service["image"].startswith("chat-platform:"), name
        assert service["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}, name
        assert service["command"] == ["python", "-m", module], name
        assert module_exists(module), f"{name}: no module {module}"
    # Every process the platform has is in the compose file.
    assert set(APP_SERVICES.values()) == set(PROCESSES)
    # Only the gateway (and the local-only UIs) publish a port.
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"gateway", "prometheus", "grafana"}
    for ui in ("prometheus", "grafana"):
        assert all(port.startswith("127.0.0.1:") for port in services[ui]["ports"]), ui


@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_compose_environment_is_complete(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    process = PROCESSES[APP_SERVICES[name]]
    service = _compose()["services"][name]
    env = {**image_env(), **{k: str(v) for k, v in service["environment"].items()}}
    check_process_env(
        process,
        env,
        monkeypatch,
        postgres_host="postgres",
        redis_host="redis",
        service_urls={"chat": "http://chat:8001", "analytics": "http://analytics:8002"},
    )
    # Secrets only where they are needed.
    assert ("JWT_SECRET" in env) == process.http, name
    assert ("LLM_API_KEY" in env) == (name == "ai-worker"), name


def test_compose_requires_every_secret() -> None:
    for secret in ("POSTGRES_PASSWORD", "JWT_SECRET", "ADMIN_PASSWORD", "LLM_BASE_URL"):
        with pytest.raises(AssertionError, match=f"requires {secret}"):
            _compose({k: v for k, v in DOTENV.items() if k != secret})
    example = (DEPLOY / "compose.env.example").read_text()
    for variable in DOTENV:
        assert re.search(rf"^{variable}=", example, re.MULTILINE), variable


def test_compose_starts_things_in_order() -> None:
    services = _compose()["services"]
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["migrate"]["restart"] == "no"
    for name in set(APP_SERVICES) - {"migrate"}:
        assert services[name]["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"},
            "redis": {"condition": "service_healthy"},
        }, name
        check = " ".join(services[name]["healthcheck"]["test"])
        port = PROCESSES[APP_SERVICES[name]].port
        # Every process (those without an API too) is healthy once its dependencies answer.
        assert f"127.0.0.1:{port}/readyz" in check, name
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"], name


def test_compose_prometheus_and_grafana_mount_what_exists() -> None:
    services = _compose()["services"]
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"
    prometheus_config = yaml.safe_load((DEPLOY / "prometheus/prometheus.compose.yml").read_text())
    for scrape in prometheus_config["scrape_configs"]:
        host, port = scrape["static_configs"][0]["targets"][0].split(":")
        assert host in services, f"{scrape['job_name']} scrapes {host}, not a compose service"
        process = next(p for p in PROCESSES.values() if p.job == scrape["job_name"])
        assert int(port) == process.port
