"""Handing AI jobs to the worker pool and waiting for them without holding a thread.

Jobs go to Celery by task name (the chat service imports nothing of the worker). Completion
comes back on a Redis channel per job; one pattern subscription per process serves every
waiting request. The job's row stays the truth: a waiter also reads it when it starts and every
few seconds, so a lost notification (Redis restarted, say) costs latency, never a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from services.chat.settings import ChatSettings
from shared import tracing
from shared.envelope import dumps, error_body
from shared.jobs import (
    AI_QUEUE,
    DISPATCH_BATCH_TASK,
    GENERATE_REPLY_TASK,
    JOB_STREAM_TTL_SECONDS,
    JobDone,
    celery_app,
    job_cancel_key,
    job_done_channel,
    job_done_pattern,
    job_stream_key,
)

log = structlog.get_logger(component="ai_jobs")

FALLBACK_POLL_SECONDS = 2.0


class JobRunner:
    def __init__(self, settings: ChatSettings, redis_client: aioredis.Redis) -> None:
        self._redis = redis_client
        self._prefix = settings.redis_prefix
        self._pattern = job_done_pattern(settings.redis_prefix)
        self._celery = celery_app(
            "chat",
            broker_url=settings.redis_url,
            redis_prefix=settings.redis_prefix,
            visibility_timeout_seconds=settings.ai_visibility_timeout_seconds,
        )
        self._waiters: dict[int, set[asyncio.Future[JobDone]]] = {}
        self._listener: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="ai-job-listener")

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener

    async def enqueue(self, job_id: int) -> None:
        """Sends the job's task to the broker (a blocking publish, so on a thread), with the
        request's id and trace context in its headers (shared/tracing.py)."""
        await asyncio.to_thread(
            self._celery.send_task,
            GENERATE_REPLY_TASK,
            args=[job_id],
            queue=AI_QUEUE,
            headers=tracing.task_headers(),
        )

    async def dispatch_batch(self, batch_id: int) -> None:
        """Asks the workers to start a created or resumed batch (its dispatcher runs there),
        on behalf of the request (its trace context in the task's headers)."""
        await asyncio.to_thread(
            self._celery.send_task,
            DISPATCH_BATCH_TASK,
            args=[batch_id],
            queue=AI_QUEUE,
            headers=tracing.task_headers(),
        )

    async def request_cancel(self, job_id: int) -> None:
        """Flags a running job; its worker stops within a fraction of a second of streaming."""
        await self._redis.set(job_cancel_key(self._prefix, job_id), "1", ex=JOB_STREAM_TTL_SECONDS)

    async def announce(self, job_id: int, outcome: str) -> None:
        """What the worker does at a job's end, for a job that ended without it (cancelled
        while queued): wake the waiters and end the job's event stream."""
        with contextlib.suppress(RedisError):
            await self._redis.xadd(
                job_stream_key(self._prefix, job_id), {"type": "end", "outcome": outcome}
            )
            await self._redis.expire(job_stream_key(self._prefix, job_id), JOB_STREAM_TTL_SECONDS)
            await self._redis.publish(job_done_channel(self._prefix, job_id), outcome)

    def expect(self, job_id: int) -> asyncio.Future[JobDone]:
        """Registers a waiter for the job's end; call it before the job is sent, so the
        announcement cannot come first, and hand the future to `wait` (or to `forget`). Once
        done it holds the announcement, with the reply when the worker stored one."""
        future: asyncio.Future[JobDone] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, set()).add(future)
        return future

    def forget(self, job_id: int, future: asyncio.Future[JobDone]) -> None:
        waiters = self._waiters.get(job_id)
        if waiters is not None:
            waiters.discard(future)
            if not waiters:
                del self._waiters[job_id]

    async def wait(
        self,
        job_id: int,
        *,
        within_seconds: float,
        is_final: Callable[[], Awaitable[bool]],
        expected: asyncio.Future[JobDone] | None = None,
    ) -> bool:
        """True once the job finished (announced, or `is_final()` says so); False after
        `within_seconds`. With a future from `expect` (registered before the job was sent)
        the announcement alone answers: no read of the job unless it is late."""
        loop = asyncio.get_running_loop()
        future = expected if expected is not None else self.expect(job_id)
        # A waiter registered after the send may have missed the announcement: look first.
        look = expected is None
        deadline = loop.time() + within_seconds
        try:
            while True:
                if future.done() or (look and await is_final()):
                    return True
                look = True
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        asyncio.shield(future), timeout=min(remaining, FALLBACK_POLL_SECONDS)
                    )
        finally:
            self.forget(job_id, future)

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.psubscribe(self._pattern)
                delay = 0.1
                async for message in pubsub.listen():
                    if message.get("type") == "pmessage":
                        self._notify(message["channel"], message["data"])
            except RedisError as exc:
                log.warning("job_listener_disconnected", error=type(exc).__name__)
                await asyncio.sleep(delay)  # reconnect backoff
                delay = min(delay * 2, 5.0)
            finally:
                with contextlib.suppress(RedisError):
                    await pubsub.aclose()

    def _notify(self, channel: bytes | str, data: bytes | str) -> None:
        name = channel.decode() if isinstance(channel, bytes) else channel
        try:
            job_id = int(name.rsplit(":", 1)[1])
        except (IndexError, ValueError):
            return
        waiters = self._waiters.get(job_id)
        if not waiters:
            return
        done = JobDone.decode(data)
        for future in waiters:
            if not future.done():
                future.set_result(done)


