"""Handing AI jobs to the worker pool and waiting for them without holding a thread.

Jobs go to Celery by task name (the chat service imports nothing of the worker). Completion
comes back on a Redis channel per job; one pattern subscription per process serves every
waiting request. The job's row stays the truth: a waiter also reads it when it starts and every
few seconds, so a lost notification (Redis restarted, say) costs latency, never a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from services.chat.settings import ChatSettings
from shared.jobs import AI_QUEUE, GENERATE_REPLY_TASK, celery_app, job_done_pattern

log = structlog.get_logger(component="ai_jobs")

FALLBACK_POLL_SECONDS = 2.0


class JobRunner:
    def __init__(self, settings: ChatSettings, redis_client: aioredis.Redis) -> None:
        self._redis = redis_client
        self._pattern = job_done_pattern(settings.redis_prefix)
        self._celery = celery_app(
            "chat",
            broker_url=settings.redis_url,
            redis_prefix=settings.redis_prefix,
            visibility_timeout_seconds=settings.ai_visibility_timeout_seconds,
        )
        self._waiters: dict[int, set[asyncio.Future[str]]] = {}
        self._listener: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="ai-job-listener")

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener

    async def enqueue(self, job_id: int) -> None:
        """Sends the job's task to the broker (a blocking publish, so on a thread)."""
        await asyncio.to_thread(
            self._celery.send_task, GENERATE_REPLY_TASK, args=[job_id], queue=AI_QUEUE
        )

    async def wait(
        self, job_id: int, *, within_seconds: float, is_final: Callable[[], Awaitable[bool]]
    ) -> bool:
        """True once `is_final()` says the job finished; False after `within_seconds`."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        self._waiters.setdefault(job_id, set()).add(future)
        deadline = loop.time() + within_seconds
        try:
            while True:
                if await is_final():
                    return True
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        asyncio.shield(future), timeout=min(remaining, FALLBACK_POLL_SECONDS)
                    )
        finally:
            waiters = self._waiters.get(job_id)
            if waiters is not None:
                waiters.discard(future)
                if not waiters:
                    del self._waiters[job_id]

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
        outcome = data.decode() if isinstance(data, bytes) else str(data)
        for future in self._waiters.get(job_id, ()):
            if not future.done():
                future.set_result(outcome)
