"""Cross-origin browser access: allowed only for the origins GATEWAY_CORS_ORIGINS names."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.harness import Stack, User

APP_ORIGIN = "https://app.example.com"


@pytest.fixture(scope="module")
def cors_gateway(stack: Stack) -> str:
    return stack.start_gateway(GATEWAY_CORS_ORIGINS=f"{APP_ORIGIN}, https://admin.example.com")


def test_preflight_from_an_allowed_origin_is_answered(cors_gateway: str) -> None:
    response = httpx.options(
        f"{cors_gateway}/chat/conversations",
        headers={
            "Origin": APP_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "idempotency-key" in response.headers["access-control-allow-headers"].lower()


def test_actual_request_exposes_the_headers_a_client_needs(
    cors_gateway: str, new_user: Callable[..., User]
) -> None:
    user = new_user()
    response = httpx.get(
        f"{cors_gateway}/chat/conversations", headers={**user.headers, "Origin": APP_ORIGIN}
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == APP_ORIGIN
    exposed = response.headers["access-control-expose-headers"].lower()
    assert "x-request-id" in exposed and "retry-after" in exposed


def test_other_origins_get_no_cors_grant(cors_gateway: str) -> None:
    response = httpx.options(
        f"{cors_gateway}/chat/conversations",
        headers={"Origin": "https://evil.example.net", "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in response.headers


def test_default_gateway_grants_no_origin(stack: Stack) -> None:
    response = httpx.options(
        f"{stack.gateway_url}/chat/conversations",
        headers={"Origin": APP_ORIGIN, "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in response.headers
