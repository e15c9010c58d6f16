"""Per-caller rate limits in Redis: GCRA (a leaky bucket kept as one timestamp per key).

GCRA stores only the "theoretical arrival time" of the next request, so a limit is one small key
per caller and one atomic script call per request, shared by every gateway replica.
"""

from __future__ import annotations

import math
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

# KEYS[1]: the caller's key. ARGV: emission interval (ms), burst tolerance (ms).
# Returns {allowed, remaining, retry_after_ms, reset_ms}.
_GCRA = """
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - tolerance
if now < allow_at then
  return {0, 0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now)
return {1, math.floor((tolerance - (new_tat - now)) / interval), 0, new_tat - now}
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


class RateLimiter:
    """`per_minute` sustained, up to `burst` at once, per key."""

    def __init__(
        self, client: aioredis.Redis, *, name: str, prefix: str, per_minute: int, burst: int
    ) -> None:
        self._script = client.register_script(_GCRA)
        self._name = name
        self._prefix = f"{prefix}ratelimit:{name}:"
        self._interval_ms = max(1, round(60_000 / per_minute))
        self._burst = burst
        self._tolerance_ms = self._interval_ms * burst

    async def hit(self, key: str) -> Decision:
        try:
            allowed, remaining, retry_ms, reset_ms = await self._script(
                keys=[self._prefix + key], args=[self._interval_ms, self._tolerance_ms]
            )
        except RedisError as exc:
            # A rate limiter must not take the API down with it: let the request through.
            RATE_LIMIT_DECISIONS.labels(self._name, "error").inc()
            log.warning("rate_limit_unavailable", error=type(exc).__name__)
            return Decision(True, self._burst, self._burst, 0, 0)
        RATE_LIMIT_DECISIONS.labels(self._name, "allowed" if allowed else "limited").inc()
        return Decision(
            allowed=bool(allowed),
            limit=self._burst,
            remaining=max(0, int(remaining)),
            retry_after_seconds=max(1, math.ceil(int(retry_ms) / 1000)),
            reset_seconds=math.ceil(int(reset_ms) / 1000),
        )
