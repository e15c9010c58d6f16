"""The rate limiter's token leases, against the real Redis: fewer Redis calls for busy callers,
never more admissions than the limit, even across replicas."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from services.gateway.ratelimit import RateLimiter
from tests.harness import Stack


@pytest.fixture
async def redis_client(stack: Stack) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(stack.redis_url)
    yield client
    await client.aclose()


def _limiter(client: aioredis.Redis, prefix: str, *, burst: int) -> RateLimiter:
    # One token a minute after the burst: nothing refills during the test.
    return RateLimiter(
        client, name=f"t{secrets.token_hex(4)}", prefix=prefix, per_minute=1, burst=burst
    )


def _redis_calls(limiter: RateLimiter) -> float:
    from services.gateway.ratelimit import RATE_LIMIT_REDIS_CALLS

    return RATE_LIMIT_REDIS_CALLS.labels(limiter._name)._value.get()  # noqa: SLF001


async def test_a_busy_caller_leases_tokens_and_still_gets_exactly_the_burst(
    stack: Stack, redis_client: aioredis.Redis
) -> None:
    limiter = _limiter(redis_client, f"{stack.redis_prefix}lease-{secrets.token_hex(4)}:", burst=64)
    decisions = [await limiter.hit("user:1") for _ in range(80)]
    allowed = [d for d in decisions if d.allowed]
    assert len(allowed) == 64
    assert all(not d.allowed for d in decisions[64:])
    assert decisions[-1].retry_after_seconds >= 1
    # Remaining counts down one by one, whether a token came from Redis or from the lease.
    assert [d.remaining for d in allowed] == list(range(63, -1, -1))
    assert _redis_calls(limiter) < 40  # 64 admissions; leases of up to 8 tokens


async def test_two_replicas_sharing_redis_never_admit_more_than_the_burst(
    stack: Stack, redis_client: aioredis.Redis
) -> None:
    prefix = f"{stack.redis_prefix}lease-{secrets.token_hex(4)}:"
    name = f"t{secrets.token_hex(4)}"
    replicas = [
        RateLimiter(redis_client, name=name, prefix=prefix, per_minute=1, burst=64)
        for _ in range(2)
    ]
    admitted = 0
    for i in range(200):
        decision = await replicas[i % 2].hit("user:7")
        admitted += decision.allowed
    assert admitted <= 64
    # Leases still held by one replica are lost to the other, never double-spent.
    assert admitted >= 64 - 2 * 8


async def test_a_slow_caller_leases_one_token_at_a_time(
    stack: Stack, redis_client: aioredis.Redis
) -> None:
    limiter = _limiter(redis_client, f"{stack.redis_prefix}lease-{secrets.token_hex(4)}:", burst=64)
    limiter.LEASE_SECONDS = 0.0  # every lease has expired by the next request
    for expected_remaining in (63, 62, 61):
        decision = await limiter.hit("user:2")
        assert decision.allowed and decision.remaining == expected_remaining
    assert _redis_calls(limiter) == 3


async def test_tight_limits_do_not_lease(stack: Stack, redis_client: aioredis.Redis) -> None:
    limiter = _limiter(redis_client, f"{stack.redis_prefix}lease-{secrets.token_hex(4)}:", burst=3)
    decisions = [await limiter.hit("user:3") for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert _redis_calls(limiter) == 4
