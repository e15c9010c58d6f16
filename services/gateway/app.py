"""The gateway: the only public port. Accounts and tokens, then every /chat request to its owner."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.openapi import MergedOpenAPI
from services.gateway.proxy import Upstream, UpstreamProxy, read_body
from services.gateway.ratelimit import RateLimiter
from services.gateway.routes import router
from services.gateway.service import user_service
from services.gateway.settings import GatewaySettings
from shared.db.pool import create_pool
from shared.db.pool_metrics import watch_asyncpg_pool
from shared.envelope import fail
from shared.errors import AppError
from shared.middleware import RequestContextMiddleware, route_template
from shared.service_app import check_postgres, check_redis, create_service_app
from shared.settings import JWTSettings
from shared.tokens import TokenVerifier

SERVICE = "gateway"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: GatewaySettings = app.state.settings
    proxy: UpstreamProxy = app.state.proxy
    app.state.pool = await create_pool(
        settings.database_url,
        min_size=settings.db_pool_min_size,
        max_size=settings.db_pool_max_size,
        application_name=SERVICE,
    )
    app.state.pool_name = SERVICE
    app.state.redis = aioredis.from_url(
        settings.redis_url, socket_timeout=2, socket_connect_timeout=2
    )
    proxy.limiter = RateLimiter(
        app.state.redis,
        name="user",
        prefix=settings.redis_prefix,
        per_minute=settings.rate_limit_per_minute,
        burst=settings.rate_limit_burst,
    )
    app.state.auth_limiter = RateLimiter(
        app.state.redis,
        name="auth",
        prefix=settings.redis_prefix,
        per_minute=settings.auth_rate_limit_per_minute,
        burst=settings.auth_rate_limit_burst,
    )
    await proxy.start()
    if settings.admin_email and settings.admin_password:
        await user_service.ensure_admin(
            app.state.pool, settings.admin_email, settings.admin_password.get_secret_value()
        )
    docs_task = asyncio.create_task(app.state.openapi.refresh_until_complete())
    try:
        async with watch_asyncpg_pool(app.state.pool, SERVICE):
            yield
    finally:
        docs_task.cancel()
        await proxy.close()
        await app.state.redis.aclose()
        await app.state.pool.close()


async def readiness(app: FastAPI) -> dict[str, str]:
    return {
        "postgres": await check_postgres(app.state.pool),
        "redis": await check_redis(app.state.redis),
    }


class GatewayDispatch:
    """Sends /chat/... to the proxy and everything else (auth, docs, probes) to the FastAPI app,
    after bounding the body of the latter the same way the proxy does."""

    def __init__(self, api: FastAPI, proxy: UpstreamProxy, max_body_bytes: int) -> None:
        self.api = api
        self.proxy = proxy
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.api(scope, receive, send)
            return
        if self.proxy.owns(scope["path"]):
            await self.proxy(scope, receive, send)
            return
        headers = dict(scope["headers"])
        try:
            body = await read_body(scope, receive, headers, self.max_body_bytes)
        except AppError as exc:
            await fail(exc.status_code, exc.code, exc.message)(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.api(scope, replay, send)


def create_app(
    settings: GatewaySettings | None = None, jwt_settings: JWTSettings | None = None
) -> RequestContextMiddleware:
    settings = settings or GatewaySettings()
    jwt_settings = jwt_settings or JWTSettings()
    api = create_service_app(
        service=SERVICE,
        settings=settings,
        jwt_settings=jwt_settings,
        title="Chat platform API",
        description=(
            "The public API: accounts under /auth, conversations, messages, search, agents and "
            "analytics under /chat. Authorize with an account's e-mail and password."
        ),
        lifespan=lifespan,
        readiness=readiness,
        docs_url=None,
        openapi_url=None,
        request_context=False,
    )
    verifier: TokenVerifier = api.state.token_verifier
    proxy = UpstreamProxy(
        [
            Upstream("chat", "/chat", settings.chat_url.rstrip("/")),
            Upstream("analytics", "/chat/analytics", settings.analytics_url.rstrip("/")),
        ],
        verifier=verifier,
        max_body_bytes=settings.max_body_bytes,
        max_upload_bytes=settings.max_upload_bytes,
        timeout_seconds=settings.upstream_timeout_seconds,
        connections=settings.upstream_connections,
        keepalive_seconds=settings.upstream_keepalive_seconds,
    )
    api.state.proxy = proxy
    api.state.openapi = MergedOpenAPI(api, proxy)
    api.include_router(router)

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi_document(request: Request) -> Response:
        return JSONResponse(await request.app.state.openapi.document())

    @api.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="Chat platform API")

    # The request-context middleware sits outside both paths, so proxied requests get a request
    # id, an access line and metrics exactly like the gateway's own routes.
    dispatch: ASGIApp = GatewayDispatch(api, proxy, settings.max_body_bytes)
    if settings.cors_origin_list:
        dispatch = CORSMiddleware(
            dispatch,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Idempotency-Key",
                "X-Request-ID",
                "traceparent",
                "tracestate",
            ],
            expose_headers=[
                "X-Request-ID",
                "Retry-After",
                "X-RateLimit-Limit",
                "X-RateLimit-Remaining",
                "X-RateLimit-Reset",
                "Idempotent-Replayed",
            ],
            max_age=600,
        )
    return RequestContextMiddleware(dispatch, route_of=route_template)


app = create_app()
