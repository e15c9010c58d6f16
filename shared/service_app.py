"""The FastAPI app every HTTP service starts from: envelope errors, probes, metrics, request
context.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from shared.envelope import EnvelopeResponse, fail, ok
from shared.errors import install_error_handlers
from shared.metrics import metrics_endpoint
from shared.middleware import RequestContextMiddleware

ReadinessCheck = Callable[[FastAPI], Awaitable[dict[str, str]]]
Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[Any]]


def create_service_app(
    *,
    title: str,
    description: str,
    lifespan: Lifespan,
    readiness: ReadinessCheck,
    version: str = "0.1.0",
    request_context: bool = True,
    **fastapi_kwargs: Any,
) -> FastAPI:
    app = FastAPI(
        title=title,
        description=description,
        version=version,
        lifespan=lifespan,
        default_response_class=EnvelopeResponse,
        **fastapi_kwargs,
    )
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
