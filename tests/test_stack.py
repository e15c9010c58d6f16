"""The test harness itself: every service is up, the gateway is ready, extra gateways start."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.harness import Stack, User


@pytest.mark.parametrize("service", ["gateway", "chat", "analytics"])
def test_service_is_alive(stack: Stack, service: str) -> None:
    url = getattr(stack, f"{service}_url")
    response = httpx.get(f"{url}/healthz", timeout=10, trust_env=False)
    assert response.status_code == 200, response.text


def test_gateway_is_ready(http: httpx.Client) -> None:
    response = http.get("/readyz")
    assert response.status_code == 200, response.text


def test_new_user_and_admin_are_logged_in(
    http: httpx.Client, new_user: Callable[..., User], admin: User
) -> None:
    first, second = new_user(), new_user()
    assert first.id != second.id
    for user, role in ((first, "user"), (second, "user"), (admin, "admin")):
        response = http.get("/auth/me", headers=user.headers)
        assert response.status_code == 200, response.text
        assert response.json()["data"]["role"] == role


def test_extra_gateway_runs_with_overridden_env(stack: Stack) -> None:
    url = stack.start_gateway(GATEWAY_RATE_LIMIT_PER_MINUTE="5")
    assert url != stack.gateway_url
    response = httpx.get(f"{url}/readyz", timeout=10, trust_env=False)
    assert response.status_code == 200, response.text
