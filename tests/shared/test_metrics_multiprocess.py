"""An HTTP service with several uvicorn workers (shared/server.py) reports the metrics of all of
them on /metrics, whichever worker answers (shared/metrics.py: Prometheus multiprocess mode):
counters add up, the in-progress gauge is one sum over the live workers, a killed worker's live
gauge is marked dead while its counts stay, and the server stops with status 0 on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from prometheus_client.multiprocess import MultiProcessCollector

from deploy.local.processes import Deadline
from tests.harness import Stack, User

ROUTE = "/chat/agents"
REQUESTS = f'http_requests_total{{method="GET",route="{ROUTE}",status="200"}}'


def counted(text: str, series: str) -> float:
    """The value of one exact series in an exposition (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def per_worker_requests(directory: Path) -> dict[int, float]:
    """GET /chat/agents answered with 200, by worker pid, read from each worker's own file."""
    counts: dict[int, float] = {}
    for path in directory.glob("counter_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        for metric in MultiProcessCollector.merge([str(path)]):
            for sample in metric.samples:
                if sample.name == "http_requests_total" and sample.labels.get("route") == ROUTE:
                    counts[pid] = counts.get(pid, 0.0) + sample.value
    return counts


def poll(check: Callable[[], bool], what: str, deadline: Deadline) -> None:
    while not check():
        assert not deadline.expired(), f"{what} within {deadline.seconds:.0f} s"
        time.sleep(0.05)  # the poll's period; the check decides


def test_several_workers_report_their_metrics_together(
    stack: Stack, new_user: Callable[..., User], tmp_path: Path
) -> None:
    user = new_user()
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    stale = metrics_dir / "counter_999999.db"
    stale.write_bytes(b"an earlier run's file")
    url, process = stack.start_service(
        "chat",
        CHAT_WORKERS="2",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        # Two pools instead of one: keep them small on the shared server.
        CHAT_DB_POOL_MIN_SIZE="1",
        CHAT_DB_POOL_MAX_SIZE="2",
    )
    assert url is not None
    try:
        assert not stale.exists(), "files of an earlier run are removed at start"
        # New connections until both workers answered some (the kernel picks the acceptor).
        sent = 0

        def both_served() -> bool:
            nonlocal sent
            with httpx.Client(base_url=url, timeout=10, trust_env=False) as fresh:
                response = fresh.get(ROUTE, headers=user.headers)
            assert response.status_code == 200, response.text
            sent += 1
            served = per_worker_requests(metrics_dir)
            return sent >= 10 and len([n for n in served.values() if n > 0]) >= 2

        poll(both_served, "both workers serving", Deadline(30))
        # A request is counted as its response ends, which the client may see first.
        poll(
            lambda: sum(per_worker_requests(metrics_dir).values()) == sent,
            f"the workers' files counting all {sent} requests",
            Deadline(10),
        )
        served = per_worker_requests(metrics_dir)

        # Whichever worker answers the scrape reports every worker's requests, once.
        for _ in range(8):
            with httpx.Client(base_url=url, timeout=10, trust_env=False) as scraper:
                text = scraper.get("/metrics").text
            assert counted(text, REQUESTS) == sent, text
            in_progress = [
                line for line in text.splitlines() if line.startswith("http_requests_in_progress{")
            ]
            assert in_progress and not any('pid="' in line for line in in_progress), in_progress

        # A worker killed outright: the next scrape marks its live gauge dead; its counts stay.
        victim = next(pid for pid, n in served.items() if n > 0)
        assert (metrics_dir / f"gauge_livesum_{victim}.db").exists()
        os.kill(victim, signal.SIGKILL)

        def victim_marked_dead() -> bool:
            with httpx.Client(base_url=url, timeout=10, trust_env=False) as scraper:
                response = scraper.get("/metrics")
            assert response.status_code == 200
            assert counted(response.text, REQUESTS) == sent
            return not (metrics_dir / f"gauge_livesum_{victim}.db").exists()

        poll(victim_marked_dead, "the killed worker's gauge marked dead", Deadline(30))
        assert re.search(rf"^{re.escape(REQUESTS)} {sent}\.0$", text, re.MULTILINE)
    finally:
        status = process.stop()
    assert status == 0, process.tail()
