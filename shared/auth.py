"""FastAPI dependencies that turn a bearer token into the caller (`CurrentUser`, `AdminUser`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from shared.errors import Forbidden
from shared.tokens import Principal, TokenVerifier, bearer_token


class BearerPrincipal(HTTPBearer):
    """The verified caller of a request. One dependency on the hot path (reading the header and
    checking the token), while the OpenAPI document still shows the HTTP bearer scheme."""

    async def __call__(self, request: Request) -> Principal:  # type: ignore[override]
        verifier: TokenVerifier = request.app.state.token_verifier
        return verifier.verify(bearer_token(request.headers.get("authorization")))


current_user = BearerPrincipal(
    auto_error=False, scheme_name="HTTPBearer", description="The access token from POST /auth/login"
)


async def admin_user(user: Annotated[Principal, Depends(current_user)]) -> Principal:
    if not user.is_admin:
        raise Forbidden("Administrator role required")
    return user


CurrentUser = Annotated[Principal, Depends(current_user)]
AdminUser = Annotated[Principal, Depends(admin_user)]
