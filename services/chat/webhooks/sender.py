"""Sending deliveries: one HTTP attempt (signed, no redirects, bounded in time) and the retry
schedule; `Sender` is one thread of the process that claims due deliveries and sends them."""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import orjson
import psycopg
import structlog

from services.chat.webhooks import queue, signing
from services.chat.webhooks.metrics import ATTEMPT_SECONDS, DELIVERIES, DELIVERY_LATENCY, ERRORS
from services.chat.webhooks.settings import WebhookSettings
from shared import tracing
from shared.db.pool import plain_dsn
from shared.events import EventTrace
from shared.probe_server import STALL_SECONDS, Heartbeat

log = structlog.get_logger(component="webhooks")

USER_AGENT = "chat-platform-webhooks/1"
EXCERPT_BYTES = 512


def backoff_seconds(
    attempt: int,
    *,
    base: float,
    multiplier: float,
    cap: float,
    rng: random.Random | None = None,
) -> float:
    """The wait after failed attempt `attempt` (1-based): base * multiplier^(attempt-1), capped,
    then jittered to between half and all of it, so receivers that failed together are not
    retried all at once (yet the wait still grows with each attempt)."""
    exponent = min(attempt - 1, 64)  # beyond that the cap applies anyway; no float overflow
    delay = min(cap, base * multiplier**exponent)
    return delay * (0.5 + 0.5 * (rng or random).random())


