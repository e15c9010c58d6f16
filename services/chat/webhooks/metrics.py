"""Metrics of the webhook delivery process (the stream consumer adds its own, by group)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

DELIVERIES = Counter(
    "webhook_deliveries_total",
    "Delivery attempts by outcome: delivered, failed (to be retried) or dead (given up).",
    ["outcome"],
)
ENQUEUED = Counter(
    "webhook_deliveries_enqueued_total", "Deliveries created from events (one per endpoint)."
)
ATTEMPT_SECONDS = Histogram(
    "webhook_attempt_duration_seconds",
    "Duration of one HTTP attempt, by outcome.",
    ["outcome"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DELIVERY_LATENCY = Histogram(
    "webhook_delivery_latency_seconds",
    "From the event's occurrence to its successful delivery (retries included).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 3 * 3600, 12 * 3600),
)
BACKLOG = Gauge(
    "webhook_deliveries_due",
    "Deliveries due (pending or to be retried, endpoint active) and not being sent yet.",
)
OLDEST_DUE = Gauge(
    "webhook_oldest_due_age_seconds", "How long the longest-waiting due delivery has been due."
)
ERRORS = Counter(
    "webhook_process_errors_total",
    "Failures of the process's own work, by dependency.",
    ["dependency"],
)
