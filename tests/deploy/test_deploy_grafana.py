"""The Grafana dashboard (deploy/grafana/): the committed JSON is what the generator builds, and
every panel queries series that exist (exported by the code, or recorded by the Prometheus
rules), with labels they have."""

from __future__ import annotations

import json
from typing import Any

import yaml

from deploy.grafana import dashboard
from tests.deploy.promql_names import (
    exported_series,
    unknown_names,
)
from tests.deploy.tools import ROOT


def _panels() -> list[dict[str, Any]]:
    return list(json.loads(dashboard.OUTPUT.read_text())["panels"])


def test_committed_dashboard_is_what_the_generator_builds() -> None:
    assert dashboard.OUTPUT.read_text() == dashboard.render(), (
        "deploy/grafana/dashboards/chat-platform.json is stale: "
        "run `.venv/bin/python -m deploy.grafana.dashboard` and commit it"
    )
    assert dashboard.main(["--check"]) == 0


def test_every_panel_queries_series_that_exist() -> None:
    known = dict(exported_series())
    rules = yaml.safe_load((ROOT / "deploy/prometheus/rules/recording.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            known[rule["record"]] = frozenset({"job"})
    problems = {}
    queried = 0
    for panel in _panels():
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "5m")
            queried += 1
            found = unknown_names(expr, known)
            if found:
                problems[f"{panel['title']} ({target['refId']})"] = found
    assert queried > 50
    assert problems == {}


def test_panels_are_well_formed() -> None:
    panels = _panels()
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["description"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert ref_ids and len(ref_ids) == len(set(ref_ids)) and "" not in ref_ids
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24


def test_a_row_per_service_and_for_the_queue_the_llm_and_analytics() -> None:
    rows = [panel["title"] for panel in _panels() if panel["type"] == "row"]
    assert rows == [
        "Service level objectives",
        "Gateway",
        "Chat",
        "Analytics (API and aggregator)",
        "AI worker",
        "AI job queue",
        "LLM",
        "Events: outbox relay and consumer groups",
        "Webhooks",
    ]
    # Every Prometheus job shows up in some query.
    exprs = " ".join(t["expr"] for p in _panels() for t in p.get("targets", []))
    for job in ("gateway", "chat", "analytics", "ai_worker"):
        assert f'job="{job}"' in exprs, job
    for series in ("outbox_relay_leader", "analytics_event_lag_seconds", "webhook_deliveries"):
        assert series in exprs, series


def test_grafana_provisioning_points_at_the_dashboards() -> None:
    provider = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/chat-platform.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    source = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert source["datasources"][0]["type"] == "prometheus"
