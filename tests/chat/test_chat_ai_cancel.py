"""Cancelling AI jobs: a queued one at once; a running one stops its model call mid-stream and
keeps the partial reply as `incomplete`, with its tokens counted."""

from __future__ import annotations

import secrets
import time
from typing import Any

import httpx
import psycopg

from tests.chat.factories import add_message, create_conversation, list_messages
from tests.chat.helpers import assert_error, ok_data
from tests.harness import Stack, User

DEADLINE = 60.0


def _stub(stack: Stack) -> Any:
    assert stack.llm is not None
    return stack.llm.control


def test_cancelling_a_running_job_keeps_its_partial_reply(
    http: httpx.Client, alice: User, stack: Stack, db: psycopg.Connection
) -> None:
    conversation = create_conversation(http, alice)
    marker = secrets.token_hex(5)
    words = " ".join(f"w{i}" for i in range(60))
    text = f"long answer {marker} [[token_delay:0.1]] {words}"
    job = ok_data(
        http.post(
            f"/chat/conversations/{conversation['id']}/ai-response",
            json={"message": text},
            headers={**alice.headers, "Prefer": "respond-async"},
        ),
        202,
    )
    # Wait until the model is a few tokens in (a condition with a deadline).
    deadline = time.monotonic() + DEADLINE
    while True:
        sent = _stub(stack).requests(contains=marker)
        if sent and sent[0]["sent_tokens"] >= 3:
            break
        assert time.monotonic() < deadline, "the model never started streaming"
    cancelled = ok_data(
        http.post(f"/chat/jobs/{job['id']}/cancel", headers=alice.headers, timeout=DEADLINE)
    )
    assert cancelled["status"] == "incomplete", cancelled
    assert 0 < cancelled["output_tokens"] < 60
    message = next(
        m
        for m in list_messages(http, alice, conversation["id"])["messages"]
        if m["id"] == cancelled["reply_message_id"]
    )
    assert message["status"] == "incomplete"
    assert f"Echo: long answer {marker}".startswith(message["content"][:20])
    assert len(message["content"]) < len(f"Echo: {text}")
    # The upstream call was aborted, not left to run to the end.
    upstream = _stub(stack).wait_for_requests(contains=marker, outcome="finished")[0]
    assert upstream["outcome"] == "client_disconnected", upstream
    usage = db.execute(
        "SELECT output_tokens FROM chat.ai_usage WHERE job_id = %s", (job["id"],)
    ).fetchone()
    assert usage is not None and usage[0] == cancelled["output_tokens"]


def test_cancelling_a_queued_job_stops_it_before_any_model_call(
    http: httpx.Client, alice: User, db: psycopg.Connection, stack: Stack
) -> None:
    conversation = create_conversation(http, alice)
    marker = f"never {secrets.token_hex(5)}"
    message = add_message(http, alice, conversation["id"], content=marker)
    row = db.execute(
        """
        INSERT INTO chat.ai_jobs (conversation_id, user_id, agent_id, prompt_message_id, model,
                                  deadline_at)
        SELECT %s, %s, id, %s, model, now() + interval '10 minutes'
        FROM chat.agents WHERE is_default RETURNING id
        """,
        (conversation["id"], alice.id, message["message_id"]),
    ).fetchone()
    assert row is not None
    job_id = row[0]
    cancelled = ok_data(http.post(f"/chat/jobs/{job_id}/cancel", headers=alice.headers))
    assert cancelled["status"] == "cancelled"
    # Even when the sweeper sends it again, nothing is generated.
    assert_error(http.post(f"/chat/jobs/{job_id}/cancel", headers=alice.headers), 409)
    assert _stub(stack).requests(contains=marker) == []


def test_finished_and_foreign_jobs_cannot_be_cancelled(
    http: httpx.Client, alice: User, bob: User
) -> None:
    conversation = create_conversation(http, alice)
    reply = ok_data(
        http.post(
            f"/chat/conversations/{conversation['id']}/ai-response",
            json={"message": f"done {secrets.token_hex(4)}"},
            headers=alice.headers,
            timeout=DEADLINE,
        )
    )
    assert_error(http.post(f"/chat/jobs/{reply['job_id']}/cancel", headers=bob.headers), 404)
    assert_error(
        http.post(f"/chat/jobs/{reply['job_id']}/cancel", headers=alice.headers), 409, "conflict"
    )
