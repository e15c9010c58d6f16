"""The platform's Grafana dashboard, built with grafana-foundation-sdk.

`python -m deploy.grafana.dashboard` writes deploy/grafana/dashboards/chat-platform.json (what
Grafana provisions: deploy/grafana/provisioning/); `--check` only compares and exits 1 when the
committed file is not what this script builds. tests/deploy/ runs the check and verifies that
every series a panel queries is one the code exports.

One row per concern: the SLOs, then each process (gateway, chat, analytics with its aggregator,
AI worker), the AI job queue, the LLM, the event flow (outbox relay and consumer groups) and
webhooks. Queries select on the Prometheus job names of deploy/prometheus/*.yml, and reuse the
recording rules of deploy/prometheus/rules/recording.yml where one exists, so the dashboard
shows what the alerts compare. The datasource is a variable: any Prometheus works.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from string import ascii_uppercase

from grafana_foundation_sdk.builders import common as options
from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    GridPos,
    Threshold,
    ThresholdsMode,
)

OUTPUT = Path(__file__).resolve().parent / "dashboards" / "chat-platform.json"
UID = "chat-platform"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
# Routes that are not traffic: probes and scrapes.
NOT_TRAFFIC = 'route!~"/metrics|/healthz|/readyz"'

Panel = timeseries.Panel | stat.Panel


def query(expr: str, legend: str = "") -> prometheus.Dataquery:
    target = prometheus.Dataquery().expr(expr).datasource(DATASOURCE)
    return target.legend_format(legend) if legend else target


def graph(
    title: str,
    description: str,
    unit: str,
    *targets: prometheus.Dataquery,
    width: int = 8,
    stacked: bool = False,
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .grid_pos(GridPos(h=8, w=width, x=0, y=0))
        .line_width(1)
        .fill_opacity(10)
        .legend(
            options.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(options.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI))
    )
    if stacked:
        panel = panel.stacking(options.StackingConfig().mode(common.StackingMode.NORMAL))
    for ref_id, target in zip(ascii_uppercase[: len(targets)], targets, strict=True):
        panel = panel.with_target(target.ref_id(ref_id))
    return panel


def single(
    title: str,
    description: str,
    unit: str,
    target: prometheus.Dataquery,
    *,
    thresholds: list[tuple[float | None, str]],
    width: int = 4,
) -> stat.Panel:
    steps = [Threshold(value=value, color=color) for value, color in thresholds]
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .grid_pos(GridPos(h=5, w=width, x=0, y=0))
        .thresholds(dashboard.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(steps))
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.AREA)
        .reduce_options(options.ReduceDataOptions().calcs(["lastNotNull"]))
        .with_target(target.ref_id("A"))
    )


def http_panels(job: str) -> list[Panel]:
    """Golden signals of one HTTP service: traffic, errors, latency, saturation."""
    selector = f'job="{job}",{NOT_TRAFFIC}'
    return [
        graph(
            f"{job}: requests by status",
            f"Requests {job} answered per second, by status code (probes and scrapes aside).",
            "reqps",
            query(
                f"sum by (status) (rate(http_requests_total{{{selector}}}[$__rate_interval]))",
                "{{status}}",
            ),
            stacked=True,
        ),
        graph(
            f"{job}: 5xx by route",
            f"Share of {job}'s requests answered with a 5xx, by route.",
            "percentunit",
            query(
                f'sum by (route) (rate(http_requests_total{{{selector},status=~"5.."}}'
                f"[$__rate_interval])) / on () group_left "
                f"sum(rate(http_requests_total{{{selector}}}[$__rate_interval]))",
                "{{route}}",
            ),
        ),
        graph(
            f"{job}: latency p99 by route",
            f"99th percentile of {job}'s response time (last byte), by route; p50 over all.",
            "s",
            query(
                "histogram_quantile(0.99, sum by (route, le) (rate("
                f"http_request_duration_seconds_bucket{{{selector}}}[$__rate_interval])))",
                "p99 {{route}}",
            ),
            query(
                "histogram_quantile(0.5, sum by (le) (rate("
                f"http_request_duration_seconds_bucket{{{selector}}}[$__rate_interval])))",
                "p50 all",
            ),
        ),
        graph(
            f"{job}: in progress",
            f"Requests {job} is serving right now, summed over its replicas.",
            "short",
            query(f'sum by (method) (http_requests_in_progress{{job="{job}"}})', "{{method}}"),
        ),
        db_pool_panel(job),
        graph(
            f"{job}: replicas up",
            f"Instances of {job} that answered Prometheus's last scrape.",
            "short",
            query(f'sum(up{{job="{job}"}})', "up"),
            query(f'count(up{{job="{job}"}})', "known"),
        ),
    ]


def db_pool_panel(job: str) -> Panel:
    """Saturation of the process's database pool: near 100%, requests queue for a connection."""
    return graph(
        f"{job}: database pool in use",
        f"Share of {job}'s database connections (pool maximum, summed over replicas) in use.",
        "percentunit",
        query(
            f'sum(db_pool_connections{{job="{job}",state="in_use"}}) / '
            f'sum(db_pool_max_connections{{job="{job}"}})',
            "in use",
        ),
    )


