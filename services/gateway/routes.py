"""The gateway's own routes: accounts and tokens under /auth."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.security import OAuth2PasswordBearer
from starlette.responses import JSONResponse, Response

from services.gateway.ratelimit import RateLimiter
from services.gateway.schemas import LoginRequest, RegisterRequest, TokenData, UserPublic
from services.gateway.service import user_service
from shared.auth import current_user
from shared.envelope import ok
from shared.errors import RateLimited, ValidationFailed
from shared.schemas import Envelope, error_responses
from shared.tokens import Principal

router = APIRouter(prefix="/auth", tags=["auth"])


async def limit_auth_attempts(request: Request) -> None:
    """Per client address: slows password guessing and sign-up floods."""
    limiter: RateLimiter = request.app.state.auth_limiter
    client = request.client.host if request.client else "unknown"
    decision = await limiter.hit(f"ip:{client}")
    if not decision.allowed:
        raise RateLimited(
            f"Too many attempts; retry in {decision.retry_after_seconds} s",
            headers=decision.headers(),
        )


AuthAttempt = [Depends(limit_auth_attempts)]

# Declares the OAuth2 password flow on /auth/token, which gives the docs page its Authorize button.
oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/auth/token", auto_error=False)


@router.post(
    "/register",
    status_code=201,
    response_model=Envelope[UserPublic],
    responses=error_responses(409, 422, 429),
    dependencies=AuthAttempt,
)
async def register(body: RegisterRequest, request: Request) -> Response:
    """Create an account."""
    user = await user_service.register(request.app.state.pool, body)
    return ok(user, "User registered successfully", status_code=201)


@router.post(
    "/login",
    response_model=Envelope[TokenData],
    responses=error_responses(401, 422, 429),
    dependencies=AuthAttempt,
)
async def login(body: LoginRequest, request: Request) -> Response:
    """Exchange e-mail and password for an access token."""
    data = await user_service.login(request.app.state.pool, request.app.state.jwt_settings, body)
    return ok(data, "Login successful")


@router.post("/token", responses=error_responses(401, 422, 429), dependencies=AuthAttempt)
async def token(
    request: Request,
    username: Annotated[str, Form(description="The account's e-mail")],
    password: Annotated[str, Form()],
) -> Response:
    """OAuth2 password flow (form fields `username`, `password`), for the docs page's Authorize."""
    try:
        body = LoginRequest(email=username, password=password)
    except ValueError as exc:
        raise ValidationFailed("username must be an e-mail address") from exc
    data = await user_service.login(request.app.state.pool, request.app.state.jwt_settings, body)
    # RFC 6749 §5.1: a bare token response (plus our fields), not the envelope, for OAuth2 clients.
    body_out: dict[str, Any] = {
        "access_token": data["access_token"],
        "token_type": "bearer",
        "expires_in": data["expires_in"],
    }
    return JSONResponse(body_out, headers={"Cache-Control": "no-store"})


@router.get("/me", response_model=Envelope[UserPublic], responses=error_responses(401, 404))
async def me(
    request: Request,
    principal: Annotated[Principal, Depends(current_user)],
    _: Annotated[str | None, Depends(oauth2_scheme)] = None,
) -> Response:
    """The caller's account."""
    return ok(await user_service.me(request.app.state.pool, principal), "Current user")
