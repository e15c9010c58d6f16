"""Rate limits: per user on every proxied request (GCRA in Redis), and per client address on the
password endpoints; both answer 429 in the envelope with Retry-After and X-RateLimit-*."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.gateway.support import assert_error_envelope, client_from_new_address
from tests.harness import HTTP_TIMEOUT, Stack, User

BURST = 3


@pytest.fixture(scope="module")
def limited_gateway(stack: Stack) -> str:
    """A gateway allowing each user 3 requests at once, then one a second."""
    return stack.start_gateway(
        GATEWAY_RATE_LIMIT_PER_MINUTE="60", GATEWAY_RATE_LIMIT_BURST=str(BURST)
    )


@pytest.fixture
def limited(limited_gateway: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=limited_gateway, timeout=HTTP_TIMEOUT, trust_env=False) as client:
        yield client


def _int_header(response: httpx.Response, name: str) -> int:
    value = response.headers.get(name)
    assert value is not None, f"missing {name}: {dict(response.headers)}"
    assert value.strip().isdigit(), f"{name}: {value!r}"
    return int(value)


def test_user_over_the_burst_gets_429_with_retry_after(
    limited: httpx.Client, new_user: Callable[..., User]
) -> None:
    user = new_user()
    responses = [limited.get("/chat/conversations", headers=user.headers) for _ in range(BURST)]
    for response in responses:
        assert response.status_code == 200, response.text
        assert _int_header(response, "X-RateLimit-Limit") == BURST
    remaining = [_int_header(r, "X-RateLimit-Remaining") for r in responses]
    assert remaining == sorted(remaining, reverse=True) and len(set(remaining)) == BURST, remaining
    assert remaining[-1] == 0, remaining

    limited_response = limited.get("/chat/conversations", headers=user.headers)
    body = assert_error_envelope(limited_response, 429, "rate_limited")
    assert body["message"]
    assert _int_header(limited_response, "Retry-After") >= 1
    assert _int_header(limited_response, "X-RateLimit-Limit") == BURST
    assert _int_header(limited_response, "X-RateLimit-Remaining") == 0


def test_a_limited_user_does_not_limit_another_user(
    limited: httpx.Client, new_user: Callable[..., User]
) -> None:
    noisy, quiet = new_user(), new_user()
    statuses = [
        limited.get("/chat/conversations", headers=noisy.headers).status_code
        for _ in range(BURST + 2)
    ]
    assert 429 in statuses, statuses
    response = limited.get("/chat/conversations", headers=quiet.headers)
    assert response.status_code == 200, response.text
    assert _int_header(response, "X-RateLimit-Remaining") == BURST - 1


def test_limit_applies_to_every_proxied_route_and_method(
    limited: httpx.Client, new_user: Callable[..., User]
) -> None:
    """One budget per user, whatever the route: reads and writes draw from it alike."""
    user = new_user()
    first = limited.post("/chat/conversations", json={"title": "one"}, headers=user.headers)
    assert first.status_code == 201, first.text
    assert limited.get("/chat/agents", headers=user.headers).status_code == 200
    search = limited.get("/chat/search", params={"query": "x"}, headers=user.headers)
    assert search.status_code == 200, search.text
    fourth = limited.post("/chat/conversations", json={"title": "two"}, headers=user.headers)
    assert_error_envelope(fourth, 429, "rate_limited")


def test_rejected_tokens_do_not_spend_a_users_budget(
    limited: httpx.Client, new_user: Callable[..., User]
) -> None:
    """The token is checked before the limit: garbage tokens are 401, and never 429."""
    user = new_user()
    for _ in range(BURST + 2):
        response = limited.get("/chat/conversations", headers={"Authorization": "Bearer junk"})
        assert_error_envelope(response, 401, "unauthorized")
    assert limited.get("/chat/conversations", headers=user.headers).status_code == 200


@pytest.fixture(scope="module")
def auth_limited_gateway(stack: Stack) -> str:
    """A gateway allowing each client address 2 password attempts, then one a minute."""
    return stack.start_gateway(
        GATEWAY_AUTH_RATE_LIMIT_PER_MINUTE="1", GATEWAY_AUTH_RATE_LIMIT_BURST="2"
    )


def test_login_attempts_per_address_are_limited(auth_limited_gateway: str) -> None:
    email = f"nobody-{secrets.token_hex(6)}@example.com"
    attempt = {"email": email, "password": "wrong-password-1"}
    with client_from_new_address(auth_limited_gateway) as client:
        for _ in range(2):
            assert_error_envelope(client.post("/auth/login", json=attempt), 401, "unauthorized")
        response = client.post("/auth/login", json=attempt)
        assert_error_envelope(response, 429, "rate_limited")
        assert _int_header(response, "Retry-After") >= 1
        # The budget is per address across the password endpoints, not per route.
        token = client.post("/auth/token", data={"username": email, "password": "x"})
        assert_error_envelope(token, 429, "rate_limited")
        register = client.post(
            "/auth/register",
            json={"email": email, "password": "long-enough-1", "name": "Flood"},
        )
        assert_error_envelope(register, 429, "rate_limited")

    # Another address still gets its own attempts.
    with client_from_new_address(auth_limited_gateway) as other:
        assert_error_envelope(other.post("/auth/login", json=attempt), 401, "unauthorized")
