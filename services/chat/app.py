"""The chat service's ASGI app: conversations, messages, search and agents under /chat."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.chat.routes import router
from services.chat.settings import ChatSettings
from shared.db.pool import create_pool
from shared.logs import configure_logging
from shared.service_app import check_postgres, create_service_app
from shared.settings import JWTSettings
from shared.tokens import TokenVerifier

SERVICE = "chat"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: ChatSettings = app.state.settings
    app.state.pool = await create_pool(
        settings.database_url,
        min_size=settings.db_pool_min_size,
        max_size=settings.db_pool_max_size,
        application_name=SERVICE,
    )
    try:
        yield
    finally:
        await app.state.pool.close()


async def readiness(app: FastAPI) -> dict[str, str]:
    return {"postgres": await check_postgres(app.state.pool)}


def create_app(
    settings: ChatSettings | None = None, jwt_settings: JWTSettings | None = None
) -> FastAPI:
    settings = settings or ChatSettings()
    configure_logging(SERVICE, settings.log_level)
    app = create_service_app(
        title="Chat service",
        description="Conversations, messages, search and agents.",
        lifespan=lifespan,
        readiness=readiness,
    )
    app.state.settings = settings
    # Fails at start, not at the first request, when the signing key is missing or weak.
    app.state.token_verifier = TokenVerifier(jwt_settings or JWTSettings())
    app.include_router(router)
    return app


app = create_app()