def slo_row() -> list[Panel]:
    ok, warn, bad = "green", "orange", "red"
    return [
        single(
            "Gateway availability (1 h)",
            "Share of gateway requests answered without a 5xx over the last hour. SLO: 99.9%.",
            "percentunit",
            query("1 - gateway:slo_availability_errors:ratio_rate1h"),
            thresholds=[(None, bad), (0.99, warn), (0.999, ok)],
        ),
        single(
            "Gateway latency < 0.5 s (1 h)",
            "Share of gateway requests (AI and streaming routes aside) answered within 0.5 s "
            "over the last hour. SLO: 99%.",
            "percentunit",
            query("1 - gateway:slo_latency_errors:ratio_rate1h"),
            thresholds=[(None, bad), (0.95, warn), (0.99, ok)],
        ),
        single(
            "AI job success (1 h)",
            "Share of finished AI jobs that ended with a reply over the last hour. SLO: 99%.",
            "percentunit",
            query("1 - ai:slo_job_errors:ratio_rate1h"),
            thresholds=[(None, bad), (0.95, warn), (0.99, ok)],
        ),
        single(
            "Processes down",
            "Scrape targets that did not answer (every process of every job).",
            "short",
            query("count(up == 0) or vector(0)"),
            thresholds=[(None, ok), (1, bad)],
        ),
        graph(
            "Error budget burn rate (1 h)",
            "How many times faster than the SLO allows each error budget burns, over the last "
            "hour. 14.4 (with the 5-minute window) pages.",
            "short",
            query("gateway:slo_availability_errors:ratio_rate1h / 0.001", "availability"),
            query("gateway:slo_latency_errors:ratio_rate1h / 0.01", "latency"),
            query("ai:slo_job_errors:ratio_rate1h / 0.01", "AI jobs"),
        ),
    ]


def gateway_row() -> list[Panel]:
    return [
        *http_panels("gateway"),
        graph(
            "Upstream outcomes",
            "Requests the gateway forwarded, by service and outcome (status code, timeout, "
            "connection error).",
            "reqps",
            query(
                "sum by (upstream, outcome) "
                "(rate(gateway_upstream_requests_total[$__rate_interval]))",
                "{{upstream}} {{outcome}}",
            ),
        ),
        graph(
            "Upstream latency p99",
            "Time until a service's response headers reach the gateway.",
            "s",
            query(
                "histogram_quantile(0.99, sum by (upstream, le) "
                "(rate(gateway_upstream_duration_seconds_bucket[$__rate_interval])))",
                "{{upstream}}",
            ),
        ),
        graph(
            "Rate limit decisions",
            "Per-user and login rate-limit checks by outcome; `error` means Redis failed and the "
            "request was let through.",
            "ops",
            query(
                "sum by (limit, outcome) "
                "(rate(gateway_rate_limit_decisions_total[$__rate_interval]))",
                "{{limit}} {{outcome}}",
            ),
            query(
                "sum by (limit) (rate(gateway_rate_limit_redis_calls_total[$__rate_interval]))",
                "{{limit}} Redis calls",
            ),
        ),
    ]


