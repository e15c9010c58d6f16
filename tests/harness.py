"""What tests get from the harness: the running system, accounts, and HTTP helpers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from deploy.local.processes import Deadline, ManagedProcess
from deploy.local.stack import READY_TIMEOUT, ROOT, SERVICES, RunningService, assign_ports
from tests.support.llm_stub import RunningStub

HTTP_TIMEOUT = 30.0


@dataclass
class User:
    """A registered, logged-in account."""

    id: Any
    email: str
    password: str
    name: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Stack:
    """The running system: URLs, the settings the services were started with, extra processes."""

    gateway_url: str
    chat_url: str
    analytics_url: str
    database_url: str
    redis_url: str
    redis_prefix: str
    jwt_secret: str
    admin_email: str
    admin_password: str
    env: dict[str, str]
    log_dir: Path
    # The stand-in LLM provider the AI worker talks to (tests.support.llm_stub), and its control.
    llm: RunningStub | None = None
    services: list[RunningService] = field(default_factory=list)
    extra: list[ManagedProcess] = field(default_factory=list)

    def start_gateway(self, **overrides: str) -> str:
        """Start one more gateway with `overrides` on top of the stack's env (for instance
        GATEWAY_RATE_LIMIT_PER_MINUTE="3"); returns its base URL once it is ready.

        It shares the database, the Redis prefix and the chat/analytics services with the main
        gateway, and is stopped at the end of the run.
        """
        url, _ = self.start_service("gateway", **overrides)
        assert url is not None
        return url

    def start_service(
        self, name: str, *, ready: bool = True, **overrides: str
    ) -> tuple[str | None, ManagedProcess]:
        """Start one more process of service `name` (chat, ai_worker, ...) with `overrides` on
        top of the stack's env, on a port of its own; returns its URL (None without HTTP) and
        process once it answers its readiness probe (with `ready=False`, its liveness probe:
        for a process started with a dependency it cannot reach). It shares the database and
        the Redis prefix (so an extra worker takes jobs from the same queue), and is stopped at
        the end of the run unless the test stops or kills it first."""
        spec = next(spec for spec in SERVICES if spec.name == name)
        env = {**self.env, **overrides}
        assign_ports(env, [spec], free=True)
        label = f"{name}-extra-{len(self.extra) + 1}"
        process = ManagedProcess(
            label, spec.argv(), log_path=self.log_dir / f"{label}.log", env=env, cwd=ROOT
        )
        self.extra.append(process)
        url = spec.url(env)
        if url is not None:
            path = spec.ready_path if ready else spec.health_path
            process.wait_http_ok(url + path, Deadline(READY_TIMEOUT))
        return url, process

    def restart_service(self, name: str) -> ManagedProcess:
        """Start again the stack's own `name` process after a test killed it: same env, same
        port, so the rest of the run finds the stack whole. Returns the new process once it
        answers; the dead one stays listed (its log tail is shown on failure)."""
        service = next(service for service in self.services if service.name == name)
        service.process.wait_exit(Deadline(10.0))  # reaped: its port is free again
        self.extra.append(service.process)
        label = f"{name}-restarted-{len(self.extra)}"
        service.process = ManagedProcess(
            label,
            service.spec.argv(),
            log_path=self.log_dir / f"{label}.log",
            env=self.env,
            cwd=ROOT,
        )
        if service.url is not None:
            service.process.wait_http_ok(
                service.url + service.spec.ready_path, Deadline(READY_TIMEOUT)
            )
        return service.process

    def processes(self) -> list[ManagedProcess]:
        return [service.process for service in self.services] + self.extra


def client(base_url: str) -> httpx.Client:
    """An HTTP client for a service; loopback traffic never goes through an env proxy."""
    return httpx.Client(base_url=base_url, timeout=HTTP_TIMEOUT, trust_env=False)


def envelope_data(response: httpx.Response, what: str) -> Any:
    """The `data` of a successful envelope; fails the test with the body otherwise."""
    assert response.status_code in (200, 201), (
        f"{what}: HTTP {response.status_code}: {response.text}"
    )
    body = response.json()
    assert body.get("success") is True, f"{what}: {body}"
    return body["data"]


def log_in(http: httpx.Client, email: str, password: str) -> User:
    """Log an account in (POST /auth/login) and read its id (GET /auth/me)."""
    login = envelope_data(
        http.post("/auth/login", json={"email": email, "password": password}), "login"
    )
    token = login["access_token"]
    me = envelope_data(http.get("/auth/me", headers={"Authorization": f"Bearer {token}"}), "me")
    profile = me.get("user", me)
    return User(
        id=profile["id"],
        email=email,
        password=password,
        name=profile.get("name", ""),
        token=token,
    )
