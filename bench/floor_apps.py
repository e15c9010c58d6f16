"""The floor of issue 3's design: its hops, with nothing of the platform in them.

Issue 3 asks for a reply that goes client -> gateway -> chat -> a Celery task on Redis -> a worker
that calls the model through the `openai` SDK -> back to chat -> gateway -> client, with the job
and the reply written to Postgres. These processes make exactly those hops and nothing else, as
cheaply as the same libraries allow, so that `python -m bench floor` can say what the design itself
costs next to a bare Celery round trip:

- `front` (the gateway's place): FastAPI on uvicorn (uvloop, httptools), no authentication, no
  rate limit, no logging or metrics; passes the body on with one pooled aiohttp session.
- `back` (chat's place): FastAPI; with `"db": true`, one `INSERT ... RETURNING` of the job
  (autocommit, asyncpg; with `"db": "transaction"`, in a transaction after a read: three round
  trips more); publishes the task on the event loop (no thread), then waits for the
  worker's Redis notification through one shared pattern subscription.
- `celery_app` (the worker's place): a threads-pool Celery worker, acks late, no result backend;
  its task calls the stand-in LLM through the SDK (no stream, read as plain JSON), with
  `"db": true` inserts the reply (one autocommit statement), and publishes the text.

What the platform does on top (auth, quotas, idempotency, history and prompt, streaming and
cancel, usage, events, tracing, logs and metrics) is what `python -m bench ai` measures. The
processes read their configuration from FLOOR_* variables set by `bench/floor.py`.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import openai
import orjson
import psycopg
import redis
import redis.asyncio as aioredis
from celery import Celery
from fastapi import FastAPI, Request
from starlette.responses import Response

from shared.db.pool import create_pool

TASK = "floor.reply"
QUEUE = "floor"
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS floor_jobs (id bigserial PRIMARY KEY, message text NOT NULL, "
    "created_at timestamptz NOT NULL DEFAULT now());"
    "CREATE TABLE IF NOT EXISTS floor_replies (job_id bigint PRIMARY KEY, content text NOT NULL, "
    "created_at timestamptz NOT NULL DEFAULT now())"
)

_REDIS_URL = os.environ.get("FLOOR_REDIS_URL", "redis://127.0.0.1:6379/0")
_PREFIX = os.environ.get("FLOOR_PREFIX", "floor:")
_DATABASE_URL = os.environ.get("FLOOR_DATABASE_URL", "postgresql://postgres@127.0.0.1/postgres")
_DONE = _PREFIX + "floor-done:"


def _json(value: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(value), status_code=status, media_type="application/json")


# --- the worker ------------------------------------------------------------------------------

celery_app = Celery("floor", broker=_REDIS_URL)
celery_app.conf.update(
    task_default_queue=QUEUE,
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    broker_transport_options={"global_keyprefix": _PREFIX},
    worker_hijack_root_logger=False,
)
_local = threading.local()
_llm: openai.OpenAI | None = None
_redis: redis.Redis | None = None
_lock = threading.Lock()


def _clients() -> tuple[openai.OpenAI, redis.Redis]:
    global _llm, _redis
    with _lock:
        if _llm is None or _redis is None:
            _llm = openai.OpenAI(
                base_url=os.environ["FLOOR_LLM_URL"], api_key="floor", max_retries=0, timeout=30
            )
            _redis = redis.Redis.from_url(_REDIS_URL)
        return _llm, _redis


def _connection() -> psycopg.Connection:
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = psycopg.connect(_DATABASE_URL, autocommit=True)
    return conn


@celery_app.task(name=TASK)
def reply(token: str, job_id: int | None, message: str) -> None:
    llm, client = _clients()
    raw = llm.chat.completions.with_raw_response.create(
        model="default",
        messages=[],
        extra_body={"messages": [{"role": "user", "content": message}]},
    )
    text = orjson.loads(raw.http_response.content)["choices"][0]["message"]["content"] or ""
    if job_id is not None:
        _connection().execute(
            "INSERT INTO floor_replies (job_id, content) VALUES (%s, %s)", (job_id, text)
        )
    client.publish(_DONE + token, text)


# --- chat's place ----------------------------------------------------------------------------


class _Waiters:
    """One pattern subscription for every waiting request; each waits on its own future."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._pubsub = client.pubsub()
        self._futures: dict[str, asyncio.Future[bytes]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._pubsub.psubscribe(_DONE + "*")
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self._pubsub.listen():
            if message["type"] != "pmessage":
                continue
            token = message["channel"].decode()[len(_DONE) :]
            future = self._futures.pop(token, None)
            if future is not None and not future.done():
                future.set_result(message["data"])

    def expect(self, token: str) -> asyncio.Future[bytes]:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._futures[token] = future
        return future

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self._pubsub.aclose()


@asynccontextmanager
async def _back_lifespan(app: FastAPI) -> AsyncIterator[None]:
    client = aioredis.Redis.from_url(_REDIS_URL)
    app.state.waiters = _Waiters(client)
    await app.state.waiters.start()
    # The chat service's pool options (no reset round trip on release).
    app.state.pool = await create_pool(
        _DATABASE_URL, min_size=1, max_size=4, application_name="floor-back"
    )
    async with app.state.pool.acquire() as conn:
        await conn.execute(SCHEMA)
    yield
    await app.state.waiters.close()
    await app.state.pool.close()
    await client.aclose()


back = FastAPI(lifespan=_back_lifespan)


@back.get("/health")
async def back_health() -> Response:
    return _json({"ok": True})


@back.post("/ai")
async def back_ai(request: Request) -> Response:
    body = orjson.loads(await request.body())
    message = str(body["message"])
    job_id = None
    if body.get("db") == "transaction":
        # Three round trips more (BEGIN, a read, COMMIT): what a round trip costs on the path.
        async with request.app.state.pool.acquire() as conn, conn.transaction():
            await conn.fetchval("SELECT 1 FROM floor_jobs WHERE id = $1", 1)
            job_id = await conn.fetchval(
                "INSERT INTO floor_jobs (message) VALUES ($1) RETURNING id", message
            )
    elif body.get("db"):
        job_id = await request.app.state.pool.fetchval(
            "INSERT INTO floor_jobs (message) VALUES ($1) RETURNING id", message
        )
    token = os.urandom(8).hex()
    done = request.app.state.waiters.expect(token)
    celery_app.send_task(TASK, args=[token, job_id, message])
    text = await asyncio.wait_for(done, 30)
    return _json({"data": {"job_id": job_id, "ai_response": text.decode()}})


# --- the gateway's place ---------------------------------------------------------------------


@asynccontextmanager
async def _front_lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
    yield
    await app.state.session.close()


front = FastAPI(lifespan=_front_lifespan)


@front.get("/health")
async def front_health() -> Response:
    return _json({"ok": True})


@front.post("/ai")
async def front_ai(request: Request) -> Response:
    async with request.app.state.session.post(
        os.environ["FLOOR_BACK_URL"] + "/ai",
        data=await request.body(),
        headers={"content-type": "application/json"},
    ) as upstream:
        return Response(
            await upstream.read(), status_code=upstream.status, media_type="application/json"
        )