SSE_IDLE_SECONDS = 2.0  # how often an idle stream re-checks its job (and sends a keep-alive)
_STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


def parse_last_event_id(value: str | None) -> str:
    """Where to resume a job's stream: after the given event, or from its start."""
    if value and _STREAM_ID.match(value.strip()):
        return value.strip()
    return "0-0"


def sse(event: str, data: Any, event_id: str | None = None) -> bytes:
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"event: {event}")
    lines.append("data: " + dumps(data).decode())
    return ("\n".join(lines) + "\n\n").encode()


async def job_event_stream(
    redis_client: aioredis.Redis,
    *,
    redis_prefix: str,
    job_id: int,
    after: str,
    is_final: Callable[[], Awaitable[bool]],
    final_event: Callable[[], Awaitable[tuple[str, Any]]],
    max_seconds: float,
) -> AsyncIterator[bytes]:
    """A job's events as Server-Sent Events: `token` pieces as the worker generates them (`reset`
    when it starts over), then one `reply` (the seed's shape) or `error` event, and the end.

    Events come from the job's Redis stream, so any chat process can serve them and a client
    resumes where it left off (`Last-Event-ID`). If the stream is gone (expired, Redis
    restarted) the final event still comes, from the job's row.
    """
    key = job_stream_key(redis_prefix, job_id)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_seconds
    cursor = after
    while loop.time() < deadline:
        batches: Any  # RESP2: [[key, [(entry_id, {field: value}), ...]]]
        try:
            batches = await redis_client.xread(
                {key: cursor}, count=200, block=int(SSE_IDLE_SECONDS * 1000)
            )
        except RedisError as exc:
            log.warning("job_stream_read_failed", job_id=job_id, error=type(exc).__name__)
            batches = []
        ended = False
        for _, entries in batches:
            for entry_id, fields in entries:
                cursor = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                kind = _text(fields.get(b"type"))
                if kind == "token":
                    yield sse("token", {"text": _text(fields.get(b"text"))}, cursor)
                elif kind == "reset":
                    yield sse("reset", {"reason": "the model call is retried"}, cursor)
                elif kind == "end":
                    ended = True
        if ended or (not batches and await is_final()):
            event, data = await final_event()
            yield sse(event, data)
            return
        if not batches:
            yield b": keep-alive\n\n"
    yield sse("error", error_body("ai_timeout", f"Job {job_id} is still running"))


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value
