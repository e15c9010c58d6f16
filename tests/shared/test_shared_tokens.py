"""shared/tokens.py: the verifier's cache (hits, expiry, bound) and the claims it accepts."""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime
from typing import Any

import jwt
import jwt.api_jwt
import pytest

import shared.tokens
from shared.errors import Unauthorized
from shared.settings import JWTSettings
from shared.tokens import Principal, TokenVerifier, bearer_token, principal_from_claims

SECRET = secrets.token_urlsafe(48)
LEEWAY = 10


class Clock:
    """One fake "now" for both the verifier's cache and pyjwt's claim checks."""

    def __init__(self) -> None:
        self.now = time.time()

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()

    class FakeTime:
        @staticmethod
        def time() -> float:
            return fake.now

    class FakeDatetime(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
            return datetime.fromtimestamp(fake.now, tz or UTC)

    monkeypatch.setattr(shared.tokens, "time", FakeTime)
    monkeypatch.setattr(jwt.api_jwt, "datetime", FakeDatetime)
    return fake


def _settings(**overrides: Any) -> JWTSettings:
    return JWTSettings(secret=SECRET, leeway_seconds=LEEWAY, **overrides)


def _token(now: float, ttl: int = 60, **claims: Any) -> str:
    body = {
        "sub": "42",
        "role": "user",
        "iss": "chat-platform",
        "aud": "chat-platform-api",
        "iat": int(now),
        "exp": int(now) + ttl,
        "jti": secrets.token_hex(8),
        **claims,
    }
    return jwt.encode(body, SECRET, algorithm="HS256")


class CountingVerifier(TokenVerifier):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.decoded = 0

    def _decode(self, token: str) -> Principal:
        self.decoded += 1
        return super()._decode(token)


def test_verify_returns_the_principal(clock: Clock) -> None:
    verifier = TokenVerifier(_settings())
    token = _token(clock.now, role="admin")
    principal = verifier.verify(token)
    assert principal.user_id == 42
    assert principal.role == "admin" and principal.is_admin
    assert principal.expires_at == int(clock.now) + 60
    assert principal.token_id


def test_a_verified_token_is_served_from_the_cache(clock: Clock) -> None:
    verifier = CountingVerifier(_settings())
    token = _token(clock.now)
    first = verifier.verify(token)
    second = verifier.verify(token)
    assert first == second
    assert verifier.decoded == 1


def test_a_cached_token_stays_valid_within_the_leeway(clock: Clock) -> None:
    verifier = CountingVerifier(_settings())
    token = _token(clock.now, ttl=60)
    verifier.verify(token)
    clock.now += 60 + LEEWAY - 1
    assert verifier.verify(token).user_id == 42
    assert verifier.decoded == 1


def test_the_cache_never_serves_an_expired_token(clock: Clock) -> None:
    verifier = CountingVerifier(_settings())
    token = _token(clock.now, ttl=60)
    verifier.verify(token)
    clock.now += 60 + LEEWAY + 1
    with pytest.raises(Unauthorized) as raised:
        verifier.verify(token)
    assert "expired" in raised.value.message.lower()
    assert verifier.decoded == 2, "the expired entry must be checked again, not served"
    with pytest.raises(Unauthorized):
        verifier.verify(token)


def test_the_cache_is_bounded_least_recently_used_first(clock: Clock) -> None:
    verifier = CountingVerifier(_settings(), cache_size=2)
    a, b, c = (_token(clock.now) for _ in range(3))
    verifier.verify(a)
    verifier.verify(b)
    verifier.verify(a)  # a is now the most recently used
    verifier.verify(c)  # evicts b
    assert verifier.decoded == 3
    verifier.verify(a)
    assert verifier.decoded == 3
    verifier.verify(b)
    assert verifier.decoded == 4


def test_rejected_tokens_are_not_cached(clock: Clock) -> None:
    verifier = CountingVerifier(_settings())
    bad = _token(clock.now, aud="someone-else")
    for _ in range(2):
        with pytest.raises(Unauthorized):
            verifier.verify(bad)
    assert verifier.decoded == 2


@pytest.mark.parametrize(
    "claims",
    [{"sub": "abc"}, {"sub": ""}, {"sub": "1.5"}, {"sub": None}, {"sub": [1]}],
    ids=["letters", "empty", "decimal", "none", "list"],
)
def test_principal_from_claims_rejects_a_bad_subject(claims: dict[str, Any]) -> None:
    with pytest.raises(Unauthorized):
        principal_from_claims({"exp": 2_000_000_000, **claims})


@pytest.mark.parametrize("role", ["superuser", "ADMIN", "", None, 1])
def test_principal_from_claims_rejects_an_unknown_role(role: Any) -> None:
    with pytest.raises(Unauthorized):
        principal_from_claims({"sub": "7", "role": role, "exp": 2_000_000_000})


def test_principal_from_claims_defaults_to_the_user_role() -> None:
    principal = principal_from_claims({"sub": "7", "exp": 2_000_000_000})
    assert principal == Principal(user_id=7, role="user", token_id=None, expires_at=2_000_000_000)
    assert not principal.is_admin


def test_principal_from_claims_reads_an_admin() -> None:
    principal = principal_from_claims(
        {"sub": "7", "role": "admin", "jti": "abc", "exp": 2_000_000_000}
    )
    assert principal.is_admin and principal.token_id == "abc"


@pytest.mark.parametrize(
    ("header", "token"),
    [("Bearer abc.def.ghi", "abc.def.ghi"), ("bearer xyz", "xyz"), ("BEARER  xyz ", "xyz")],
)
def test_bearer_token_reads_the_token(header: str, token: str) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic abc", "Token abc"])
def test_bearer_token_refuses_other_headers(header: str | None) -> None:
    with pytest.raises(Unauthorized) as raised:
        bearer_token(header)
    assert raised.value.headers.get("WWW-Authenticate") == "Bearer"


@pytest.mark.parametrize(
    "secret",
    [None, "", "x" * 31, "é" * 15],  # "é" * 15 is 30 bytes though 15 characters
    ids=["none", "empty", "31-bytes", "15-chars-30-bytes"],
)
def test_settings_refuse_a_weak_hs256_secret(secret: str | None) -> None:
    with pytest.raises(ValueError, match="JWT_SECRET"):
        JWTSettings(secret=secret)


def test_settings_accept_a_32_byte_secret() -> None:
    assert JWTSettings(secret="x" * 32).algorithm == "HS256"
    assert JWTSettings(secret="é" * 16).secret == "é" * 16  # 32 bytes


def test_settings_pin_the_algorithm() -> None:
    with pytest.raises(ValueError):
        JWTSettings(secret="x" * 48, algorithm="none")
    with pytest.raises(ValueError):
        JWTSettings(secret="x" * 48, algorithm="HS512")
    with pytest.raises(ValueError, match="JWT_JWKS_URL"):
        JWTSettings(algorithm="RS256")
