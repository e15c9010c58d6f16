"""The analytics service's ASGI app: dashboards under /chat/analytics."""

from __future__ import annotations

from fastapi import FastAPI

from services.analytics.routes import router
from services.analytics.settings import AnalyticsSettings
from shared.service_app import create_service_app, postgres_lifespan, postgres_readiness
from shared.settings import JWTSettings

SERVICE = "analytics"


def create_app(
    settings: AnalyticsSettings | None = None, jwt_settings: JWTSettings | None = None
) -> FastAPI:
    app = create_service_app(
        service=SERVICE,
        settings=settings or AnalyticsSettings(),
        jwt_settings=jwt_settings or JWTSettings(),
        title="Analytics service",
        description="Chat analytics for users and administrators.",
        lifespan=postgres_lifespan(SERVICE),
        readiness=postgres_readiness,
    )
    app.include_router(router)
    return app


app = create_app()
