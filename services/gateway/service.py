"""Accounts: registration, login, the caller's profile and the configured administrator."""

from __future__ import annotations

from typing import Any

import asyncpg
import structlog

from services.gateway import repository as repo
from services.gateway.schemas import LoginRequest, RegisterRequest
from services.gateway.security import (
    hash_password,
    issue_access_token,
    verify_password,
)
from shared.errors import Conflict, NotFound, NotImplementedHere, Unauthorized
from shared.settings import JWTSettings
from shared.tokens import Principal

log = structlog.get_logger(component="accounts")


def public_user(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "email": row["email"],
        "name": row["name"],
        "role": row["role"],
        "created_at": row["created_at"],
    }


class UserService:
    async def register(self, pool: asyncpg.Pool, body: RegisterRequest) -> dict[str, Any]:
        row = await repo.insert_user(
            pool,
            email=body.email.lower(),
            password_hash=await hash_password(body.password),
            name=body.name,
            role="user",
        )
        if row is None:
            raise Conflict("An account with this e-mail already exists")
        log.info("user_registered", user_id=row["id"])
        return public_user(row)

    async def login(
        self, pool: asyncpg.Pool, jwt_settings: JWTSettings, body: LoginRequest
    ) -> dict[str, Any]:
        if jwt_settings.algorithm != "HS256":
            raise NotImplementedHere(
                "Sign-in is handled by the identity provider (JWT_ALGORITHM=RS256)"
            )
        row = await repo.get_user_by_email(pool, body.email.lower())
        valid, new_hash = await verify_password(
            body.password, row["password_hash"] if row is not None else None
        )
        if row is None or not valid or not row["is_active"]:
            raise Unauthorized("Incorrect e-mail or password")
        if new_hash is not None:
            await repo.update_password_hash(pool, user_id=row["id"], password_hash=new_hash)
        token, ttl = issue_access_token(jwt_settings, user_id=row["id"], role=row["role"])
        return {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": ttl,
            "user": public_user(row),
        }

    async def me(self, pool: asyncpg.Pool, principal: Principal) -> dict[str, Any]:
        row = await repo.get_user(pool, principal.user_id)
        if row is None or not row["is_active"]:
            raise NotFound("User not found")
        return public_user(row)

    async def ensure_admin(self, pool: asyncpg.Pool, email: str, password: str) -> None:
        row = await repo.get_user_by_email(pool, email.lower())
        if row is not None and row["role"] == "admin":
            valid, _ = await verify_password(password, row["password_hash"])
            if valid:
                return
        await repo.upsert_admin(
            pool, email=email.lower(), password_hash=await hash_password(password)
        )
        log.info("admin_ensured", email=email.lower())


user_service = UserService()
