"""A real Prometheus scraping the test stack: the scrape config of deploy/prometheus/prometheus.yml
(its jobs and labels, pointed at the stack's ports, scraping every second) with the rule files of
deploy/prometheus/rules/. After a little traffic through the gateway (accounts, conversations,
messages, an AI reply from the stand-in LLM, a dashboard read), Prometheus's own HTTP API says:
every process is a target that is up; the golden signals of every process are there and move;
every recording and alerting rule evaluates; and every query of the Grafana dashboard evaluates,
with data for all but the panels that only show failures (listed below, with the reason).

Prometheus is `make install`'s (extracted from Debian's package into .venv/bin; the test is
skipped without it), on a free loopback port with a temporary storage directory, stopped by its
PID at the end.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from deploy.grafana import dashboard
from deploy.local.processes import Deadline, ManagedProcess, free_port
from deploy.local.stack import SERVICES
from tests.deploy.tools import ROOT, tool
from tests.harness import Stack, User, client, envelope_data, log_in

PROMETHEUS = ROOT / "deploy" / "prometheus"
# How often Prometheus scrapes the stack and evaluates the rules.
INTERVAL = "1s"
# `$__rate_interval` of the dashboard's queries: Grafana's is at least four scrape intervals.
RATE_INTERVAL = "30s"
# Every wait below polls Prometheus until this passes.
WAIT_SECONDS = 40.0
POLL_SECONDS = 0.25

NOT_TRAFFIC = 'route!~"/metrics|/healthz|/readyz"'

# Dashboard queries that legitimately return nothing after healthy traffic: they show failures,
# or work this traffic does not do, read from counters with labels (a labelled series exists only
# once something was counted). Keyed by (panel title, refId); each is still evaluated and must
# not be an error; after other tests (failures on purpose) some have data, which is fine.
# Anything not listed here must return data.
MAY_BE_EMPTY: dict[tuple[str, str], str] = {
    ("gateway: 5xx by route", "A"): "no request fails",
    ("chat: 5xx by route", "A"): "no request fails",
    ("analytics: 5xx by route", "A"): "no request fails",
    ("Aggregator: events applied", "B"): "nothing skipped (no duplicate, no deleted conversation)",
    ("Aggregator: events applied", "C"): "no event fails",
    ("Aggregator: database retries", "A"): "the database never fails",
    ("Sweeper and batches", "A"): "no job to expire or re-send",
    ("Sweeper and batches", "C"): "no batch regeneration",
    ("Queue exporter errors", "A"): "Redis and Postgres answer every scrape",
    ("Errors by kind", "A"): "the model never fails",
    ("Published and relay health", "B"): "the relay never fails",
    ("Consumer groups: throughput and dead letters", "B"): "no event fails",
    ("Consumer groups: throughput and dead letters", "C"): "no event is dead-lettered",
    ("Delivery attempts by outcome", "A"): "no webhook endpoint is registered",
    ("Latency", "A"): "no webhook endpoint is registered",
    ("Process errors", "A"): "the webhook process never fails",
}


# --- Prometheus ----------------------------------------------------------------------------


def scrape_config(stack: Stack) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with each target moved from the process's default port
    to the stack's, scraping and evaluating every second, and its rule files by absolute path."""
    config: dict[str, Any] = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    ports = {str(spec.default_port): stack.env[spec.port_env] for spec in SERVICES if spec.port_env}
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            static["targets"] = [
                f"127.0.0.1:{ports[target.rsplit(':', 1)[1]]}" for target in static["targets"]
            ]
    config["global"].update(
        scrape_interval=INTERVAL, scrape_timeout=INTERVAL, evaluation_interval=INTERVAL
    )
    config["rule_files"] = [str(PROMETHEUS / path) for path in config["rule_files"]]
    return config


