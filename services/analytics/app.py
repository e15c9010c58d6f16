"""The analytics service's ASGI app: dashboards under /chat/analytics, read from the rollups."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.analytics.agents import AgentDirectory
from services.analytics.routes import router
from services.analytics.settings import AnalyticsSettings
from shared.service_app import create_service_app, postgres_lifespan, postgres_readiness
from shared.settings import JWTSettings

SERVICE = "analytics"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The Postgres pool, and the client that asks the chat service for agent names."""
    settings: AnalyticsSettings = app.state.settings
    async with postgres_lifespan(SERVICE)(app):
        app.state.agents = AgentDirectory(
            settings.chat_url, ttl_seconds=settings.agent_name_ttl_seconds
        )
        try:
            yield
        finally:
            await app.state.agents.close()


def create_app(
    settings: AnalyticsSettings | None = None, jwt_settings: JWTSettings | None = None
) -> FastAPI:
    app = create_service_app(
        service=SERVICE,
        settings=settings or AnalyticsSettings(),
        jwt_settings=jwt_settings or JWTSettings(),
        title="Analytics service",
        description="Chat analytics for users and administrators.",
        lifespan=lifespan,
        readiness=postgres_readiness,
    )
    app.include_router(router)
    return app


app = create_app()
