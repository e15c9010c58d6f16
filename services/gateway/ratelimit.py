"""Per-caller rate limits kept in Redis: GCRA (a leaky bucket kept as one timestamp per key).

GCRA stores only the "theoretical arrival time" of a caller's next request, so a limit is one
small key per caller and one atomic script call, shared by every gateway replica. A busy caller
does not cost a Redis call per request: the script can reserve a few of their tokens at once (a
lease), which this replica then spends locally. Reserved tokens are already debited in Redis, so
leasing never admits more than the limit; its only cost is that tokens of a lease that expires
unused are lost, and the lease size adapts so that slow callers lease one token at a time.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
import structlog
from prometheus_client import Counter
from redis.exceptions import RedisError

log = structlog.get_logger(component="ratelimit")

RATE_LIMIT_DECISIONS = Counter(
    "gateway_rate_limit_decisions_total",
    "Rate-limit checks by limit and outcome (allowed, limited, error: Redis failed, let through).",
    ["limit", "outcome"],
)
RATE_LIMIT_REDIS_CALLS = Counter(
    "gateway_rate_limit_redis_calls_total",
    "Rate-limit script calls to Redis (fewer than decisions when callers' tokens are leased).",
    ["limit"],
)

# KEYS[1]: the caller's key. ARGV: emission interval (ms), burst tolerance (ms), tokens wanted.
# Grants up to `wanted` tokens that are available now. Returns
# {granted, remaining after the grant, retry_after_ms (when none granted), reset_ms}.
_GCRA = """
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local wanted = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local available = math.floor((tolerance - (tat - now)) / interval)
if available < 1 then
  return {0, 0, tat + interval - tolerance - now, tat - now}
end
local granted = math.min(wanted, available)
local new_tat = tat + granted * interval
redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now)
return {granted, available - granted, 0, new_tat - now}
"""


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    retry_after_seconds: int
    reset_seconds: int

    def headers(self) -> dict[str, str]:
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_seconds),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after_seconds)
        return headers


@dataclass(slots=True)
class _Lease:
    tokens: int  # reserved in Redis, not yet spent here
    expires_at: float  # monotonic
    size: int  # how many to reserve next time
    remaining_in_redis: int
    reset_at: float  # monotonic


class RateLimiter:
    """`per_minute` sustained, up to `burst` at once, per key."""

    LEASE_SECONDS = 2.0
    _SWEEP_EVERY = 4096  # leases kept before expired ones are dropped

    def __init__(
        self, client: aioredis.Redis, *, name: str, prefix: str, per_minute: int, burst: int
    ) -> None:
        self._script = client.register_script(_GCRA)
        self._name = name
        self._prefix = f"{prefix}ratelimit:{name}:"
        self._interval_ms = max(1, round(60_000 / per_minute))
        self._burst = burst
        self._tolerance_ms = self._interval_ms * burst
        # Small against the burst, so a lease never holds a meaningful share of it; 1 (no
        # leasing) for tight limits.
        self._max_lease = max(1, min(16, burst // 8))
        self._leases: dict[str, _Lease] = {}

    async def hit(self, key: str) -> Decision:
        now = time.monotonic()
        lease = self._leases.get(key)
        if lease is not None and lease.tokens > 0 and lease.expires_at > now:
            lease.tokens -= 1
            RATE_LIMIT_DECISIONS.labels(self._name, "allowed").inc()
            return Decision(
                True,
                self._burst,
                lease.remaining_in_redis + lease.tokens,
                0,
                max(0, math.ceil(lease.reset_at - now)),
            )
        return await self._reserve(key, self._next_size(lease, now), now)

    def _next_size(self, lease: _Lease | None, now: float) -> int:
        """Doubles for a caller who spent a whole lease before it expired, halves for one who
        let tokens expire, and stays for one who spent it just in time."""
        if lease is None:
            return 1
        if lease.tokens > 0:
            return max(1, lease.size // 2)
        if lease.expires_at > now:
            return min(lease.size * 2, self._max_lease)
        return lease.size

    async def _reserve(self, key: str, size: int, now: float) -> Decision:
        RATE_LIMIT_REDIS_CALLS.labels(self._name).inc()
        try:
            granted, remaining, retry_ms, reset_ms = await self._script(
                keys=[self._prefix + key], args=[self._interval_ms, self._tolerance_ms, size]
            )
        except RedisError as exc:
            # A rate limiter must not take the API down with it: let the request through.
            RATE_LIMIT_DECISIONS.labels(self._name, "error").inc()
            log.warning("rate_limit_unavailable", error=type(exc).__name__)
            return Decision(True, self._burst, self._burst, 0, 0)
        granted, remaining = int(granted), max(0, int(remaining))
        if granted == 0:
            RATE_LIMIT_DECISIONS.labels(self._name, "limited").inc()
            self._leases.pop(key, None)
            return Decision(
                allowed=False,
                limit=self._burst,
                remaining=0,
                retry_after_seconds=max(1, math.ceil(int(retry_ms) / 1000)),
                reset_seconds=math.ceil(int(reset_ms) / 1000),
            )
        RATE_LIMIT_DECISIONS.labels(self._name, "allowed").inc()
        if self._max_lease > 1:
            self._remember(
                key,
                _Lease(
                    granted - 1,
                    now + self.LEASE_SECONDS,
                    size,
                    remaining,
                    now + int(reset_ms) / 1000,
                ),
            )
        return Decision(
            True, self._burst, remaining + granted - 1, 0, math.ceil(int(reset_ms) / 1000)
        )

    def _remember(self, key: str, lease: _Lease) -> None:
        self._leases[key] = lease
        if len(self._leases) % self._SWEEP_EVERY == 0:
            now = time.monotonic()
            self._leases = {k: v for k, v in self._leases.items() if v.expires_at > now}
