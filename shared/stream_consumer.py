"""Reading `chat.events` with a Redis consumer group: the loop every event consumer shares (the
analytics aggregator, the webhook dispatcher).

What a consumer gets from it:

- **Batches.** Entries are read with XREADGROUP (up to `batch_size`, blocking `block_ms` when
  idle), validated against shared/events.py, and handed to `apply` as one batch; `apply` makes
  its effects durable (one transaction, say) and only then are the entries acknowledged
  (XACK). A crash before the acknowledgement leaves them pending: at-least-once, so `apply` must
  be idempotent (by event id).
- **Poison isolation.** When a batch fails, its events are applied one at a time, so one bad
  event does not hold back the others; the ones that fail stay pending.
- **Reclaiming.** Entries pending longer than `claim_idle_ms` (their consumer crashed, or
  `apply` failed on them) are claimed (XAUTOCLAIM) and tried again by whichever consumer of
  the group runs the reclaim.
- **Dead letters.** An entry that is not a valid event, or that was delivered `max_deliveries`
  times without being applied, is appended to the dead-letter stream with the reason, the
  group and the delivery count, then acknowledged, so the stream keeps flowing.
- **Redis restarts.** A missing group (NOGROUP: Redis lost its data) is created again, from the
  start of the stream, where the relay re-appends the retained events.
- **Liveness.** `heartbeat` is beaten by every read and every retry wait: the process's
  /healthz reports the loop stalled when it has not moved for a minute (shared/probe_server.py).
- **Logs**: one `events_applied` line per applied batch, naming the requests behind its events
  (`request_ids`, `trace_ids`: the events' `trace`, shared/tracing.py); the lines about one
  failing event carry its `request_id` and `trace_id`.
- **Metrics** by group: events consumed/failed/dead-lettered by type, pending entries, entries
  not yet delivered (lag) and the age of the oldest one not yet acknowledged.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis
import structlog
from prometheus_client import Counter, Gauge

from shared.events import DEAD_LETTER_STREAM, EVENT_STREAM, Event, InvalidEvent, parse_event
from shared.probe_server import Heartbeat

log = structlog.get_logger(component="stream_consumer")

CONSUMED = Counter(
    "events_consumed_total",
    "Events applied and acknowledged, by group and type.",
    ["group", "type"],
)
FAILED = Counter(
    "events_failed_total",
    "Attempts to apply an event that failed, by group and type.",
    ["group", "type"],
)
DEAD = Counter(
    "events_dead_lettered_total",
    "Entries moved to the dead-letter stream, by group and type.",
    ["group", "type"],
)
PENDING = Gauge(
    "events_consumer_pending_entries",
    "Entries delivered but not acknowledged, by group.",
    ["group"],
)
LAG = Gauge(
    "events_consumer_lag_entries",
    "Entries of the stream not yet delivered to the group.",
    ["group"],
)
OLDEST = Gauge(
    "events_consumer_oldest_unacked_age_seconds",
    "Age of the oldest entry the group has not acknowledged (pending or not yet delivered).",
    ["group"],
)


REQUESTS_PER_LINE = 50


@dataclass(frozen=True, slots=True)
class Delivered:
    """One valid event as read from the stream."""

    entry_id: str
    event: Event
    data: Any  # the validated payload model of event.type


Apply = Callable[[Sequence[Delivered]], None]


def stream_names(prefix: str) -> tuple[str, str]:
    """The event stream and its dead-letter stream under a Redis key prefix."""
    return f"{prefix}{EVENT_STREAM}", f"{prefix}{DEAD_LETTER_STREAM}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def stream_lost(exc: redis.ResponseError) -> bool:
    """Whether a reply error means the stream (and so the group) is gone: NOGROUP on the next
    command, or, for a consumer blocked in XREADGROUP when the key was deleted (Redis 7),
    "UNBLOCKED the stream key no longer exists"."""
    text = str(exc)
    return "NOGROUP" in text or text.startswith("UNBLOCKED")


def entry_age_seconds(entry_id: str) -> float:
    """Stream entry ids start with their append time in milliseconds."""
    return max(0.0, time.time() - int(entry_id.split("-", 1)[0]) / 1000)


def log_applied(group: str, delivered: Sequence[Delivered]) -> None:
    """One line per applied batch naming the requests behind its events (shared/tracing.py):
    `request_ids` and, at the same positions, their `trace_ids`. Not a line per event: at
    thousands of events a second that would cost a good share of the consumer's CPU. A batch of
    more than `REQUESTS_PER_LINE` requests is told in several lines (each under the 16 KiB at
    which container runtimes split a log line)."""
    traces: dict[str, str | None] = {}
    for one in delivered:
        trace = one.event.trace
        if trace is not None and trace.request_id is not None and trace.request_id not in traces:
            traces[trace.request_id] = trace.trace_id
    request_ids = list(traces)
    if len(request_ids) <= REQUESTS_PER_LINE:
        log.info(
            "events_applied",
            group=group,
            events=len(delivered),
            request_ids=request_ids,
            trace_ids=list(traces.values()),
        )
        return
    parts = (len(request_ids) + REQUESTS_PER_LINE - 1) // REQUESTS_PER_LINE
    for part in range(parts):
        chunk = request_ids[part * REQUESTS_PER_LINE : (part + 1) * REQUESTS_PER_LINE]
        log.info(
            "events_applied",
            group=group,
            events=len(delivered),
            part=f"{part + 1}/{parts}",
            request_ids=chunk,
            trace_ids=[traces[request_id] for request_id in chunk],
        )


class StreamConsumer:
    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str,
        group: str,
        consumer: str,
        apply: Apply,
        batch_size: int = 500,
        block_ms: int = 1000,
        claim_idle_ms: int = 30_000,
        max_deliveries: int = 5,
    ) -> None:
        # redis-py types its stream replies loosely (a union per call); the shapes used here are
        # those of Redis 6.2+ with decode_responses off.
        self.client: Any = client
        self.stream, self.dead_letters = stream_names(prefix)
        self.group = group
        self.consumer = consumer
        self.apply = apply
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.max_deliveries = max_deliveries
        self.stopping = threading.Event()
        self.heartbeat = Heartbeat()
        self._next_reclaim = 0.0
        self._next_gauges = 0.0

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        while not self.stopping.is_set():
            self.heartbeat.beat()
            try:
                self.ensure_group()
                while not self.stopping.is_set():
                    self.step()
            except redis.ResponseError as exc:
                if not stream_lost(exc):
                    raise
                log.warning("consumer_group_missing", group=self.group)  # Redis lost its data
            except redis.ConnectionError as exc:
                log.warning("consumer_redis_unavailable", error=type(exc).__name__)
                self.stopping.wait(0.5)  # Redis is down or restarting: try again shortly

    def ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            log.info("consumer_group_created", group=self.group)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def step(self) -> int:
        """One read (and, every few seconds, a reclaim and the gauges); returns entries handled."""
        self.heartbeat.beat()
        now = time.monotonic()
        handled = 0
        if now >= self._next_reclaim:
            self._next_reclaim = now + max(1.0, self.claim_idle_ms / 4000)
            handled += self.reclaim()
        if now >= self._next_gauges:
            self._next_gauges = now + 5.0
            self.update_gauges()
        response = self.client.xreadgroup(
            self.group,
            self.consumer,
            {self.stream: ">"},
            count=self.batch_size,
            block=self.block_ms,
        )
        for _, entries in response or ():
            handled += self.handle([(_text(entry_id), fields) for entry_id, fields in entries])
        return handled

    # --- handling ---------------------------------------------------------------------------

    def handle(self, entries: Sequence[tuple[str, Any]]) -> int:
        valid: list[Delivered] = []
        for entry_id, fields in entries:
            raw = (fields or {}).get(b"event") or (fields or {}).get("event")
            try:
                if raw is None:
                    raise InvalidEvent("the entry has no `event` field")
                event, data = parse_event(raw)
            except InvalidEvent as exc:
                self.dead_letter(entry_id, raw, reason=f"invalid event: {exc}", deliveries=1)
                continue
            valid.append(Delivered(entry_id, event, data))
        if not valid:
            return len(entries)
        try:
            self.apply(valid)
            self._ack(valid)
            log_applied(self.group, valid)
        except Exception as exc:  # noqa: BLE001 - any failure of the batch: isolate its events
            log.warning("batch_failed", group=self.group, events=len(valid), error=repr(exc)[:300])
            for one in valid:
                # One event at a time (the rare path): every line about it names its request.
                trace = one.event.trace
                with structlog.contextvars.bound_contextvars(
                    request_id=trace.request_id if trace else None,
                    trace_id=trace.trace_id if trace else None,
                ):
                    try:
                        self.apply([one])
                        self._ack([one])
                        log_applied(self.group, [one])
                    except Exception as single:  # noqa: BLE001 - stays pending; reclaimed later
                        FAILED.labels(self.group, one.event.type).inc()
                        log.warning(
                            "event_failed",
                            group=self.group,
                            event_id=str(one.event.id),
                            type=one.event.type,
                            error=repr(single)[:300],
                        )
        return len(entries)

    def _ack(self, delivered: Sequence[Delivered]) -> None:
        self.client.xack(self.stream, self.group, *[one.entry_id for one in delivered])
        for one in delivered:
            CONSUMED.labels(self.group, one.event.type).inc()

    def reclaim(self) -> int:
        """Entries idle past `claim_idle_ms`: dead-lettered after `max_deliveries`, else retried."""
        stuck = self.client.xpending_range(
            self.stream,
            self.group,
            min="-",
            max="+",
            count=self.batch_size,
            idle=self.claim_idle_ms,
        )
        if not stuck:
            return 0
        deliveries = {_text(item["message_id"]): int(item["times_delivered"]) for item in stuck}
        claimed = self.client.xclaim(
            self.stream, self.group, self.consumer, self.claim_idle_ms, list(deliveries)
        )
        retry: list[tuple[str, Any]] = []
        for entry_id, fields in claimed:
            entry_id = _text(entry_id)
            # XCLAIM counted this delivery too.
            count = deliveries.get(entry_id, 0) + 1
            if count > self.max_deliveries:
                raw = (fields or {}).get(b"event")
                self.dead_letter(
                    entry_id,
                    raw,
                    reason=f"not applied after {count - 1} deliveries",
                    deliveries=count - 1,
                )
            else:
                retry.append((entry_id, fields))
        # Entries trimmed from the stream while pending come back empty: nothing to apply.
        gone = set(deliveries) - {_text(entry_id) for entry_id, _ in claimed}
        if gone:
            self.client.xack(self.stream, self.group, *gone)
        if retry:
            self.handle(retry)
        return len(claimed)

    def dead_letter(
        self, entry_id: str, raw: bytes | str | None, *, reason: str, deliveries: int
    ) -> None:
        event_type = "unknown"
        if raw is not None:
            with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
                event_type = str(orjson.loads(raw).get("type", "unknown"))[:64]
        self.client.xadd(
            self.dead_letters,
            {
                "event": raw if raw is not None else b"",
                "entry_id": entry_id,
                "group": self.group,
                "reason": reason[:1000],
                "deliveries": deliveries,
            },
            maxlen=100_000,
            approximate=True,
        )
        self.client.xack(self.stream, self.group, entry_id)
        DEAD.labels(self.group, event_type).inc()
        log.error(
            "event_dead_lettered",
            group=self.group,
            entry_id=entry_id,
            type=event_type,
            reason=reason[:300],
        )

    # --- lag --------------------------------------------------------------------------------

    def update_gauges(self) -> None:
        groups = {_text(g["name"]): g for g in self.client.xinfo_groups(self.stream)}
        info = groups.get(self.group)
        if info is None:
            return
        PENDING.labels(self.group).set(int(info["pending"]))
        last_delivered = _text(info["last-delivered-id"])
        lag = info.get("lag")
        undelivered = self.client.xrange(self.stream, min=f"({last_delivered}", count=1)
        if lag is None:  # Redis before 7 does not report it: an upper-bounded count
            lag = len(self.client.xrange(self.stream, min=f"({last_delivered}", count=10_000))
        LAG.labels(self.group).set(int(lag))
        oldest: str | None = None
        if int(info["pending"]):
            summary = self.client.xpending(self.stream, self.group)
            oldest = _text(summary["min"]) if summary and summary.get("min") else None
        if oldest is None and undelivered:
            oldest = _text(undelivered[0][0])
        OLDEST.labels(self.group).set(entry_age_seconds(oldest) if oldest else 0.0)
