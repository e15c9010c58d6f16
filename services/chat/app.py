"""The chat service's ASGI app: conversations, messages, attachments, search, agents, AI jobs,
export and import under /chat."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import FastAPI

from services.chat.ai_jobs import JobRunner
from services.chat.attachments.routes import router as attachments_router
from services.chat.attachments.service import StorageJanitor
from services.chat.attachments.storage import create_store
from services.chat.exports.routes import router as exports_router
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
        app.state.store = create_store(settings)
        app.state.janitor = StorageJanitor(
            app.state.pool, app.state.store, interval=settings.storage_sweep_seconds
        )
        await app.state.jobs.start()
        app.state.janitor.start()
        try:
            yield
        finally:
            await app.state.janitor.close()
            await app.state.jobs.close()
            app.state.store.close()
            await app.state.redis.aclose()


async def readiness(app: FastAPI) -> dict[str, str]:
    return {
        "postgres": await check_postgres(app.state.pool),
        "redis": await check_redis(app.state.redis),
        "storage": await app.state.store.check(),
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
    app.include_router(attachments_router)
    app.include_router(exports_router)
    return app


app = create_app()
