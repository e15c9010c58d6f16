"""The AI worker's Prometheus metrics move with the work, and never carry user ids."""

from __future__ import annotations

import re
import secrets

import httpx

from tests.chat.factories import create_conversation
from tests.chat.helpers import ok_data
from tests.harness import Stack, User


def _metrics(stack: Stack) -> str:
    worker = next(s for s in stack.services if s.name == "ai_worker")
    assert worker.url is not None
    response = httpx.get(f"{worker.url}/metrics", timeout=10)
    assert response.status_code == 200
    return response.text


def _value(text: str, series: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(series):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_worker_metrics_count_jobs_tokens_and_latency(
    http: httpx.Client, alice: User, stack: Stack
) -> None:
    before = _metrics(stack)
    conversation = create_conversation(http, alice)
    ok_data(
        http.post(
            f"/chat/conversations/{conversation['id']}/ai-response",
            json={"message": f"count me {secrets.token_hex(4)}"},
            headers=alice.headers,
            timeout=60,
        )
    )
    after = _metrics(stack)
    for series in (
        'ai_jobs_total{outcome="completed"}',
        "ai_job_generation_seconds_count",
        "ai_llm_time_to_first_token_seconds_count",
        "ai_llm_tokens_total",
        "ai_job_queue_wait_seconds_count",
    ):
        assert _value(after, series) > _value(before, series), series
    assert "ai_jobs_in_flight" in after and "ai_llm_errors_total" in after
    # Labels name models, agents and outcomes; never a user, conversation or job.
    assert not re.search(r'(user|conversation|job|message)(_id)?="', after)
