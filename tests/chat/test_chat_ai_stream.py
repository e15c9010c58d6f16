"""AI replies as Server-Sent Events through the gateway: tokens while the worker generates them,
resumable from any event (Last-Event-ID), then the reply in the seed's shape."""

from __future__ import annotations

import json
import secrets
from typing import Any

import httpx
import pytest

from tests.chat.factories import create_conversation
from tests.chat.helpers import assert_error
from tests.harness import User

AI_TIMEOUT = 60.0


def _events(response: httpx.Response) -> list[dict[str, Any]]:
    """The SSE events of a (finished) response: id, event, data (parsed JSON)."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = []
    for block in response.text.split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue  # a keep-alive comment
            name, _, value = line.partition(": ")
            fields[name] = value
        if "event" in fields:
            fields["data"] = json.loads(fields["data"])
            events.append(fields)
    return events


def _stream(http: httpx.Client, user: User, conversation_id: int, message: str) -> httpx.Response:
    return http.post(
        f"/chat/conversations/{conversation_id}/ai-response",
        params={"stream": "true"},
        json={"message": message},
        headers=user.headers,
        timeout=AI_TIMEOUT,
    )


def _marker() -> str:
    return f"s{secrets.token_hex(5)}"


def test_tokens_stream_then_the_reply(http: httpx.Client, alice: User) -> None:
    conversation = create_conversation(http, alice)
    marker = _marker()
    # The model sends a token every 80 ms: each reaches the client as an event of its own.
    text = f"stream me a few words please [[token_delay:0.08]] {marker}"
    events = _events(_stream(http, alice, conversation["id"], text))
    kinds = [e["event"] for e in events]
    assert kinds[0] == "job" and kinds[-1] == "reply", kinds
    tokens = [e for e in events if e["event"] == "token"]
    assert len(tokens) >= 5 and all(e.get("id") for e in tokens)
    reply = events[-1]["data"]
    expected = f"Echo: stream me a few words please {marker}"
    assert "".join(e["data"]["text"] for e in tokens) == reply["ai_response"] == expected
    for key in (
        "message_id",
        "ai_response",
        "tokens_used",
        "processing_time",
        "cost",
        "created_at",
    ):
        assert key in reply
    assert events[0]["data"]["id"] == reply["job_id"]


def test_tokens_that_arrive_together_are_one_event(http: httpx.Client, alice: User) -> None:
    conversation = create_conversation(http, alice)
    text = f"all of these words arrive at once {_marker()}"
    events = _events(_stream(http, alice, conversation["id"], text))
    tokens = [e for e in events if e["event"] == "token"]
    # The whole answer comes in one read: fewer events than words, with the same text.
    assert 1 <= len(tokens) < len(f"Echo: {text}".split()), tokens
    assert "".join(e["data"]["text"] for e in tokens) == events[-1]["data"]["ai_response"]


def test_a_client_resumes_after_the_last_event_it_saw(http: httpx.Client, alice: User) -> None:
    conversation = create_conversation(http, alice)
    marker = _marker()
    text = f"resume from the middle of this reply [[token_delay:0.05]] {marker}"
    first = _events(_stream(http, alice, conversation["id"], text))
    job_id = first[0]["data"]["id"]
    tokens = [e for e in first if e["event"] == "token"]
    seen = tokens[:2]
    resumed = _events(
        http.get(
            f"/chat/jobs/{job_id}/events",
            headers={**alice.headers, "Last-Event-ID": seen[-1]["id"]},
            timeout=AI_TIMEOUT,
        )
    )
    rest = [e for e in resumed if e["event"] == "token"]
    assert [e["id"] for e in rest] == [e["id"] for e in tokens[2:]]
    assert len(seen) == 2 and rest, tokens
    expected = f"Echo: resume from the middle of this reply {marker}"
    assert "".join(e["data"]["text"] for e in seen + rest) == expected
    assert resumed[-1]["event"] == "reply"
    assert resumed[-1]["data"]["message_id"] == first[-1]["data"]["message_id"]


def test_a_dropped_model_stream_restarts_visibly(http: httpx.Client, alice: User) -> None:
    conversation = create_conversation(http, alice)
    text = f"drop then retry [[drop:2]] [[times:1]] {_marker()}"
    events = _events(_stream(http, alice, conversation["id"], text))
    kinds = [e["event"] for e in events]
    assert "reset" in kinds, kinds
    after_reset = events[kinds.index("reset") + 1 :]
    streamed = "".join(e["data"]["text"] for e in after_reset if e["event"] == "token")
    assert streamed == events[-1]["data"]["ai_response"]
    assert events[-1]["event"] == "reply"


def test_a_failed_job_ends_the_stream_with_an_error_event(http: httpx.Client, alice: User) -> None:
    conversation = create_conversation(http, alice)
    events = _events(_stream(http, alice, conversation["id"], f"[[fail:500]] {_marker()}"))
    assert events[-1]["event"] == "error"
    assert events[-1]["data"]["error"]["code"] == "llm_server_error"
    assert events[-1]["data"]["error"]["details"]["job_id"] == events[0]["data"]["id"]


def test_another_users_job_events_are_404(http: httpx.Client, alice: User, bob: User) -> None:
    conversation = create_conversation(http, alice)
    events = _events(_stream(http, alice, conversation["id"], f"private {_marker()}"))
    job_id = events[0]["data"]["id"]
    assert_error(http.get(f"/chat/jobs/{job_id}/events", headers=bob.headers), 404, "not_found")


def _reply_from_the_job_row(http: httpx.Client, user: User, job_id: int) -> dict[str, Any]:
    """The job's reply as chat reads it from Postgres: the last event of its stream."""
    events = _events(
        http.get(f"/chat/jobs/{job_id}/events", headers=user.headers, timeout=AI_TIMEOUT)
    )
    assert events[-1]["event"] == "reply", events
    reply: dict[str, Any] = events[-1]["data"]
    return reply


@pytest.mark.parametrize("words", [8, 3_000])
def test_the_answer_from_the_workers_announcement_equals_the_stored_reply(
    http: httpx.Client, alice: User, words: int
) -> None:
    # A short reply comes back in the job-done announcement; a long one (over 16,000
    # characters) is read from Postgres. Either way the caller gets the same fields and values.
    conversation = create_conversation(http, alice)
    text = " ".join(f"w{i}" for i in range(words))
    response = http.post(
        f"/chat/conversations/{conversation['id']}/ai-response",
        json={"message": f"{text} {_marker()}"},
        headers=alice.headers,
        timeout=AI_TIMEOUT,
    )
    assert response.status_code == 200, response.text
    answered = response.json()["data"]
    assert answered == _reply_from_the_job_row(http, alice, answered["job_id"])
