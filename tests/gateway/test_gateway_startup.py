"""A service refuses to start without a strong signing key (no guessable default, 32+ bytes)."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from deploy.local.processes import Deadline, ManagedProcess, free_port
from deploy.local.stack import ROOT
from tests.harness import HTTP_TIMEOUT, Stack

# Seconds a service may take to fail at start (imports included) or to answer its health check.
START_DEADLINE = 60.0

PORT_ENV = {"gateway": "GATEWAY_PORT", "chat": "CHAT_PORT", "analytics": "ANALYTICS_PORT"}
WEAK_SECRETS = {"unset": None, "empty": "", "31-bytes": "s" * 31}


def _start(
    stack: Stack, tmp_path: Path, service: str, secret: str | None
) -> tuple[ManagedProcess, int, Path]:
    """`python -m services.<service>` on a free port with the stack's env but this JWT_SECRET."""
    env = {k: v for k, v in stack.env.items() if not k.startswith("JWT_")}
    if secret is not None:
        env["JWT_SECRET"] = secret
    port = free_port()
    env[PORT_ENV[service]] = str(port)
    log_path = tmp_path / f"{service}.log"
    process = ManagedProcess(
        f"{service}-secret-check",
        [sys.executable, "-m", f"services.{service}"],
        log_path=log_path,
        env=env,
        cwd=ROOT,
    )
    return process, port, log_path


@pytest.mark.parametrize("secret", list(WEAK_SECRETS))
@pytest.mark.parametrize("service", list(PORT_ENV))
def test_service_refuses_to_start_with_a_weak_or_missing_secret(
    stack: Stack, tmp_path: Path, service: str, secret: str
) -> None:
    process, _, log_path = _start(stack, tmp_path, service, WEAK_SECRETS[secret])
    # wait_exit stops the process by its PID and fails the test if it is still running then.
    returncode = process.wait_exit(Deadline(START_DEADLINE))
    output = log_path.read_text(errors="replace")
    assert returncode != 0, f"{service} exited 0 with JWT_SECRET {secret}:\n{output[-2000:]}"
    assert "JWT_SECRET" in output, f"{service} did not say why it refused:\n{output[-2000:]}"


@pytest.mark.parametrize("service", list(PORT_ENV))
def test_service_starts_with_a_32_byte_secret(stack: Stack, tmp_path: Path, service: str) -> None:
    """The control: the same start with exactly 32 bytes of secret serves requests."""
    process, port, _ = _start(stack, tmp_path, service, "s" * 32)
    try:
        url = f"http://127.0.0.1:{port}/healthz"
        process.wait_http_ok(url, Deadline(START_DEADLINE))
        response = httpx.get(url, timeout=HTTP_TIMEOUT, trust_env=False)
        assert response.status_code == 200, response.text
    finally:
        process.stop()


@pytest.mark.parametrize("service", ["gateway", "chat"])
def test_a_refused_secret_is_not_written_to_the_log(
    stack: Stack, tmp_path: Path, service: str
) -> None:
    """Key material never reaches the logs, not even a key refused as too short (it may be a real
    key of the wrong length, and logs are shipped to places secrets must not go)."""
    secret = "Weak-Secret-" + "Q7xZ" * 4 + "-ab"  # 31 bytes, easy to spot
    assert len(secret.encode()) == 31
    process, _, log_path = _start(stack, tmp_path, service, secret)
    returncode = process.wait_exit(Deadline(START_DEADLINE))
    output = log_path.read_text(errors="replace")
    assert returncode != 0, output[-2000:]
    assert secret not in output, f"{service} printed the refused JWT_SECRET:\n{output[-1500:]}"
