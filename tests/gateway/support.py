"""Helpers of the gateway tests: envelope assertions, hand-made tokens, per-address clients,
waiting on a condition with a deadline."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt

from tests.harness import HTTP_TIMEOUT, User, envelope_data, log_in

ISSUER = "chat-platform"
AUDIENCE = "chat-platform-api"

# Each client of `client_from_new_address` connects from its own loopback address (127.x.y.z is
# all loopback on Linux), so its per-IP auth rate-limit bucket is its own: the tests that log in
# many times neither exhaust nor depend on the budget of 127.0.0.1, which the harness uses.
_ADDRESSES = itertools.count(1)


def new_loopback_address() -> str:
    n = next(_ADDRESSES)
    return f"127.77.{(n // 250) % 250}.{n % 250 + 1}"


def client_from_new_address(base_url: str, **kwargs: Any) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=new_loopback_address())
    kwargs.setdefault("timeout", HTTP_TIMEOUT)
    return httpx.Client(base_url=base_url, transport=transport, trust_env=False, **kwargs)


def register_and_log_in(base_url: str, label: str = "gw") -> User:
    """A new account, signed up and logged in from an address of its own."""
    suffix = secrets.token_hex(6)
    email = f"{label}-{suffix}@example.com"
    password = f"Pw-{secrets.token_urlsafe(12)}-9a"
    with client_from_new_address(base_url) as gateway:
        body = {"email": email, "password": password, "name": f"{label} {suffix}"}
        envelope_data(gateway.post("/auth/register", json=body), "register")
        return log_in(gateway, email, password)


def assert_error_envelope(
    response: httpx.Response, status: int, code: str | None = None
) -> dict[str, Any]:
    """The response is the platform's error envelope with `status` (and `code`); returns it."""
    assert response.status_code == status, (
        f"expected HTTP {status}, got {response.status_code}: {response.text[:500]}"
    )
    content_type = response.headers.get("content-type", "")
    assert content_type.startswith("application/json"), (
        f"error body is not JSON ({content_type!r}): {response.text[:500]}"
    )
    body = response.json()
    assert isinstance(body, dict), body
    assert "detail" not in body, f"bare framework error body: {body}"
    assert body.get("success") is False, body
    assert isinstance(body.get("message"), str) and body["message"], body
    assert "data" in body and body["data"] is None, body
    error = body.get("error")
    assert isinstance(error, dict) and isinstance(error.get("code"), str), body
    if code is not None:
        assert error["code"] == code, f"expected error.code {code!r}: {body}"
    return body


def claims_for(sub: Any, /, **overrides: Any) -> dict[str, Any]:
    """A complete, valid claim set; `overrides` replace claims, a value of `...` removes one."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": str(sub),
        "role": "user",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": secrets.token_hex(16),
    }
    for name, value in overrides.items():
        if value is ...:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def mint(secret: str, sub: Any, /, *, algorithm: str = "HS256", **overrides: Any) -> str:
    return jwt.encode(claims_for(sub, **overrides), secret, algorithm=algorithm)


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _segment(value: dict[str, Any]) -> str:
    return _b64url(json.dumps(value, separators=(",", ":")).encode())


def unsigned_token(sub: Any, /, **overrides: Any) -> str:
    """`alg: none` (RFC 7519 §6): header and payload, empty signature."""
    return f"{_segment({'alg': 'none', 'typ': 'JWT'})}.{_segment(claims_for(sub, **overrides))}."


def hs256_signed_with_header(secret: str, header_alg: str, sub: Any) -> str:
    """A token signed with HMAC-SHA256 and the real secret whose header claims another alg."""
    signing_input = f"{_segment({'alg': header_alg, 'typ': 'JWT'})}.{_segment(claims_for(sub))}"
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(signature)}"


def wait_for(
    condition: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Poll `condition` until it returns something truthy, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(min(interval, remaining))


_CONCRETE_ID = re.compile(r"/\d+(/|$)")


def has_concrete_id(label_value: str) -> bool:
    return bool(_CONCRETE_ID.search(label_value))
