"""The analytics service's ASGI app: dashboards under /chat/analytics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.analytics.routes import router
from services.analytics.settings import AnalyticsSettings
from shared.db.pool import create_pool
from shared.logs import configure_logging
from shared.service_app import check_postgres, create_service_app
from shared.settings import JWTSettings
from shared.tokens import TokenVerifier

SERVICE = "analytics"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: AnalyticsSettings = app.state.settings
    app.state.pool = await create_pool(
        settings.database_url,
        min_size=1,
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
    settings: AnalyticsSettings | None = None, jwt_settings: JWTSettings | None = None
) -> FastAPI:
    settings = settings or AnalyticsSettings()
    configure_logging(SERVICE, settings.log_level)
    app = create_service_app(
        title="Analytics service",
        description="Chat analytics for users and administrators.",
        lifespan=lifespan,
        readiness=readiness,
    )
    app.state.settings = settings
    app.state.token_verifier = TokenVerifier(jwt_settings or JWTSettings())
    app.include_router(router)
    return app


app = create_app()
