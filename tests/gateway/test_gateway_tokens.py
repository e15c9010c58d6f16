"""RFC 8725 token checks, end to end: every malformed, forged, expired or mis-addressed token is
a 401 envelope with a Bearer challenge, on the gateway's own route (/auth/me), on a route it
proxies (/chat/conversations), and on the chat service's own port (it checks tokens itself)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

import httpx
import jwt
import pytest

from tests.gateway.support import (
    assert_error_envelope,
    hs256_signed_with_header,
    mint,
    register_and_log_in,
    unsigned_token,
)
from tests.harness import HTTP_TIMEOUT, Stack, User

# (name, builds the Authorization header value or None for no header)
HeaderFactory = Callable[[str, int], str | None]
_OTHER_SECRET = secrets.token_urlsafe(48)


def _bearer(token: str) -> str:
    return f"Bearer {token}"


def _expired(secret: str, sub: int) -> str:
    now = int(time.time())
    # Well past the verifier's leeway (10 s by default).
    return _bearer(mint(secret, sub, iat=now - 7200, nbf=now - 7200, exp=now - 3600))


def _not_yet_valid(secret: str, sub: int) -> str:
    now = int(time.time())
    return _bearer(mint(secret, sub, nbf=now + 3600, exp=now + 7200))


BAD_AUTHORIZATION: dict[str, HeaderFactory] = {
    "missing-header": lambda secret, sub: None,
    "basic-scheme": lambda secret, sub: "Basic x",
    "basic-scheme-with-valid-token": lambda secret, sub: f"Basic {mint(secret, sub)}",
    "bearer-alone": lambda secret, sub: "Bearer",
    "token-without-scheme": lambda secret, sub: mint(secret, sub),
    "garbage": lambda secret, sub: "Bearer garbage",
    "garbage-three-segments": lambda secret, sub: "Bearer aaa.bbb.ccc",
    "expired": _expired,
    "not-yet-valid": _not_yet_valid,
    "forged-other-secret": lambda secret, sub: _bearer(mint(_OTHER_SECRET, sub)),
    "wrong-audience": lambda secret, sub: _bearer(mint(secret, sub, aud="another-api")),
    "wrong-issuer": lambda secret, sub: _bearer(mint(secret, sub, iss="someone-else")),
    "missing-exp": lambda secret, sub: _bearer(mint(secret, sub, exp=...)),
    "missing-iat": lambda secret, sub: _bearer(mint(secret, sub, iat=...)),
    "missing-iss": lambda secret, sub: _bearer(mint(secret, sub, iss=...)),
    "missing-aud": lambda secret, sub: _bearer(mint(secret, sub, aud=...)),
    "missing-sub": lambda secret, sub: _bearer(mint(secret, sub, sub=...)),
    "non-numeric-sub": lambda secret, sub: _bearer(mint(secret, "abc")),
    "unknown-role": lambda secret, sub: _bearer(mint(secret, sub, role="superuser")),
    "alg-none": lambda secret, sub: _bearer(unsigned_token(sub)),
    "alg-none-with-signature": lambda secret, sub: _bearer(
        unsigned_token(sub) + mint(secret, sub).rsplit(".", 1)[1]
    ),
    "header-rs256-hmac-signed": lambda secret, sub: _bearer(
        hs256_signed_with_header(secret, "RS256", sub)
    ),
    "header-hs512-hs256-signed": lambda secret, sub: _bearer(
        hs256_signed_with_header(secret, "HS512", sub)
    ),
    "hs512-signed-with-the-secret": lambda secret, sub: _bearer(
        mint(secret, sub, algorithm="HS512")
    ),
    "tampered-payload": lambda secret, sub: _bearer(_tampered(secret, sub)),
}


def _tampered(secret: str, sub: int) -> str:
    """A valid user token whose payload was swapped for an admin one, signature kept."""
    header, _, signature = mint(secret, sub).split(".")
    _, admin_payload, _ = mint(_OTHER_SECRET, sub, role="admin").split(".")
    return f"{header}.{admin_payload}.{signature}"


TARGETS = {
    "gateway-own-route": ("gateway_url", "/auth/me"),
    "gateway-proxied-route": ("gateway_url", "/chat/conversations"),
    "chat-service-directly": ("chat_url", "/chat/conversations"),
}


@pytest.fixture(scope="module")
def token_user(stack: Stack) -> User:
    """One account for the module (its id makes the otherwise-valid tokens real)."""
    return register_and_log_in(stack.gateway_url, "tokens")


def _get(stack: Stack, target: str, authorization: str | None) -> httpx.Response:
    base_attr, path = TARGETS[target]
    headers = {} if authorization is None else {"Authorization": authorization}
    with httpx.Client(
        base_url=getattr(stack, base_attr), timeout=HTTP_TIMEOUT, trust_env=False
    ) as client:
        return client.get(path, headers=headers)


@pytest.mark.parametrize("target", list(TARGETS))
def test_a_valid_minted_token_is_accepted(stack: Stack, token_user: User, target: str) -> None:
    """The control: tokens built the way the bad ones are, but correct, work everywhere."""
    response = _get(stack, target, _bearer(mint(stack.jwt_secret, token_user.id)))
    assert response.status_code == 200, response.text
    assert response.json()["success"] is True


@pytest.mark.parametrize("target", list(TARGETS))
def test_the_issued_token_is_accepted(stack: Stack, token_user: User, target: str) -> None:
    response = _get(stack, target, _bearer(token_user.token))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("case", list(BAD_AUTHORIZATION))
def test_bad_authorization_is_401_envelope_with_bearer_challenge(
    stack: Stack, token_user: User, target: str, case: str
) -> None:
    authorization = BAD_AUTHORIZATION[case](stack.jwt_secret, token_user.id)
    response = _get(stack, target, authorization)
    assert_error_envelope(response, 401, "unauthorized")
    challenge = response.headers.get("www-authenticate")
    assert challenge is not None and challenge.split()[0] == "Bearer", response.headers


def test_admin_role_claim_in_a_forged_token_does_not_pass(stack: Stack, token_user: User) -> None:
    """Signed with another key, an admin claim is still just an invalid token."""
    forged = mint(_OTHER_SECRET, token_user.id, role="admin")
    response = _get(stack, "gateway-proxied-route", _bearer(forged))
    assert_error_envelope(response, 401, "unauthorized")


def test_expired_token_message_says_expired(stack: Stack, token_user: User) -> None:
    response = _get(stack, "gateway-own-route", _expired(stack.jwt_secret, token_user.id))
    body = assert_error_envelope(response, 401, "unauthorized")
    assert "expired" in body["message"].lower(), body


def test_token_checks_do_not_depend_on_pyjwt_defaults(stack: Stack, token_user: User) -> None:
    """A token that pyjwt itself would accept without options (no aud/iss check) is refused."""
    token = jwt.encode({"sub": str(token_user.id), "exp": int(time.time()) + 600}, stack.jwt_secret)
    response = _get(stack, "gateway-proxied-route", _bearer(token))
    assert_error_envelope(response, 401, "unauthorized")
