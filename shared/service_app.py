"""The FastAPI app every HTTP service starts from: envelope errors, probes, metrics, request
context.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from shared.db.pool import create_pool
from shared.db.pool_metrics import watch_asyncpg_pool
from shared.envelope import EnvelopeResponse, fail, ok
from shared.errors import install_error_handlers
from shared.logs import configure_logging
from shared.metrics import metrics_endpoint
from shared.middleware import RequestContextMiddleware
from shared.settings import JWTSettings, ServiceSettings
from shared.tokens import TokenVerifier

ReadinessCheck = Callable[[FastAPI], Awaitable[dict[str, str]]]
Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[Any]]


def create_service_app(
    *,
    service: str,
    settings: ServiceSettings,
    jwt_settings: JWTSettings,
    title: str,
    description: str,
    lifespan: Lifespan,
    readiness: ReadinessCheck,
    version: str = "0.1.0",
    request_context: bool = True,
    **fastapi_kwargs: Any,
) -> FastAPI:
    """A service's app with its settings and token verifier on `app.state`. The verifier is built
    here so a missing or weak signing key stops the process at start, not at the first request."""
    configure_logging(service, settings.log_level)
    app = FastAPI(
        title=title,
        description=description,
        version=version,
        lifespan=lifespan,
        default_response_class=EnvelopeResponse,
        **fastapi_kwargs,
    )
    app.state.settings = settings
    app.state.jwt_settings = jwt_settings
    app.state.token_verifier = TokenVerifier(jwt_settings)
    install_error_handlers(app)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        """Alive: the process answers."""
        return ok({"status": "alive"}, "alive")

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> Response:
        """Ready: every dependency answers."""
        checks = await readiness(request.app)
        if all(state == "ok" for state in checks.values()):
            return ok({"status": "ready", "checks": checks}, "ready")
        return fail(503, "service_unavailable", "not ready", {"checks": checks})

    app.add_route("/metrics", metrics_endpoint, include_in_schema=False)
    if request_context:  # the gateway wraps its own, outside its proxy path too
        app.add_middleware(RequestContextMiddleware)
    return app


def postgres_lifespan(service: str) -> Lifespan:
    """Opens the service's asyncpg pool (`app.state.pool`) for the app's lifetime."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings: ServiceSettings = app.state.settings
        app.state.pool = await create_pool(
            settings.database_url,
            min_size=settings.db_pool_min_size,
            max_size=settings.db_pool_max_size,
            application_name=service,
        )
        app.state.pool_name = service
        try:
            async with watch_asyncpg_pool(app.state.pool, service):
                yield
        finally:
            await app.state.pool.close()

    return lifespan


async def postgres_readiness(app: FastAPI) -> dict[str, str]:
    return {"postgres": await check_postgres(app.state.pool)}


async def check_postgres(pool: Any) -> str:
    try:
        async with pool.acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - a probe reports any failure as "not ready"
        return f"error: {type(exc).__name__}"
    return "ok"


async def check_redis(client: Any) -> str:
    try:
        await client.ping()
    except Exception as exc:  # noqa: BLE001 - a probe reports any failure as "not ready"
        return f"error: {type(exc).__name__}"
    return "ok"