def analytics_row() -> list[Panel]:
    group = 'group="analytics"'
    return [
        *http_panels("analytics"),
        graph(
            "Aggregator: event to rollup lag",
            "From an event's occurrence to the commit of the rollups it changed (p50, p99).",
            "s",
            query(
                "histogram_quantile(0.99, sum by (le) "
                "(rate(analytics_event_lag_seconds_bucket[$__rate_interval])))",
                "p99",
            ),
            query(
                "histogram_quantile(0.5, sum by (le) "
                "(rate(analytics_event_lag_seconds_bucket[$__rate_interval])))",
                "p50",
            ),
        ),
        graph(
            "Aggregator: events applied",
            "Events the analytics group applied, by type; skipped ones (duplicates, deleted "
            "conversations) and failures.",
            "ops",
            query(
                f"sum by (type) (rate(events_consumed_total{{{group}}}[$__rate_interval]))",
                "{{type}}",
            ),
            query(
                "sum by (reason) (rate(analytics_events_skipped_total[$__rate_interval]))",
                "skipped {{reason}}",
            ),
            query(
                f"sum(rate(events_failed_total{{{group}}}[$__rate_interval]))",
                "failed",
            ),
        ),
        graph(
            "Aggregator: batch apply time p99",
            "Time to apply one batch of events (one transaction), and database retries.",
            "s",
            query(
                "histogram_quantile(0.99, sum by (le) "
                "(rate(analytics_batch_apply_seconds_bucket[$__rate_interval])))",
                "p99 batch",
            ),
        ),
        graph(
            "Aggregator: database retries",
            "Batches retried after a lost connection or a lock conflict.",
            "ops",
            query(
                "sum by (kind) (rate(analytics_aggregator_db_errors_total[$__rate_interval]))",
                "{{kind}}",
            ),
        ),
        graph(
            "Aggregator: consumer backlog",
            "Entries of chat.events the analytics group has not been delivered (lag) or not "
            "acknowledged (pending).",
            "short",
            query(f"max(events_consumer_lag_entries{{{group}}})", "lag"),
            query(f"max(events_consumer_pending_entries{{{group}}})", "pending"),
        ),
    ]


def worker_row() -> list[Panel]:
    return [
        graph(
            "Jobs finished by outcome",
            "AI jobs the workers finished per second: completed, incomplete (cancelled "
            "mid-reply), failed, duplicate (a redelivery of a finished job).",
            "ops",
            query("sum by (outcome) (rate(ai_jobs_total[$__rate_interval]))", "{{outcome}}"),
            stacked=True,
        ),
        graph(
            "Jobs in flight",
            "Replies being generated now, against the capacity of the replicas up "
            "(AI_WORKER_CONCURRENCY each; 32 by default).",
            "short",
            query("sum(ai_jobs_in_flight)", "in flight"),
            query('32 * sum(up{job="ai_worker"})', "capacity at 32 per replica"),
        ),
        graph(
            "Generation time",
            "From the start of a job's generation to its stored outcome (p50, p99).",
            "s",
            query(
                "histogram_quantile(0.99, sum by (le) "
                "(rate(ai_job_generation_seconds_bucket[$__rate_interval])))",
                "p99",
            ),
            query(
                "histogram_quantile(0.5, sum by (le) "
                "(rate(ai_job_generation_seconds_bucket[$__rate_interval])))",
                "p50",
            ),
        ),
        graph(
            "Sweeper and batches",
            "Jobs the sweeper expired or re-sent, batch jobs started, batches finished.",
            "ops",
            query("sum by (action) (rate(ai_jobs_swept_total[$__rate_interval]))", "{{action}}"),
            query("sum(rate(ai_batch_jobs_dispatched_total[$__rate_interval]))", "batch jobs"),
            query(
                "sum by (status) (rate(ai_batches_finished_total[$__rate_interval]))",
                "batches {{status}}",
            ),
        ),
        db_pool_panel("ai_worker"),
        graph(
            "Replicas up",
            "Worker processes that answered Prometheus's last scrape.",
            "short",
            query('sum(up{job="ai_worker"})', "up"),
            query('count(up{job="ai_worker"})', "known"),
        ),
    ]


