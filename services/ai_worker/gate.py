"""A batch's concurrency limit, held where it matters: at most `concurrency` of its jobs call
the model at once, across every worker process.

Why a gate and not only the dispatcher's count: a job spends tens of milliseconds outside the
model call (the queue, reading the prompt, storing the reply, the next top-up). If those
counted against the limit, every slot would idle that long per reply, and a batch would reach
only latency / (latency + overhead) of the throughput its concurrency allows (about 60% with a
100 ms model). So the dispatcher keeps up to `concurrency` more jobs ready (`lookahead`), each
waits here with its prompt built, and the moment a call ends the next one starts.

The slots are a sorted set in Redis (member: job id, score: lease expiry by Redis's clock): a
worker killed mid-call loses its slot when the lease runs out (the task's time limit, which no
call outlives), and a redelivered job takes back its own slot at once. A job that finds no slot
joins the batch's queue of waiters and blocks (BLPOP) on a key of its own; a release hands the
slot straight to the first waiter, in the same script, and wakes it there: the next call starts
one wake-up after the last ends, with no second round trip to claim the slot. A waiter also
looks again every `POLL_SECONDS`, so a lost wake-up (Redis restarted) costs latency, never a
stall; a waiter that leaves (cancelled, timed out) passes on a slot it was handed meanwhile. A
waiter whose worker dies is handed a slot it never uses until the lease runs out or its job,
redelivered, takes it. Without Redis the gate opens (logged): the limit then rests on the
dispatcher's count alone.

The scripts touch per-waiter keys they compute (`<base>:grant:<job>`), which a Redis Cluster
would refuse; the platform runs one Redis (or a primary with replicas).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis
import structlog
from prometheus_client import Histogram

log = structlog.get_logger(component="gate")

# Jobs kept ready beyond a batch's concurrency (see the module's doc): as many again, up to
# LOOKAHEAD_MAX. Each holds a worker thread while it waits, so the cap keeps a wide batch from
# taking every thread from interactive replies; a ready job is needed only for as long as the
# next one takes to be queued and read its prompt, which real models' seconds amply cover.
LOOKAHEAD = 1.0
LOOKAHEAD_MAX = 8
POLL_SECONDS = 0.5

GATE_WAIT = Histogram(
    "ai_batch_gate_wait_seconds",
    "How long a batch job waited, prompt built, for one of its batch's model-call slots.",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)

# KEYS: slots, queue. ARGV: limit, member, lease seconds, grant key. 1 when the member holds a
# slot (free, or handed to it); else it is queued (once) and 0.
_ACQUIRE = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t)
if redis.call('ZSCORE', KEYS[1], ARGV[2])
   or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], t + lease, ARGV[2])
  redis.call('EXPIRE', KEYS[1], math.ceil(lease) + 60)
  redis.call('LREM', KEYS[2], 0, ARGV[2])
  redis.call('DEL', ARGV[4])
  return 1
end
if not redis.call('LPOS', KEYS[2], ARGV[2]) then
  redis.call('RPUSH', KEYS[2], ARGV[2])
end
redis.call('EXPIRE', KEYS[2], math.ceil(lease) + 60)
return 0
"""
# KEYS: slots, queue. ARGV: member, limit, lease seconds, grant key prefix. Frees the member's
# slot (if it holds one) and its place in the queue, then hands free slots to the first waiters.
_RELEASE = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local lease = tonumber(ARGV[3])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('LREM', KEYS[2], 0, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t)
while redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) do
  local waiter = redis.call('LPOP', KEYS[2])
  if not waiter then break end
  redis.call('ZADD', KEYS[1], t + lease, waiter)
  redis.call('LPUSH', ARGV[4] .. waiter, '1')
  redis.call('EXPIRE', ARGV[4] .. waiter, 60)
end
return 1
"""


def lookahead(concurrency: int) -> int:
    """Jobs the dispatcher keeps ready beyond the batch's concurrency."""
    return max(1, min(LOOKAHEAD_MAX, round(concurrency * LOOKAHEAD)))


class GateClosed(Exception):
    """The job should not call the model: it was cancelled while it waited (`cancelled`), or no
    slot came free before its deadline."""

    def __init__(self, message: str, *, cancelled: bool) -> None:
        super().__init__(message)
        self.cancelled = cancelled


class BatchGate:
    def __init__(self, client: redis.Redis, prefix: str, *, lease_seconds: float) -> None:
        self._client = client
        self._prefix = prefix
        self._lease = lease_seconds
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)

    def _keys(self, batch_id: int) -> tuple[list[str], str]:
        base = f"{self._prefix}ai:batch-gate:{batch_id}"
        return [f"{base}:slots", f"{base}:queue"], f"{base}:grant:"

    def acquire(
        self,
        batch_id: int,
        job_id: int,
        concurrency: int,
        *,
        still_wanted: Callable[[], bool],
        deadline: float,
    ) -> bool:
        """Waits for a slot; True once held, False if the gate is unusable (Redis down: go on
        without it). `still_wanted` is asked at most once a poll interval; GateClosed when it
        says no, or when `deadline` (time.monotonic()) passes."""
        keys, grant_prefix = self._keys(batch_id)
        member = str(job_id)
        grant = grant_prefix + member
        started = time.monotonic()
        next_check = started + POLL_SECONDS
        try:
            while True:
                if self._acquire(keys=keys, args=[concurrency, member, self._lease, grant]) == 1:
                    GATE_WAIT.observe(time.monotonic() - started)
                    return True
                now = time.monotonic()
                if now >= deadline:
                    self.release(batch_id, job_id, concurrency)
                    raise GateClosed("No slot of the batch came free in time", cancelled=False)
                if now >= next_check:
                    next_check = now + POLL_SECONDS
                    if not still_wanted():
                        self.release(batch_id, job_id, concurrency)
                        raise GateClosed("Cancelled while waiting for a slot", cancelled=True)
                # Woken by the release that handed this job its slot (in the same script that
                # recorded it as the holder), or after the poll interval to look again.
                if self._client.blpop([grant], timeout=POLL_SECONDS) is not None:
                    GATE_WAIT.observe(time.monotonic() - started)
                    return True
        except redis.RedisError as exc:
            log.warning("batch_gate_unavailable", batch_id=batch_id, error=type(exc).__name__)
            return False

    def release(self, batch_id: int, job_id: int, concurrency: int) -> None:
        """Gives up the job's slot or its place in the queue, handing free slots on."""
        keys, grant_prefix = self._keys(batch_id)
        try:
            self._release(
                keys=keys, args=[str(job_id), max(1, concurrency), self._lease, grant_prefix]
            )
        except redis.RedisError as exc:
            # The slot's lease frees it later; until then the batch runs one call short.
            log.warning("batch_gate_release_failed", batch_id=batch_id, error=type(exc).__name__)
