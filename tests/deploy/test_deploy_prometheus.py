"""Alerting as code (deploy/prometheus/): the scrape configs and rules pass `promtool check`, the
rule unit tests (`promtool test rules`, deploy/prometheus/tests/) pass, nothing fires on a
healthy system, every alert is tested firing and has a runbook entry, and every series a rule
reads is one the code exports."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.local.stack import SERVICES
from tests.deploy.promql_names import exported_series, unknown_names
from tests.deploy.tools import ROOT, run, tool

PROMETHEUS = ROOT / "deploy" / "prometheus"
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*_test.yml"))
RUNBOOK = ROOT / "docs" / "operations.md"
# Every process, its Prometheus job and metrics port.
JOBS = {
    "gateway": 8000,
    "chat": 8001,
    "analytics": 8002,
    "ai_worker": 9101,
    "relay": 9102,
    "aggregator": 9103,
    "webhooks": 9104,
}


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _rules() -> list[dict[str, Any]]:
    return [
        rule for path in RULE_FILES for group in _load(path)["groups"] for rule in group["rules"]
    ]


def _alerts() -> list[dict[str, Any]]:
    return [rule for rule in _rules() if "alert" in rule]


def test_rule_files_exist() -> None:
    assert {path.name for path in RULE_FILES} == {"alerts.yml", "recording.yml"}
    assert RULE_TESTS


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus.compose.yml"])
def test_promtool_checks_the_config_and_its_rules(config: str) -> None:
    output = run(tool("promtool"), "check", "config", config, cwd=PROMETHEUS).stdout
    assert "SUCCESS: 2 rule files found" in output


def test_promtool_checks_the_kubernetes_config_with_static_targets(tmp_path: Path) -> None:
    """Debian's promtool is built without Kubernetes discovery, so the pod discovery block is
    swapped for a static one; everything else (relabelling, rule files) is checked as is."""
    promtool = tool("promtool")
    config = _load(PROMETHEUS / "prometheus.kubernetes.yml")
    for scrape in config["scrape_configs"]:
        discovery = scrape.pop("kubernetes_sd_configs")
        assert discovery[0]["role"] == "pod"
        scrape["static_configs"] = [{"targets": ["10.0.0.1:8000"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copytree(PROMETHEUS / "rules", tmp_path / "rules")
    run(promtool, "check", "config", "prometheus.yml", cwd=tmp_path)


def test_promtool_checks_the_rules() -> None:
    run(tool("promtool"), "check", "rules", *map(str, RULE_FILES))


def test_promtool_rule_unit_tests_pass() -> None:
    output = run(tool("promtool"), "test", "rules", *map(str, RULE_TESTS)).stdout
    assert "FAILED" not in output


def test_every_config_scrapes_every_process_under_its_job_name() -> None:
    for name in ("prometheus.yml", "prometheus.compose.yml"):
        config = _load(PROMETHEUS / name)
        ports = {
            scrape["job_name"]: int(scrape["static_configs"][0]["targets"][0].rsplit(":", 1)[1])
            for scrape in config["scrape_configs"]
        }
        assert ports == JOBS, name
        assert config["rule_files"] == ["rules/recording.yml", "rules/alerts.yml"], name
    # The ports are the processes' defaults.
    for spec in SERVICES:
        assert JOBS[spec.name] == spec.default_port, spec.name


def test_every_series_a_rule_reads_is_exported_by_the_code() -> None:
    known = dict(exported_series())
    recorded = [rule["record"] for rule in _rules() if "record" in rule]
    # Recorded series keep the labels they aggregate by; any label is allowed for them here.
    known.update({name: frozenset({"job", "group", "dependency"}) for name in recorded})
    problems = {
        rule.get("alert") or rule["record"]: unknown_names(rule["expr"], known) for rule in _rules()
    }
    assert {name: found for name, found in problems.items() if found} == {}


def test_every_alert_is_actionable() -> None:
    anchors = _runbook_anchors()
    for alert in _alerts():
        name = alert["alert"]
        assert alert["labels"]["severity"] in ("page", "ticket"), name
        annotations = alert["annotations"]
        assert annotations["summary"] and annotations["description"], name
        url = annotations["runbook_url"]
        assert url.startswith("docs/operations.md#"), name
        assert url.split("#", 1)[1] in anchors, f"{name}: no runbook section for {url}"


def test_every_alert_has_a_test_where_it_fires() -> None:
    fired = {
        case["alertname"]
        for path in RULE_TESTS
        for test in _load(path)["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert {alert["alert"] for alert in _alerts()} - fired == set()


def _runbook_anchors() -> set[str]:
    """GitHub's anchors of the runbook's headings (lowercase, punctuation dropped, spaces to -)."""
    anchors = set()
    for line in RUNBOOK.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return anchors


# --- nothing fires on a healthy system ------------------------------------------------------------

_MINUTES = 70  # past the longest `for` (1 h)


def _healthy_series() -> list[dict[str, str]]:
    series: list[tuple[str, str]] = []
    for job, port in JOBS.items():
        series.append((f'up{{job="{job}",instance="{job}:{port}"}}', f"1x{_MINUTES}"))
    gw = 'job="gateway",instance="gateway:8000"'
    route = 'method="GET",route="/chat/conversations"'
    series += [
        (f'http_requests_total{{{gw},{route},status="200"}}', f"0+6000x{_MINUTES}"),
        (f'http_requests_total{{{gw},{route},status="502"}}', f"0+1x{_MINUTES}"),
        (
            f'http_requests_total{{{gw},method="POST",route="/auth/login",status="401"}}',
            f"0+50x{_MINUTES}",
        ),
        (f'http_request_duration_seconds_bucket{{{gw},{route},le="0.5"}}', f"0+5990x{_MINUTES}"),
        (f"http_request_duration_seconds_count{{{gw},{route}}}", f"0+6001x{_MINUTES}"),
        (
            f'gateway_rate_limit_decisions_total{{{gw},limit="user",outcome="allowed"}}',
            f"0+6000x{_MINUTES}",
        ),
    ]
    wk = 'job="ai_worker",instance="ai-worker:9101"'
    series += [
        (f'ai_jobs_total{{{wk},outcome="completed"}}', f"0+300x{_MINUTES}"),
        (f'ai_jobs_total{{{wk},outcome="failed"}}', f"0+1x{_MINUTES}"),
        (f'ai_jobs_swept_total{{{wk},action="requeued"}}', f"0+1x{_MINUTES}"),
        (f'ai_queue_messages{{{wk},queue="ai"}}', "0 3 12 4 0 " * (_MINUTES // 5) + "0"),
        (f"ai_queue_unacked_messages{{{wk}}}", f"20x{_MINUTES}"),
        (f"ai_job_oldest_queued_age_seconds{{{wk}}}", "0 1 4 2 0 " * (_MINUTES // 5) + "0"),
        (f'ai_queue_metrics_errors_total{{{wk},dependency="redis"}}', f"0x{_MINUTES}"),
        (f'ai_llm_errors_total{{{wk},kind="rate_limited"}}', f"0+3x{_MINUTES}"),
        (f'ai_llm_request_duration_seconds_count{{{wk},model="m"}}', f"0+300x{_MINUTES}"),
        ('outbox_relay_leader{job="relay",instance="relay-a:9102"}', f"1x{_MINUTES}"),
        ('outbox_relay_leader{job="relay",instance="relay-b:9102"}', f"0x{_MINUTES}"),
        (
            'outbox_oldest_unpublished_age_seconds{job="relay",instance="relay-a:9102"}',
            "0 0.2 0 1 0 " * (_MINUTES // 5) + "0",
        ),
    ]
    for group, job, port in (("analytics", "aggregator", 9103), ("webhooks", "webhooks", 9104)):
        labels = f'job="{job}",instance="{job}:{port}",group="{group}"'
        series += [
            (
                f"events_consumer_oldest_unacked_age_seconds{{{labels}}}",
                "0 0.5 2 0.1 0 " * (_MINUTES // 5) + "0",
            ),
            (f'events_dead_lettered_total{{{labels},type="message.created"}}', f"0x{_MINUTES}"),
        ]
    wh = 'job="webhooks",instance="webhooks:9104"'
    series += [
        (f'webhook_deliveries_total{{{wh},outcome="delivered"}}', f"0+100x{_MINUTES}"),
        (f'webhook_deliveries_total{{{wh},outcome="failed"}}', f"0+5x{_MINUTES}"),
        (f'webhook_deliveries_total{{{wh},outcome="dead"}}', f"0x{_MINUTES}"),
        (f"webhook_oldest_due_age_seconds{{{wh}}}", "0 4 20 1 0 " * (_MINUTES // 5) + "0"),
    ]
    return [{"series": name, "values": values.strip()} for name, values in series]


def test_nothing_fires_on_a_healthy_system(tmp_path: Path) -> None:
    """Normal traffic with its ordinary noise (a few 5xx, 4xx, retried LLM calls, short queues,
    a standby relay, webhook retries) for longer than any `for`: no alert fires."""
    promtool = tool("promtool")
    names = sorted({alert["alert"] for alert in _alerts()})
    suite = {
        "rule_files": [str(path) for path in RULE_FILES],
        "evaluation_interval": "1m",
        "tests": [
            {
                "name": "a healthy system",
                "interval": "1m",
                "input_series": _healthy_series(),
                "alert_rule_test": [
                    {"eval_time": f"{minute}m", "alertname": name, "exp_alerts": []}
                    for minute in (10, _MINUTES - 1)
                    for name in names
                ],
            }
        ],
    }
    path = tmp_path / "healthy_test.yml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    run(promtool, "test", "rules", str(path))
