"""A reply slower than CHAT_AI_WAIT_TIMEOUT_SECONDS: the caller gets a 504 naming the job, which
goes on and finishes; the job's reply is then readable."""

from __future__ import annotations

import time

import httpx

from tests.chat.factories import create_conversation
from tests.chat.helpers import assert_error, ok_data
from tests.harness import Stack, User, client

DEADLINE = 30.0


def test_a_reply_slower_than_the_wait_is_a_504_and_the_job_goes_on(
    stack: Stack, http: httpx.Client, alice: User
) -> None:
    chat_url, _ = stack.start_service("chat", CHAT_AI_WAIT_TIMEOUT_SECONDS="1")
    gateway_url = stack.start_gateway(GATEWAY_CHAT_URL=str(chat_url))
    conversation = create_conversation(http, alice)
    with client(gateway_url) as impatient:
        started = time.monotonic()
        response = impatient.post(
            f"/chat/conversations/{conversation['id']}/ai-response",
            json={"message": "take your time [[delay:2.5]]"},
            headers=alice.headers,
        )
        waited = time.monotonic() - started
    body = assert_error(response, 504, "ai_timeout")
    job_id = body["error"]["details"]["job_id"]
    assert f"/chat/jobs/{job_id}" in body["message"]
    assert waited < 2.5, f"answered after {waited:.1f} s, not at the 1 s wait"

    deadline = time.monotonic() + DEADLINE
    while (job := ok_data(http.get(f"/chat/jobs/{job_id}", headers=alice.headers)))["status"] in (
        "queued",
        "running",
    ):
        assert time.monotonic() < deadline, f"job {job_id} still {job['status']}"
        time.sleep(0.05)  # a polling interval; the loop waits on the job's status
    assert job["status"] == "completed" and job["reply_message_id"] is not None
