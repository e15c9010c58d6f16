"""The system's processes and how to start them together; shared by `make run` and the tests.

A new process (the Celery ai_worker, say) is one more `ServiceSpec` line in `SERVICES`: the
runner and the test harness both start everything listed there.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from deploy.local.processes import Deadline, ManagedProcess, free_port, stop_all

ROOT = Path(__file__).resolve().parents[2]
# Seconds the migrations may take, and the services to answer their health check.
MIGRATE_TIMEOUT = 180.0
READY_TIMEOUT = 90.0


@dataclass(frozen=True)
class ServiceSpec:
    """One process of the system, started as `python -m <module>`."""

    name: str
    module: str
    # Env var naming the HTTP port it serves (health, metrics); None if it has none.
    port_env: str | None
    default_port: int = 0
    health_path: str = "/healthz"
    ready_path: str = "/readyz"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", self.module]

    def url(self, env: MutableMapping[str, str]) -> str | None:
        """Its base URL under `env`, if it serves HTTP."""
        if self.port_env is None:
            return None
        return f"http://127.0.0.1:{env[self.port_env]}"


# Started in this order, stopped in reverse.
SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("chat", "services.chat", "CHAT_PORT", 8001),
    ServiceSpec("analytics", "services.analytics", "ANALYTICS_PORT", 8002),
    ServiceSpec("gateway", "services.gateway", "GATEWAY_PORT", 8000),
    # The outbox relay, the webhook sender, the analytics aggregator and the workers serve no
    # API: their probes (and metrics) are on a port of their own (shared/probe_server.py).
    ServiceSpec("relay", "services.chat.relay", "CHAT_RELAY_METRICS_PORT", 9102),
    ServiceSpec("webhooks", "services.chat.webhooks", "CHAT_WEBHOOKS_METRICS_PORT", 9104),
    ServiceSpec(
        "aggregator", "services.analytics.aggregator", "ANALYTICS_AGGREGATOR_METRICS_PORT", 9103
    ),
    # Ready once its Celery consumer runs: waiting for it means the queue is being consumed.
    ServiceSpec("ai_worker", "services.ai_worker", "AI_WORKER_METRICS_PORT", 9101),
)


@dataclass
class RunningService:
    spec: ServiceSpec
    process: ManagedProcess
    url: str | None

    @property
    def name(self) -> str:
        return self.spec.name


def assign_ports(
    env: MutableMapping[str, str], specs: Iterable[ServiceSpec], *, free: bool
) -> None:
    """Give each service a port in `env` (a free one, or its default unless set), and wire the
    gateway to chat and analytics (and analytics to chat, for agent names) unless
    GATEWAY_*_URL / ANALYTICS_CHAT_URL say otherwise."""
    for spec in specs:
        if spec.port_env is None:
            continue
        if free:
            env[spec.port_env] = str(free_port())
        else:
            env.setdefault(spec.port_env, str(spec.default_port))
    env.setdefault("GATEWAY_CHAT_URL", f"http://127.0.0.1:{env.get('CHAT_PORT', 8001)}")
    env.setdefault("GATEWAY_ANALYTICS_URL", f"http://127.0.0.1:{env.get('ANALYTICS_PORT', 8002)}")
    env.setdefault("ANALYTICS_CHAT_URL", f"http://127.0.0.1:{env.get('CHAT_PORT', 8001)}")


def run_migrations(
    env: MutableMapping[str, str],
    log_dir: Path,
    *,
    echo: bool = False,
    timeout: float = MIGRATE_TIMEOUT,
) -> None:
    """Run `python -m shared.db.migrate` on env["DATABASE_URL"]; raise ProcessFailed on failure."""
    process = ManagedProcess(
        "migrate",
        [sys.executable, "-m", "shared.db.migrate"],
        log_path=log_dir / "migrate.log",
        env=env,
        cwd=ROOT,
        echo=echo,
    )
    if process.wait_exit(Deadline(timeout)) != 0:
        raise process.failure("failed")


def start_services(
    specs: Sequence[ServiceSpec],
    env: MutableMapping[str, str],
    log_dir: Path,
    *,
    echo: bool = False,
    on_exit: Callable[[ManagedProcess], None] | None = None,
) -> list[RunningService]:
    """Start every service at once (they start in parallel); nothing is left running on error."""
    started: list[RunningService] = []
    try:
        for spec in specs:
            process = ManagedProcess(
                spec.name,
                spec.argv(),
                log_path=log_dir / f"{spec.name}.log",
                env=env,
                cwd=ROOT,
                echo=echo,
                on_exit=on_exit,
            )
            started.append(RunningService(spec, process, spec.url(env)))
    except BaseException:
        stop_services(started)
        raise
    return started


def wait_services(
    services: Iterable[RunningService], *, ready: bool, timeout: float = READY_TIMEOUT
) -> None:
    """Wait (one deadline for all) until each service answers 200 on its health path, or its
    readiness path when `ready`; a service without HTTP only has to stay alive."""
    deadline = Deadline(timeout)
    for service in services:
        if service.url is None:
            if service.process.returncode is not None:
                raise service.process.failure("died at start")
            continue
        path = service.spec.ready_path if ready else service.spec.health_path
        service.process.wait_http_ok(service.url + path, deadline)


def stop_services(services: Sequence[RunningService]) -> None:
    """Stop services, last started first, within one shared deadline."""
    stop_all([service.process for service in services])
