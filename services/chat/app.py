"""The chat service's ASGI app: conversations, messages, search, agents and AI jobs under /chat."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import FastAPI

from services.chat.ai_jobs import JobRunner
from services.chat.routes import router
from services.chat.settings import ChatSettings
from services.chat.webhooks.routes import router as webhook_router
from shared.service_app import (
    check_postgres,
    check_redis,
    create_service_app,
    postgres_lifespan,
)
from shared.settings import JWTSettings

SERVICE = "chat"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: ChatSettings = app.state.settings
    async with postgres_lifespan(SERVICE)(app):
        app.state.redis = aioredis.from_url(
            settings.redis_url, socket_timeout=5, socket_connect_timeout=2
        )
        app.state.jobs = JobRunner(settings, app.state.redis)
        await app.state.jobs.start()
        try:
            yield
        finally:
            await app.state.jobs.close()
            await app.state.redis.aclose()


async def readiness(app: FastAPI) -> dict[str, str]:
    return {
        "postgres": await check_postgres(app.state.pool),
        "redis": await check_redis(app.state.redis),
    }


def create_app(
    settings: ChatSettings | None = None, jwt_settings: JWTSettings | None = None
) -> FastAPI:
    app = create_service_app(
        service=SERVICE,
        settings=settings or ChatSettings(),
        jwt_settings=jwt_settings or JWTSettings(),
        title="Chat service",
        description="Conversations, messages, search, agents and AI replies.",
        lifespan=lifespan,
        readiness=readiness,
    )
    app.include_router(router)
    app.include_router(webhook_router)
    return app


app = create_app()
