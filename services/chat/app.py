"""The chat service's ASGI app: conversations, messages, search and agents under /chat."""

from __future__ import annotations

from fastapi import FastAPI

from services.chat.routes import router
from services.chat.settings import ChatSettings
from shared.service_app import create_service_app, postgres_lifespan, postgres_readiness
from shared.settings import JWTSettings

SERVICE = "chat"


def create_app(
    settings: ChatSettings | None = None, jwt_settings: JWTSettings | None = None
) -> FastAPI:
    app = create_service_app(
        service=SERVICE,
        settings=settings or ChatSettings(),
        jwt_settings=jwt_settings or JWTSettings(),
        title="Chat service",
        description="Conversations, messages, search and agents.",
        lifespan=postgres_lifespan(SERVICE),
        readiness=postgres_readiness,
    )
    app.include_router(router)
    return app


app = create_app()
