"""Session harness: real Postgres, Redis and service processes, shared by the whole test run.

Each run gets its own database (`chat_test_<random>`, dropped at the end) and its own Redis key
prefix, on the servers named by DATABASE_URL / REDIS_URL or on throwaway ones started here. The
services run as real processes on free ports, with their logs in pytest's temp dir; when the
run fails, the end of each log is printed in the summary.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from deploy.local.processes import ProcessFailed
from deploy.local.servers import RedisHandle, ServerUnavailable, ensure_postgres, ensure_redis
from deploy.local.stack import (
    SERVICES,
    assign_ports,
    run_migrations,
    start_services,
    stop_services,
    wait_services,
)
from tests.harness import Stack, User, client, envelope_data, log_in
from tests.support.llm_stub import start_in_thread

# Settings of the developer's shell that must not leak into the services under test.
_ISOLATED_PREFIXES = (
    "GATEWAY_",
    "CHAT_",
    "ANALYTICS_",
    "AI_WORKER_",
    "JWT_",
    "ADMIN_",
    # One process per service unless a test asks for workers (shared/server.py).
    "WEB_CONCURRENCY",
    "PROMETHEUS_MULTIPROC_DIR",
)
_LOG_TAILS = pytest.StashKey[dict[str, str]]()
_LOG_DIR = pytest.StashKey[Path]()


def _service_env(database_url: str, redis_url: str, redis_prefix: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_ISOLATED_PREFIXES)}
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        REDIS_PREFIX=redis_prefix,
        JWT_SECRET=secrets.token_urlsafe(48),
        ADMIN_EMAIL="admin@example.com",
        ADMIN_PASSWORD=f"Admin-{secrets.token_urlsafe(12)}-1a",
        # High enough that only a test's own low-limit gateway (stack.start_gateway) limits.
        GATEWAY_RATE_LIMIT_PER_MINUTE="100000",
        GATEWAY_RATE_LIMIT_BURST="100000",
        GATEWAY_AUTH_RATE_LIMIT_PER_MINUTE="100000",
        GATEWAY_AUTH_RATE_LIMIT_BURST="100000",
        LOG_LEVEL=os.environ.get("LOG_LEVEL", "INFO"),
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture(scope="session")
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The whole system, started once per test run."""
    workdir = tmp_path_factory.mktemp("stack")
    log_dir = workdir / "logs"
    request.config.stash[_LOG_DIR] = log_dir
    run_id = secrets.token_hex(4)
    with ExitStack() as cleanup:
        try:
            yield _start_stack(cleanup, request.config, workdir, log_dir, run_id)
        except (ServerUnavailable, ProcessFailed) as exc:
            # Every test needs the stack: one clear stop beats the same error for each test.
            pytest.exit(f"the test stack did not start: {exc}", returncode=1)


