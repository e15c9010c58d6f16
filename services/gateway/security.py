"""Password hashing (Argon2id) and access-token issuing; only the gateway holds the signing key."""

from __future__ import annotations

import time
import uuid

import anyio.to_thread
import jwt
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from shared.settings import JWTSettings

_hasher = PasswordHash((Argon2Hasher(),))
# Verified against when the e-mail is unknown, so a login takes as long either way and does
# not reveal which addresses have accounts.
_DUMMY_HASH = _hasher.hash("dummy password for timing equalisation")


async def hash_password(password: str) -> str:
    # Argon2 costs tens of milliseconds of CPU: off the event loop.
    return await anyio.to_thread.run_sync(_hasher.hash, password)


async def verify_password(password: str, password_hash: str | None) -> tuple[bool, str | None]:
    """(valid, new hash when the stored one uses outdated parameters)."""
    target = password_hash or _DUMMY_HASH
    valid, updated = await anyio.to_thread.run_sync(_hasher.verify_and_update, password, target)
    if password_hash is None:
        return False, None
    return bool(valid), updated


def issue_access_token(settings: JWTSettings, *, user_id: int, role: str) -> tuple[str, int]:
    if settings.algorithm != "HS256" or settings.secret is None:
        raise RuntimeError("tokens are issued by the external identity provider in RS256 mode")
    now = int(time.time())
    ttl = settings.access_token_ttl_seconds
    claims = {
        "sub": str(user_id),
        "role": role,
        "iss": settings.issuer,
        "aud": settings.audience,
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, settings.secret, algorithm="HS256"), ttl