def retry_after_seconds(value: str | None) -> float | None:
    """A `Retry-After` header (seconds or an HTTP date) in seconds; None when absent or bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def trace_of(body: str) -> EventTrace | None:
    """The `trace` of the event a delivery sends, when it has one."""
    try:
        trace = orjson.loads(body).get("trace")
        if not isinstance(trace, dict):
            return None
        return EventTrace.model_validate(trace)
    except (ValueError, AttributeError):  # not our JSON object: nothing to name
        return None


def request_of(body: str) -> dict[str, str]:
    """`request_id` and `trace_id` of the event a delivery sends (its `trace`), when it has one."""
    parsed = trace_of(body)
    if parsed is None:
        return {}
    fields = {"request_id": parsed.request_id, "trace_id": parsed.trace_id}
    return {key: value for key, value in fields.items() if value is not None}


def trace_headers(body: str) -> dict[str, str]:
    """The event's `traceparent`, well-formed, as the delivery's header: the receiver's work
    joins the trace of the request behind the event, as a child of the span that wrote it."""
    parsed = trace_of(body)
    if parsed is None or tracing.parse_traceparent(parsed.traceparent) is None:
        return {}
    return {tracing.TRACEPARENT_HEADER: str(parsed.traceparent)}


def attempt(http: httpx.Client, claimed: queue.Claimed, settings: WebhookSettings) -> queue.Outcome:
    """POSTs the delivery once and says what came of it (nothing is stored here)."""
    body = claimed.body.encode()
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        **trace_headers(claimed.body),
        **signing.headers(
            claimed.secrets, msg_id=str(claimed.event_id), timestamp=int(time.time()), body=body
        ),
    }
    started = time.perf_counter()
    status_code: int | None = None
    excerpt: str | None = None
    retry_after: float | None = None
    try:
        # Streamed, so a receiver answering a huge body costs us only the excerpt we keep.
        with http.stream("POST", claimed.url, content=body, headers=headers) as response:
            status_code = response.status_code
            retry_after = retry_after_seconds(response.headers.get("retry-after"))
            for chunk in response.iter_bytes(EXCERPT_BYTES):
                excerpt = chunk[:EXCERPT_BYTES].decode("utf-8", errors="replace")
                break
        error = None if 200 <= status_code < 300 else f"HTTP {status_code}"
    except httpx.TimeoutException as exc:
        error = f"timeout ({type(exc).__name__}) after {settings.timeout_seconds:g} s"
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
    duration = time.perf_counter() - started
    if error is None:
        return queue.Outcome("delivered", status_code, None, excerpt, duration)
    if claimed.attempt >= settings.max_attempts:
        return queue.Outcome("dead", status_code, error, excerpt, duration)
    wait = backoff_seconds(
        claimed.attempt,
        base=settings.backoff_base_seconds,
        multiplier=settings.backoff_multiplier,
        cap=settings.backoff_max_seconds,
    )
    if retry_after is not None and status_code in (429, 503):
        # The receiver said when it can take more: wait that long, within the same cap.
        wait = max(wait, min(retry_after, settings.backoff_max_seconds))
    return queue.Outcome("failed", status_code, error, excerpt, duration, retry_in_seconds=wait)


class Sender(threading.Thread):
    """Claims due deliveries one at a time and sends them until told to stop."""

    def __init__(
        self,
        settings: WebhookSettings,
        *,
        name: str,
        stopping: threading.Event,
        wakeup: threading.Event,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.settings = settings
        self.stopping = stopping
        self.wakeup = wakeup
        # One attempt may take a few timeouts (connect, send, read); past that it is stuck.
        self.heartbeat = Heartbeat(stall_seconds=STALL_SECONDS + 3 * settings.timeout_seconds)

    def run(self) -> None:
        # Redirects are not followed: a receiver moving is a failure its owner should see, and
        # following one could send the signed event somewhere nobody registered. No env proxy.
        with httpx.Client(
            timeout=self.settings.timeout_seconds, follow_redirects=False, trust_env=False
        ) as http:
            while not self.stopping.is_set():
                self.heartbeat.beat()
                try:
                    with psycopg.connect(
                        plain_dsn(self.settings.database_url), autocommit=True, connect_timeout=5
                    ) as conn:
                        self._serve(conn, http)
                except psycopg.Error as exc:
                    ERRORS.labels("postgres").inc()
                    log.warning("webhook_sender_postgres_error", error=type(exc).__name__)
                    self.stopping.wait(1.0)  # reconnect backoff

    def _serve(self, conn: queue.Conn, http: httpx.Client) -> None:
        while not self.stopping.is_set():
            self.heartbeat.beat()
            # Cleared before looking: deliveries enqueued (committed) before this are found by
            # the claim, and a wake-up set after it ends the wait below at once.
            self.wakeup.clear()
            claimed = queue.claim_due(conn, lease_seconds=self.settings.lease_seconds)
            if claimed is None:
                self.wakeup.wait(self.settings.poll_seconds)
                continue
            try:
                # The delivery's lines name the request behind its event (shared/tracing.py).
                with structlog.contextvars.bound_contextvars(**request_of(claimed.body)):
                    self._send(conn, http, claimed)
            except psycopg.Error:
                raise  # reconnects; the delivery is due again when its lease ends
            except Exception:  # noqa: BLE001 - a bug must not silently end this thread
                ERRORS.labels("sender").inc()
                log.exception("webhook_send_crashed", delivery_id=claimed.id)

    def _send(self, conn: queue.Conn, http: httpx.Client, claimed: queue.Claimed) -> None:
        outcome = attempt(http, claimed, self.settings)
        if not queue.record(conn, claimed, outcome):
            log.warning("webhook_lease_lost", delivery_id=claimed.id, attempt=claimed.attempt)
            return
        DELIVERIES.labels(outcome.status).inc()
        ATTEMPT_SECONDS.labels(outcome.status).observe(outcome.duration_seconds)
        fields: dict[str, Any] = {
            "delivery_id": claimed.id,
            "endpoint_id": claimed.endpoint_id,
            "event_id": str(claimed.event_id),
            "type": claimed.event_type,
            "attempt": claimed.attempt,
            "status_code": outcome.status_code,
            "duration": round(outcome.duration_seconds, 4),
        }
        if outcome.status == "delivered":
            DELIVERY_LATENCY.observe(
                max(0.0, (datetime.now(UTC) - claimed.occurred_at).total_seconds())
            )
            log.info("webhook_delivered", **fields)
        elif outcome.status == "failed":
            log.info(
                "webhook_attempt_failed",
                error=outcome.error,
                retry_in=round(outcome.retry_in_seconds or 0.0, 3),
                **fields,
            )
        else:
            log.warning("webhook_dead", error=outcome.error, **fields)
