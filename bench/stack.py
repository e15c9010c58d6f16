"""The processes of the AI scenarios: the stand-in LLM, chat, analytics, gateway and the AI worker,
each started as in production (`python -m ...`, its defaults, logs to files) on free ports."""

from __future__ import annotations

import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.__main__ import service_env
from bench.dataset import ROOT
from bench.infra import Servers
from bench.procs import Child, Children, free_port

READY_SECONDS = 90.0
SERVICES = ("chat", "analytics", "gateway")


@dataclass(frozen=True)
class AIStack:
    procs: dict[str, Child]
    urls: dict[str, str]  # chat, analytics, gateway, stub, metrics (the worker's)
    env: dict[str, str]  # the services' environment
    secret: str  # the JWT secret the services share


def start_ai_stack(
    children: Children,
    servers: Servers,
    database_url: str,
    redis_prefix: str,
    run_dir: Path,
    *,
    stub_args: Sequence[str] = (),
    workers: int = 1,
) -> AIStack:
    """Starts the stand-in LLM (`tests.support.llm_stub` with `stub_args`), the three services
    and `workers` AI worker processes (`LLM_BASE_URL` at the stub, every other setting its
    default; named ai_worker, ai_worker-2, ...) and waits until each one answers."""
    secret = secrets.token_urlsafe(48)
    env = service_env(servers, database_url, redis_prefix, secret)
    env = {k: v for k, v in env.items() if not k.startswith(("AI_WORKER_", "LLM_"))}
    ports = {name: free_port() for name in (*SERVICES, "stub", "metrics")}
    env["GATEWAY_CHAT_URL"] = f"http://127.0.0.1:{ports['chat']}"
    env["GATEWAY_ANALYTICS_URL"] = f"http://127.0.0.1:{ports['analytics']}"
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    procs: dict[str, Child] = {}
    procs["stub"] = children.start(
        "stub",
        [sys.executable, "-m", "tests.support.llm_stub", "--port", str(ports["stub"]),
         "--max-records", str(100_000), *stub_args],
        log_path=run_dir / "stub.log", env=env, cwd=ROOT,
    )  # fmt: skip
    procs["stub"].wait_http_ok(urls["stub"] + "/health", READY_SECONDS)
    for name in SERVICES:
        procs[name] = children.start(
            name,
            [sys.executable, "-m", f"services.{name}", "--port", str(ports[name])],
            log_path=run_dir / f"{name}.log", env=env, cwd=ROOT,
        )  # fmt: skip
    worker_urls = {}
    for index in range(1, workers + 1):
        name = "ai_worker" if index == 1 else f"ai_worker-{index}"
        port = ports["metrics"] if index == 1 else free_port()
        worker_urls[name] = f"http://127.0.0.1:{port}"
        worker_env = {
            **env,
            "LLM_BASE_URL": f"{urls['stub']}/v1",
            "AI_WORKER_METRICS_PORT": str(port),
        }
        procs[name] = children.start(
            name, [sys.executable, "-m", "services.ai_worker"],
            log_path=run_dir / f"{name}.log", env=worker_env, cwd=ROOT,
        )  # fmt: skip
    for name in SERVICES:
        procs[name].wait_http_ok(urls[name] + "/readyz", READY_SECONDS)
    for name, url in worker_urls.items():
        procs[name].wait_http_ok(url + "/readyz", READY_SECONDS)
    return AIStack(procs, urls, env, secret)