class PrometheusAPI:
    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=10, trust_env=False)

    def get(self, path: str, **params: str) -> Any:
        response = self.http.get(path, params=params)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's samples (a scalar answer as one sample without labels)."""
        data = self.get("/api/v1/query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def value(self, expr: str) -> float:
        """The single value of `expr`; 0 when it has no sample (a series not created yet)."""
        samples = self.query(expr)
        assert len(samples) <= 1, (expr, samples)
        return float(samples[0]["value"][1]) if samples else 0.0


def eventually(check: Callable[[], str | None], what: str, deadline: Deadline) -> None:
    """Polls `check` (None: done; a string: what is still missing) until the deadline."""
    while True:
        missing = check()
        if missing is None:
            return
        if deadline.expired():
            pytest.fail(f"{what} within {deadline.seconds:.0f} s; still: {missing}")
        # The poll period of the wait, not a synchronisation: the check above decides.
        time.sleep(POLL_SECONDS)


# --- the traffic ---------------------------------------------------------------------------


def register(gateway: httpx.Client) -> User:
    email = f"prom-{secrets.token_hex(6)}@example.com"
    password = f"Pw-{secrets.token_urlsafe(12)}-9a"
    body = {"email": email, "password": password, "name": "Prometheus test"}
    envelope_data(gateway.post("/auth/register", json=body), "register")
    return log_in(gateway, email, password)


def drive_traffic(stack: Stack) -> None:
    """Two users, two conversations each with two messages, one AI reply, lists and a
    dashboard read: every process has work (the events go through relay, aggregator and
    webhooks)."""
    with client(stack.gateway_url) as gateway:
        users = [register(gateway) for _ in range(2)]
        conversations: list[tuple[User, int]] = []
        for user in users:
            for n in range(2):
                created = envelope_data(
                    gateway.post(
                        "/chat/conversations", json={"title": f"scrape {n}"}, headers=user.headers
                    ),
                    "create conversation",
                )
                conversation_id = created["conversation_id"]
                conversations.append((user, conversation_id))
                for text in ("hello", "how are you?"):
                    envelope_data(
                        gateway.post(
                            f"/chat/conversations/{conversation_id}/messages",
                            json={"content": text, "sender_type": "user"},
                            headers=user.headers,
                        ),
                        "post message",
                    )
            envelope_data(gateway.get("/chat/conversations", headers=user.headers), "list")
            envelope_data(
                gateway.get("/chat/analytics/dashboard", headers=user.headers), "dashboard"
            )
        user, conversation_id = conversations[0]
        envelope_data(
            gateway.post(
                f"/chat/conversations/{conversation_id}/ai-response",
                json={"message": "Tell me something, please."},
                headers=user.headers,
                timeout=60,
            ),
            "ai-response",
        )


# --- the fixture ---------------------------------------------------------------------------

# The golden signals every process must show moving after the traffic: (job, counter query).
MOVING: list[tuple[str, str]] = [
    *[
        (job, f'sum(http_requests_total{{job="{job}",{NOT_TRAFFIC}}})')
        for job in ("gateway", "chat", "analytics")
    ],
    *[
        (job, f'sum(http_request_duration_seconds_count{{job="{job}",{NOT_TRAFFIC}}})')
        for job in ("gateway", "chat", "analytics")
    ],
    ("gateway", 'sum(gateway_upstream_requests_total{job="gateway"})'),
    ("ai_worker", 'sum(ai_jobs_total{job="ai_worker",outcome="completed"})'),
    ("ai_worker", 'sum(ai_job_generation_seconds_count{job="ai_worker"})'),
    ("ai_worker", 'sum(ai_llm_tokens_total{job="ai_worker"})'),
    ("relay", 'sum(outbox_events_published_total{job="relay"})'),
    ("aggregator", 'sum(events_consumed_total{job="aggregator",group="analytics"})'),
    ("aggregator", 'sum(analytics_batch_apply_seconds_count{job="aggregator"})'),
    ("webhooks", 'sum(events_consumed_total{job="webhooks",group="webhooks"})'),
]
# Gauges that must be present (their value may be anything, 0 included).
PRESENT: list[tuple[str, str]] = [
    *[
        (job, f'http_requests_in_progress{{job="{job}"}}')
        for job in ("gateway", "chat", "analytics")
    ],
    ("ai_worker", 'ai_queue_messages{job="ai_worker",queue="ai"}'),
    ("ai_worker", 'ai_queue_unacked_messages{job="ai_worker"}'),
    ("ai_worker", 'ai_jobs_queued{job="ai_worker"}'),
    ("ai_worker", 'ai_job_oldest_queued_age_seconds{job="ai_worker"}'),
    ("ai_worker", 'ai_jobs_in_flight{job="ai_worker"}'),
    ("relay", 'outbox_relay_leader{job="relay"} == 1'),
    ("relay", 'outbox_backlog_events{job="relay"}'),
    ("aggregator", 'events_consumer_lag_entries{job="aggregator",group="analytics"}'),
    ("webhooks", 'events_consumer_lag_entries{job="webhooks",group="webhooks"}'),
    ("webhooks", 'webhook_deliveries_due{job="webhooks"}'),
]


@dataclass
class Live:
    api: PrometheusAPI
    config: dict[str, Any]
    baseline: dict[str, float]


@pytest.fixture(scope="module")
def live(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """Prometheus scraping the stack, every target up, then the traffic."""
    binary = tool("prometheus")
    workdir = tmp_path_factory.mktemp("prometheus")
    config = scrape_config(stack)
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    server = ManagedProcess(
        "prometheus",
        [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
        ],
        log_path=stack.log_dir / "prometheus.log",
        cwd=workdir,
    )
    api = PrometheusAPI(f"http://127.0.0.1:{port}")
    try:
        server.wait_http_ok(f"http://127.0.0.1:{port}/-/ready", Deadline(30))
        jobs = [job["job_name"] for job in config["scrape_configs"]]

        def targets_down() -> str | None:
            active = api.get("/api/v1/targets", state="active")["activeTargets"]
            health = {target["labels"]["job"]: target["health"] for target in active}
            down = {job: health.get(job, "missing") for job in jobs if health.get(job) != "up"}
            return str(down) if down else None

        eventually(targets_down, "every target up", Deadline(WAIT_SECONDS))
        baseline = {expr: api.value(expr) for _, expr in MOVING}
        drive_traffic(stack)
        yield Live(api, config, baseline)
    finally:
        api.http.close()
        status = server.stop()
        assert status == 0, f"prometheus exited {status}:\n{server.tail()}"


# --- the tests -----------------------------------------------------------------------------


def test_the_config_scrapes_every_process_of_the_stack_under_its_job_name(live: Live) -> None:
    jobs = {job["job_name"] for job in live.config["scrape_configs"]}
    assert jobs == {spec.name for spec in SERVICES if spec.port_env}
    file_jobs = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"]
    assert [job["job_name"] for job in file_jobs] == [
        job["job_name"] for job in live.config["scrape_configs"]
    ]


def test_every_process_is_a_target_that_is_up(live: Live) -> None:
    active = live.api.get("/api/v1/targets", state="active")["activeTargets"]
    by_job = {target["labels"]["job"]: target for target in active}
    assert set(by_job) == {spec.name for spec in SERVICES if spec.port_env}
    for job, target in by_job.items():
        assert target["health"] == "up", (job, target["lastError"])
        assert target["scrapeUrl"].endswith("/metrics"), target
        assert live.api.value(f'up{{job="{job}"}}') == 1.0, job


def test_the_golden_signals_of_every_process_are_there_and_move(live: Live) -> None:
    def not_moved() -> str | None:
        stuck = [
            f"{job}: {expr} = {value} (before {live.baseline[expr]})"
            for job, expr in MOVING
            if (value := live.api.value(expr)) <= live.baseline[expr]
        ]
        return "; ".join(stuck) or None

    eventually(not_moved, "every counter moved", Deadline(WAIT_SECONDS))
    missing = [f"{job}: {expr}" for job, expr in PRESENT if not live.api.query(expr)]
    assert missing == []
    # And the recording rules the dashboard and the alerts share see the traffic.
    eventually(
        lambda: (
            None
            if live.api.value('job:http_requests:rate5m{job="gateway"}') > 0
            else "job:http_requests:rate5m{job=gateway} is 0"
        ),
        "the request rate recorded",
        Deadline(WAIT_SECONDS),
    )


def test_every_rule_evaluates_without_error(live: Live) -> None:
    def not_evaluated() -> str | None:
        groups = live.api.get("/api/v1/rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        assert len(rules) > 40, len(rules)
        broken = [
            (rule["name"], rule.get("lastError")) for rule in rules if rule["health"] == "err"
        ]
        assert broken == [], broken
        pending = [rule["name"] for rule in rules if rule["health"] != "ok"]
        return f"not evaluated yet: {pending}" if pending else None

    eventually(not_evaluated, "every rule evaluated", Deadline(WAIT_SECONDS))
    files = {Path(group["file"]).name for group in live.api.get("/api/v1/rules")["groups"]}
    assert files == {"recording.yml", "alerts.yml"}


def test_every_dashboard_query_evaluates_and_the_ones_that_should_have_data_do(
    live: Live,
) -> None:
    panels = json.loads(dashboard.OUTPUT.read_text())["panels"]
    queries = {
        (panel["title"], target["refId"]): target["expr"].replace("$__rate_interval", RATE_INTERVAL)
        for panel in panels
        for target in panel.get("targets", [])
    }
    assert len(queries) > 50
    assert set(MAY_BE_EMPTY) <= set(queries), set(MAY_BE_EMPTY) - set(queries)

    def empty() -> str | None:
        # api.query fails the test at once on an evaluation error.
        without = [
            f"{title} ({ref}): {expr}"
            for (title, ref), expr in queries.items()
            if (title, ref) not in MAY_BE_EMPTY and not live.api.query(expr)
        ]
        return "\n".join(without) or None

    eventually(empty, "data for every panel that should have some", Deadline(WAIT_SECONDS))
    for key in MAY_BE_EMPTY:
        live.api.query(queries[key])  # evaluates (an error fails the test)
