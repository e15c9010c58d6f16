"""The probes of the processes without an API (shared/probe_server.py): the server itself
(heartbeats, the envelope, /metrics), and the relay, the webhook sender, the aggregator and the
AI worker answering /healthz and /readyz in the running stack, reporting a dependency they
cannot reach by name (unready, yet alive), and stopping with status 0 on SIGTERM."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from deploy.local.processes import free_port
from shared.probe_server import (
    OK,
    Heartbeat,
    ProbeServer,
    all_of,
    postgres_check,
    redis_check,
)
from tests.harness import Stack

# The processes that serve no API: their probes are on their metrics port.
PROCESSES = ("relay", "webhooks", "aggregator", "ai_worker")
# What each process's probes check (shared/probe_server.py and each process's main()).
LIVENESS = {
    "relay": {"relay_loop"},
    "webhooks": {"consumer", "senders", "maintenance"},
    "aggregator": {"consumer_loop"},
    "ai_worker": {"consumer", "sweeper"},
}
READINESS = {
    "relay": {"postgres", "redis"},
    "webhooks": {"postgres", "redis"},
    "aggregator": {"postgres", "redis"},
    "ai_worker": {"consumer", "postgres", "redis"},
}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=10, trust_env=False)


def checks_of(response: httpx.Response) -> dict[str, str]:
    body = response.json()
    if response.status_code == 200:
        assert body["success"] is True, body
        checks: dict[str, str] = body["data"]["checks"]
    else:
        assert body["success"] is False and body["error"]["code"] == "service_unavailable", body
        checks = body["error"]["details"]["checks"]
    return checks


# --- the server ----------------------------------------------------------------------------


def test_a_heartbeat_is_stale_past_its_limit_and_fresh_again_after_a_beat() -> None:
    clock = FakeClock()
    heartbeat = Heartbeat(stall_seconds=30, clock=clock)
    assert heartbeat.check() == OK
    clock.now += 30
    assert heartbeat.check() == OK
    clock.now += 1
    assert heartbeat.check().startswith("stalled: no progress for 31 s")
    heartbeat.beat()
    assert heartbeat.check() == OK


@pytest.fixture
def probed() -> Iterator[tuple[str, FakeClock, dict[str, Any]]]:
    """A probe server on a free port with one heartbeat and a switchable dependency."""
    clock = FakeClock()
    heartbeat = Heartbeat(stall_seconds=60, clock=clock)
    dependency: dict[str, Any] = {"state": OK}
    registry = CollectorRegistry()
    Counter("probe_test_things_total", "Things.", registry=registry).inc(3)

    def failing() -> str:
        if dependency["state"] == "raise":
            raise RuntimeError("boom")
        return str(dependency["state"])

    server = ProbeServer(
        host="127.0.0.1",
        port=0,
        liveness={"loop": heartbeat.check, "both": all_of([heartbeat.check, lambda: OK])},
        readiness={"database": failing, "cache": lambda: OK},
        registry=registry,
    ).start()
    try:
        yield f"http://127.0.0.1:{server.port}", clock, dependency
    finally:
        server.stop()


def test_the_probe_server_answers_healthz_readyz_and_metrics(
    probed: tuple[str, FakeClock, dict[str, Any]],
) -> None:
    url, _, _ = probed
    alive = get(f"{url}/healthz")
    assert alive.status_code == 200, alive.text
    assert alive.json() == {
        "success": True,
        "message": "alive",
        "data": {"status": "alive", "checks": {"loop": OK, "both": OK}},
    }
    ready = get(f"{url}/readyz")
    assert ready.status_code == 200, ready.text
    assert checks_of(ready) == {"database": OK, "cache": OK}
    metrics = get(f"{url}/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "probe_test_things_total 3.0" in metrics.text
    missing = get(f"{url}/nothing-here")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


def test_a_wedged_loop_fails_healthz_and_a_failing_dependency_fails_readyz_by_name(
    probed: tuple[str, FakeClock, dict[str, Any]],
) -> None:
    url, clock, dependency = probed
    clock.now += 61  # the loop has not beaten for 61 s
    alive = get(f"{url}/healthz")
    assert alive.status_code == 503, alive.text
    checks = checks_of(alive)
    assert checks["loop"].startswith("stalled"), checks
    assert checks["both"].startswith("stalled"), checks
    # Readiness is about dependencies only.
    assert get(f"{url}/readyz").status_code == 200

    dependency["state"] = "error: OperationalError"
    ready = get(f"{url}/readyz")
    assert ready.status_code == 503, ready.text
    assert checks_of(ready) == {"database": "error: OperationalError", "cache": OK}
    dependency["state"] = "raise"  # a check that raises is a failure, not a 500
    ready = get(f"{url}/readyz")
    assert ready.status_code == 503, ready.text
    assert checks_of(ready)["database"] == "error: RuntimeError"


def test_dependency_checks_answer_ok_for_the_stack_and_name_the_error_for_a_closed_port(
    stack: Stack,
) -> None:
    assert postgres_check(stack.database_url, application_name="probe-test")() == OK
    assert redis_check(stack.redis_url)() == OK
    closed = free_port()
    assert (
        postgres_check(
            f"postgresql://postgres@127.0.0.1:{closed}/chat", application_name="probe-test"
        )()
        == "error: OperationalError"
    )
    assert redis_check(f"redis://127.0.0.1:{closed}/0")() == "error: ConnectionError"


# --- the processes -------------------------------------------------------------------------


def own_url(stack: Stack, name: str) -> str:
    service = next(service for service in stack.services if service.name == name)
    assert service.url is not None
    return service.url


@pytest.mark.parametrize("name", PROCESSES)
def test_each_process_of_the_stack_is_alive_and_ready_on_its_metrics_port(
    stack: Stack, name: str
) -> None:
    url = own_url(stack, name)
    alive = get(f"{url}/healthz")
    assert alive.status_code == 200, alive.text
    assert checks_of(alive) == dict.fromkeys(LIVENESS[name], OK)
    ready = get(f"{url}/readyz")
    assert ready.status_code == 200, ready.text
    assert checks_of(ready) == dict.fromkeys(READINESS[name], OK)
    metrics = get(f"{url}/metrics")
    assert metrics.status_code == 200
    assert "# TYPE process_cpu_seconds_total counter" in metrics.text


@pytest.mark.parametrize("name", PROCESSES)
def test_a_healthy_process_stops_with_status_0_on_sigterm(stack: Stack, name: str) -> None:
    url, process = stack.start_service(name)
    assert url is not None
    assert get(f"{url}/readyz").status_code == 200
    assert process.stop() == 0, process.tail()


# Which dependency each extra process is started without. The worker keeps a good Redis (its
# broker: without it its consumer never starts) and gets a queue of its own (a prefix nobody
# sends to), so it takes none of the stack's jobs while its database is unreachable.
BROKEN = {
    "relay": "redis",
    "webhooks": "redis",
    "aggregator": "redis",
    "ai_worker": "postgres",
}


@pytest.mark.parametrize("name", PROCESSES)
def test_an_unreachable_dependency_makes_a_process_unready_not_dead(
    stack: Stack, name: str
) -> None:
    closed = free_port()
    dependency = BROKEN[name]
    if dependency == "redis":
        overrides = {"REDIS_URL": f"redis://127.0.0.1:{closed}/0"}
    else:
        overrides = {
            "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{closed}/chat",
            "REDIS_PREFIX": f"{stack.redis_prefix}probe-{name}:",
        }
    url, process = stack.start_service(name, ready=False, **overrides)
    assert url is not None
    try:
        alive = get(f"{url}/healthz")
        assert alive.status_code == 200, alive.text
        ready = get(f"{url}/readyz")
        assert ready.status_code == 503, ready.text
        checks = checks_of(ready)
        assert checks[dependency].startswith("error: "), checks
        assert {key for key, state in checks.items() if state != OK} == {dependency}, checks
    finally:
        status = process.stop()
    assert status == 0, process.tail()