def queue_row() -> list[Panel]:
    return [
        graph(
            "Broker queue",
            "Tasks waiting in the Redis queue (what the workers scale on), and taken by a "
            "worker but not acknowledged.",
            "short",
            query('max(ai_queue_messages{queue="ai"})', "waiting"),
            query("max(ai_queue_unacked_messages)", "unacked"),
        ),
        graph(
            "Oldest queued job",
            "How long the oldest chat.ai_jobs row no worker has started has waited. "
            "A minute pages (AIQueueOldestJobStale).",
            "s",
            query("max(ai_job_oldest_queued_age_seconds)", "oldest queued (s)"),
        ),
        graph(
            "Queued jobs",
            "chat.ai_jobs rows still queued.",
            "short",
            query("max(ai_jobs_queued)", "queued"),
        ),
        graph(
            "Queue wait",
            "From a job's creation to the start of its first generation (p50, p99).",
            "s",
            query(
                "histogram_quantile(0.99, sum by (le) "
                "(rate(ai_job_queue_wait_seconds_bucket[$__rate_interval])))",
                "p99",
            ),
            query(
                "histogram_quantile(0.5, sum by (le) "
                "(rate(ai_job_queue_wait_seconds_bucket[$__rate_interval])))",
                "p50",
            ),
        ),
        graph(
            "Queue exporter errors",
            "Scrapes whose queue gauges could not be read, by dependency.",
            "ops",
            query(
                "sum by (dependency) (rate(ai_queue_metrics_errors_total[$__rate_interval]))",
                "{{dependency}}",
            ),
        ),
    ]


def llm_row() -> list[Panel]:
    return [
        graph(
            "Model call duration",
            "One successful LLM call, request to complete answer, by model (p50, p99).",
            "s",
            query(
                "histogram_quantile(0.99, sum by (model, le) "
                "(rate(ai_llm_request_duration_seconds_bucket[$__rate_interval])))",
                "p99 {{model}}",
            ),
            query(
                "histogram_quantile(0.5, sum by (model, le) "
                "(rate(ai_llm_request_duration_seconds_bucket[$__rate_interval])))",
                "p50 {{model}}",
            ),
        ),
        graph(
            "Time to first token",
            "From sending a model call to its first streamed token, by model (p50, p99).",
            "s",
            query(
                "histogram_quantile(0.99, sum by (model, le) "
                "(rate(ai_llm_time_to_first_token_seconds_bucket[$__rate_interval])))",
                "p99 {{model}}",
            ),
            query(
                "histogram_quantile(0.5, sum by (model, le) "
                "(rate(ai_llm_time_to_first_token_seconds_bucket[$__rate_interval])))",
                "p50 {{model}}",
            ),
        ),
        graph(
            "Errors by kind",
            "Failed model calls (each retry counts): rate limits, 5xx, timeouts, connection "
            "errors, refusals.",
            "ops",
            query("sum by (kind) (rate(ai_llm_errors_total[$__rate_interval]))", "{{kind}}"),
            query(
                "sum(rate(ai_llm_request_duration_seconds_count[$__rate_interval]))",
                "successful calls",
            ),
        ),
        graph(
            "Tokens",
            "Tokens used per second, by model and kind (input, output).",
            "short",
            query(
                "sum by (model, kind) (rate(ai_llm_tokens_total[$__rate_interval]))",
                "{{model}} {{kind}}",
            ),
            stacked=True,
        ),
        graph(
            "Cost per hour",
            "Cost of generated replies at the agents' prices, by model.",
            "short",
            query("sum by (model) (rate(ai_llm_cost_total[$__rate_interval])) * 3600", "{{model}}"),
            stacked=True,
        ),
    ]


def events_row() -> list[Panel]:
    leader = "and on (job, instance) (outbox_relay_leader == 1)"
    return [
        graph(
            "Outbox backlog",
            "Events in chat.outbox not yet appended to the stream (the leading relay's view).",
            "short",
            query(f"max(outbox_backlog_events {leader})", "backlog"),
        ),
        graph(
            "Oldest unpublished event",
            "Age of the oldest outbox event not yet on the stream. 2 minutes pages "
            "(OutboxBacklogStale).",
            "s",
            query(f"max(outbox_oldest_unpublished_age_seconds {leader})", "oldest"),
        ),
        graph(
            "Published and relay health",
            "Events appended to chat.events by type; relay errors by dependency; replays "
            "after Redis lost data; relays leading (1 expected).",
            "ops",
            query(
                "sum by (type) (rate(outbox_events_published_total[$__rate_interval]))",
                "{{type}}",
            ),
            query(
                "sum by (dependency) (rate(outbox_relay_errors_total[$__rate_interval]))",
                "errors {{dependency}}",
            ),
            query("sum(increase(outbox_replays_total[$__rate_interval]))", "replays"),
            query("sum(outbox_relay_leader)", "leaders"),
        ),
        graph(
            "Consumer groups: oldest unacknowledged",
            "Age of the oldest event each group has not acknowledged. 5 minutes is a ticket, "
            "30 a page.",
            "s",
            query("max by (group) (events_consumer_oldest_unacked_age_seconds)", "{{group}}"),
        ),
        graph(
            "Consumer groups: lag and pending",
            "Entries not yet delivered to each group (lag) and delivered but not acknowledged "
            "(pending).",
            "short",
            query("max by (group) (events_consumer_lag_entries)", "lag {{group}}"),
            query("max by (group) (events_consumer_pending_entries)", "pending {{group}}"),
        ),
        graph(
            "Consumer groups: throughput and dead letters",
            "Events applied per second by group; failures and dead letters.",
            "ops",
            query(
                "sum by (group) (rate(events_consumed_total[$__rate_interval]))",
                "applied {{group}}",
            ),
            query(
                "sum by (group) (rate(events_failed_total[$__rate_interval]))",
                "failed {{group}}",
            ),
            query(
                "sum by (group) (increase(events_dead_lettered_total[$__rate_interval]))",
                "dead-lettered {{group}}",
            ),
        ),
    ]


