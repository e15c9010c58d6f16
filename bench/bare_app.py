"""The reference: `GET /conversations` as a bare single-process FastAPI + asyncpg + orjson app.

It runs exactly what the chat service's list endpoint runs below the web layer (its
`conversation_service.list`: the same SQL on one pooled connection per request, from a pool of the
same size, and the same row shaping), so a change to that query speeds up or slows down both paths
alike, and answers the same envelope through orjson. What it leaves out is what the comparison
measures: authentication (the user is the `user_id` query parameter), middleware, logging, metrics,
the rate limit and the second hop. `python -m bench.bare_app --port P` with DATABASE_URL.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, cast

import asyncpg
import orjson
import uvicorn
from fastapi import FastAPI, Query, Request
from starlette.responses import Response

from services.chat.service import conversation_service
from services.chat.settings import ChatSettings
from shared.db.pool import create_pool
from shared.tokens import Principal

_ORJSON = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # The chat service's pool exactly: its settings (size) and shared.db.pool's options.
    settings = ChatSettings()
    pool = await create_pool(
        settings.database_url,
        min_size=settings.db_pool_min_size,
        max_size=settings.db_pool_max_size,
        application_name="bench-bare",
    )
    app.state.pool = pool
    try:
        yield
    finally:
        await pool.close()


app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)


@app.get("/healthz")
async def healthz() -> Response:
    return Response(
        b'{"success":true,"message":"alive","data":null}', media_type="application/json"
    )


@app.get("/conversations")
async def conversations(
    request: Request,
    user_id: Annotated[int, Query(ge=1)],
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> Response:
    pool: asyncpg.Pool = request.app.state.pool
    caller = Principal(user_id=user_id, role="user", token_id=None, expires_at=0)
    async with pool.acquire() as conn:
        data = await conversation_service.list(
            cast(asyncpg.Connection, conn),
            caller,
            limit=limit,
            offset=offset,
            cursor=None,
            archived=None,
        )
    body = {"success": True, "message": f"Found {data['total']} conversations", "data": data}
    return Response(orjson.dumps(body, option=_ORJSON), media_type="application/json")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        "bench.bare_app:app",
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        timeout_keep_alive=75,
    )


if __name__ == "__main__":
    main()
