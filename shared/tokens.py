"""Verifying the platform's JWTs (RFC 8725): pinned algorithm, required registered claims,
cached checks.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

import jwt

from shared.errors import Unauthorized
from shared.settings import JWTSettings

Role = Literal["user", "admin"]
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "sub")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as the verified token says."""

    user_id: int
    role: Role
    token_id: str | None
    expires_at: int

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class TokenVerifier:
    """Checks bearer tokens; the same token is verified once and then served from a small LRU.

    Caching is safe because a token is immutable and the cache entry expires with the token; it
    saves the HMAC and JSON work on every request of a busy client.
    """

    def __init__(self, settings: JWTSettings, *, cache_size: int = 10_000) -> None:
        self._settings = settings
        self._cache: OrderedDict[str, Principal] = OrderedDict()
        self._cache_size = cache_size
        self._jwks: jwt.PyJWKClient | None = None
        if settings.algorithm == "RS256":
            assert settings.jwks_url is not None
            self._jwks = jwt.PyJWKClient(settings.jwks_url, cache_keys=True, lifespan=300)

    def verify(self, token: str) -> Principal:
        now = time.time()
        cached = self._cache.get(token)
        if cached is not None:
            if cached.expires_at + self._settings.leeway_seconds > now:
                self._cache.move_to_end(token)
                return cached
            del self._cache[token]
        principal = self._decode(token)
        self._cache[token] = principal
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return principal

    def _decode(self, token: str) -> Principal:
        s = self._settings
        try:
            key: Any = s.secret
            if self._jwks is not None:
                key = self._jwks.get_signing_key_from_jwt(token).key
            claims = jwt.decode(
                token,
                key,
                algorithms=[s.algorithm],
                audience=s.audience,
                issuer=s.issuer,
                leeway=s.leeway_seconds,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("Token has expired") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized("Invalid token") from exc
        return principal_from_claims(claims)


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    try:
        user_id = int(claims["sub"])
    except (TypeError, ValueError) as exc:
        raise Unauthorized("Invalid token subject") from exc
    role = claims.get("role", "user")
    if role not in ("user", "admin"):
        raise Unauthorized("Invalid token role")
    jti = claims.get("jti")
    return Principal(
        user_id=user_id,
        role=role,
        token_id=str(jti) if jti is not None else None,
        expires_at=int(claims["exp"]),
    )


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header, or a 401."""
    if not authorization:
        raise Unauthorized("Missing bearer token")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization header must be 'Bearer <token>'")
    return token.strip()