def _start_stack(
    cleanup: ExitStack, config: pytest.Config, workdir: Path, log_dir: Path, run_id: str
) -> Stack:
    postgres = ensure_postgres(workdir)
    cleanup.callback(postgres.stop)
    redis = ensure_redis(workdir)
    cleanup.callback(redis.stop)
    redis_prefix = f"test-{run_id}:"
    if not redis.embedded:
        cleanup.callback(_delete_keys, redis, redis_prefix)

    database = f"chat_test_{run_id}"
    postgres.create_database(database)
    cleanup.callback(postgres.drop_database, database)

    llm = start_in_thread()
    cleanup.callback(llm.stop)
    env = _service_env(postgres.url(database), redis.url, redis_prefix)
    env.update(
        # Attachments on the local store, in this run's own directory.
        CHAT_STORAGE_DIR=str(workdir / "storage"),
        LLM_BASE_URL=llm.base_url,
        LLM_API_KEY="test-key",
        # Fast retries and timeouts keep the failure tests short; the logic is the same.
        AI_WORKER_LLM_BACKOFF_BASE_SECONDS="0.05",
        AI_WORKER_LLM_BACKOFF_MAX_SECONDS="0.2",
        AI_WORKER_LLM_TIMEOUT_SECONDS="3",
        AI_WORKER_CONCURRENCY="16",
        CHAT_AI_WAIT_TIMEOUT_SECONDS="20",
        AI_WORKER_SWEEP_INTERVAL_SECONDS="0.5",
        AI_WORKER_REQUEUE_AFTER_SECONDS="5",
        # Webhook retries within a test's patience: same schedule shape, tiny numbers.
        CHAT_WEBHOOKS_BACKOFF_BASE_SECONDS="0.05",
        CHAT_WEBHOOKS_BACKOFF_MAX_SECONDS="0.3",
        CHAT_WEBHOOKS_MAX_ATTEMPTS="4",
        # Not less: on a loaded 2-core CI machine the test's receiver (in the pytest process) has
        # answered past 1 s, and that attempt counted as a timeout (one attempt more than asked).
        CHAT_WEBHOOKS_TIMEOUT_SECONDS="3",
        CHAT_WEBHOOKS_POLL_SECONDS="0.05",
        CHAT_WEBHOOKS_CONCURRENCY="2",
        # A killed aggregator's pending events are taken over after 1 s instead of 30 s.
        ANALYTICS_AGGREGATOR_CLAIM_IDLE_MS="1000",
    )
    assign_ports(env, SERVICES, free=True)
    run_migrations(env, log_dir)

    running = Stack(
        gateway_url="",
        chat_url="",
        analytics_url="",
        database_url=env["DATABASE_URL"],
        redis_url=redis.url,
        redis_prefix=env["REDIS_PREFIX"],
        jwt_secret=env["JWT_SECRET"],
        admin_email=env["ADMIN_EMAIL"],
        admin_password=env["ADMIN_PASSWORD"],
        env=env,
        log_dir=log_dir,
        llm=llm,
    )
    cleanup.callback(_stop_and_keep_tails, config, running)
    running.services = start_services(SERVICES, env, log_dir)
    wait_services(running.services, ready=True)
    urls = {service.name: service.url or "" for service in running.services}
    running.gateway_url = urls["gateway"]
    running.chat_url = urls["chat"]
    running.analytics_url = urls["analytics"]
    return running


def _delete_keys(redis: RedisHandle, prefix: str) -> None:
    """Leave a shared Redis as we found it: drop this run's keys."""
    with redis.client() as client:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                client.unlink(*batch)
                batch.clear()
        if batch:
            client.unlink(*batch)


def _stop_and_keep_tails(config: pytest.Config, running: Stack) -> None:
    for process in reversed(running.extra):
        process.stop()
    stop_services(running.services)
    config.stash[_LOG_TAILS] = {p.name: p.tail() for p in running.processes()}


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    """On a failed run, show the end of every service's log."""
    tails = config.stash.get(_LOG_TAILS, None)
    if exitstatus == 0 or not tails:
        return
    log_dir = config.stash.get(_LOG_DIR, None)
    terminalreporter.section("service logs (last lines)")
    for name, tail in tails.items():
        terminalreporter.write_line(f"--- {name} ({log_dir}/{name}.log) ---", bold=True)
        terminalreporter.write_line(tail or "(no output)")


@pytest.fixture
def http(stack: Stack) -> Iterator[httpx.Client]:
    """An HTTP client on the gateway."""
    with client(stack.gateway_url) as gateway:
        yield gateway


@pytest.fixture
def new_user(stack: Stack) -> Iterator[Callable[..., User]]:
    """A factory of fresh accounts: `new_user()` registers and logs in a unique user."""
    with client(stack.gateway_url) as gateway:

        def make(
            *, email: str | None = None, password: str | None = None, name: str | None = None
        ) -> User:
            suffix = secrets.token_hex(6)
            email = email or f"user-{suffix}@example.com"
            password = password or f"Pw-{secrets.token_urlsafe(12)}-9a"
            name = name or f"User {suffix}"
            body = {"email": email, "password": password, "name": name}
            envelope_data(gateway.post("/auth/register", json=body), "register")
            return log_in(gateway, email, password)

        yield make


@pytest.fixture
def admin(stack: Stack) -> User:
    """The admin account the gateway created at start, logged in."""
    with client(stack.gateway_url) as gateway:
        return log_in(gateway, stack.admin_email, stack.admin_password)