def webhooks_row() -> list[Panel]:
    return [
        graph(
            "Delivery attempts by outcome",
            "HTTP attempts per second: delivered, failed (to be retried), dead (given up).",
            "ops",
            query(
                "sum by (outcome) (rate(webhook_deliveries_total[$__rate_interval]))",
                "{{outcome}}",
            ),
            query("sum(rate(webhook_deliveries_enqueued_total[$__rate_interval]))", "enqueued"),
        ),
        graph(
            "Due backlog",
            "Deliveries due and not being sent, and how long the oldest has been due.",
            "short",
            query("max(webhook_deliveries_due)", "due"),
        ),
        graph(
            "Oldest due delivery",
            "How long the longest-waiting due delivery has waited (10 minutes for 15 is a ticket).",
            "s",
            query("max(webhook_oldest_due_age_seconds)", "oldest due"),
        ),
        graph(
            "Latency",
            "One attempt's duration (p99) and event-to-delivery latency, retries included "
            "(p50, p99).",
            "s",
            query(
                "histogram_quantile(0.99, sum by (le) "
                "(rate(webhook_attempt_duration_seconds_bucket[$__rate_interval])))",
                "attempt p99",
            ),
            query(
                "histogram_quantile(0.99, sum by (le) "
                "(rate(webhook_delivery_latency_seconds_bucket[$__rate_interval])))",
                "delivery p99",
            ),
            query(
                "histogram_quantile(0.5, sum by (le) "
                "(rate(webhook_delivery_latency_seconds_bucket[$__rate_interval])))",
                "delivery p50",
            ),
        ),
        graph(
            "Process errors",
            "Failures of the webhook process's own work, by dependency.",
            "ops",
            query(
                "sum by (dependency) (rate(webhook_process_errors_total[$__rate_interval]))",
                "{{dependency}}",
            ),
        ),
    ]


ROWS: list[tuple[str, list[Panel]]] = [
    ("Service level objectives", slo_row()),
    ("Gateway", gateway_row()),
    ("Chat", http_panels("chat")),
    ("Analytics (API and aggregator)", analytics_row()),
    ("AI worker", worker_row()),
    ("AI job queue", queue_row()),
    ("LLM", llm_row()),
    ("Events: outbox relay and consumer groups", events_row()),
    ("Webhooks", webhooks_row()),
]


def build() -> dict[str, object]:
    board = (
        dashboard.Dashboard("Chat platform")
        .uid(UID)
        .description(
            "Golden signals of every process, the AI job queue, the LLM, the event flow and "
            "webhooks. Generated by deploy/grafana/dashboard.py: edit that, not this JSON."
        )
        .tags(["chat-platform"])
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .refresh("30s")
        .time("now-3h", "now")
        .timezone("browser")
        .with_variable(
            dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus")
        )
    )
    panel_id = 0
    for title, panels in ROWS:
        panel_id += 1
        board = board.with_row(dashboard.Row(title).id(panel_id))
        for panel in panels:
            panel_id += 1
            board = board.with_panel(panel.id(panel_id))
    return json.loads(json.dumps(board.build(), cls=JSONEncoder))


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.grafana.dashboard")
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed JSON differs")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT} is stale: run python -m deploy.grafana.dashboard", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
