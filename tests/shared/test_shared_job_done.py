"""The job-done announcement (shared/jobs.py): what a worker of any version says, read safely."""

from __future__ import annotations

from typing import Any

from shared.jobs import REPLY_FIELDS, JobDone

REPLY: dict[str, Any] = {
    "status": "completed",
    "model": "m",
    "error_code": None,
    "error": None,
    "input_tokens": 3,
    "output_tokens": 2,
    "cost": 0.001,
    "processing_time": 0.25,
    "reply_message_id": 7,
    "reply_content": "Echo: hi",
    "reply_created_at": "2026-11-27T08:00:00.123456+00:00",
}


def test_an_announcement_with_its_reply_reads_back_as_sent() -> None:
    assert set(REPLY) == REPLY_FIELDS
    done = JobDone("completed", REPLY)
    assert JobDone.decode(done.encode().encode()) == done
    assert JobDone.decode(done.encode()) == done


def test_a_bare_outcome_is_an_announcement_without_a_reply() -> None:
    assert JobDone("failed").encode() == "failed"
    assert JobDone.decode(b"cancelled") == JobDone("cancelled")


def test_a_reply_missing_fields_or_a_malformed_body_is_not_used() -> None:
    partial = {key: value for key, value in REPLY.items() if key != "reply_content"}
    assert JobDone.decode(JobDone("completed", partial).encode()) == JobDone("completed")
    assert JobDone.decode('{"outcome": "completed", "reply": [1]}') == JobDone("completed")
    assert JobDone.decode("{not json") == JobDone("unknown")
    assert JobDone.decode('{"reply": {}}') == JobDone("unknown")
    assert JobDone.decode("[1]").reply is None
