"""AI replies end to end: gateway → chat → Celery (real worker process) → stand-in LLM (through
the real openai SDK) → Postgres, and back to the waiting request."""

from __future__ import annotations

import secrets
import time
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest

from shared.jobs import GENERATE_REPLY_TASK, celery_app
from tests.chat.factories import add_message, create_agent, create_conversation, list_messages
from tests.chat.helpers import assert_error, ok_data
from tests.harness import Stack, User
from tests.support.llm_stub import count_tokens

AI_TIMEOUT = 60.0


def _ask(
    http: httpx.Client,
    user: User,
    conversation_id: int,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    **body: Any,
) -> httpx.Response:
    return http.post(
        f"/chat/conversations/{conversation_id}/ai-response",
        json={"message": message, **body},
        headers={**user.headers, **(headers or {})},
        timeout=AI_TIMEOUT,
    )


def _marker() -> str:
    return f"m{secrets.token_hex(5)}"


def _stub(stack: Stack) -> Any:
    assert stack.llm is not None
    return stack.llm.control


def _read(path: Any) -> list[str]:
    return str(path.read_text(encoding="utf-8", errors="replace")).splitlines()


def _agent_messages_of_job(db: psycopg.Connection, job_id: int) -> int:
    row = db.execute(
        "SELECT count(*) FROM chat.messages WHERE ai_job_id = %s", (job_id,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_reply_has_the_seed_shape_and_joins_the_history(http: httpx.Client, alice: User) -> None:
    conversation = create_conversation(http, alice)
    text = f"My order number is #12345 {_marker()}"
    reply = ok_data(_ask(http, alice, conversation["id"], text, include_context=True))
    for key in (
        "message_id",
        "ai_response",
        "tokens_used",
        "processing_time",
        "cost",
        "created_at",
    ):
        assert key in reply, reply
    assert reply["ai_response"] == f"Echo: {text}"
    assert reply["tokens_used"] == reply["input_tokens"] + reply["output_tokens"]
    assert reply["output_tokens"] == count_tokens(reply["ai_response"])
    history = list_messages(http, alice, conversation["id"], order="asc")
    assert [(m["sender"], m["content"]) for m in history["messages"]] == [
        ("user", text),
        ("agent", reply["ai_response"]),
    ]
    agent_message = history["messages"][1]
    assert agent_message["id"] == reply["message_id"]
    assert agent_message["tokens_used"] == reply["tokens_used"]
    counted = ok_data(http.get(f"/chat/conversations/{conversation['id']}", headers=alice.headers))
    assert counted["total_messages"] == 2


def test_the_latest_user_message_is_not_stored_twice(http: httpx.Client, alice: User) -> None:
    conversation = create_conversation(http, alice)
    text = f"already posted {_marker()}"
    add_message(http, alice, conversation["id"], content=text)
    ok_data(_ask(http, alice, conversation["id"], text))
    senders = [m["sender"] for m in list_messages(http, alice, conversation["id"])["messages"]]
    assert sorted(senders) == ["agent", "user"]


def test_context_sends_system_prompt_and_history(
    http: httpx.Client, alice: User, admin: User, stack: Stack
) -> None:
    prompt = f"You are agent {_marker()}."
    agent = create_agent(http, admin, system_prompt=prompt, model="ctx-model")
    conversation = create_conversation(http, alice, agent_id=agent["id"])
    first, second = f"first {_marker()}", f"second {_marker()}"
    add_message(http, alice, conversation["id"], content=first)
    ok_data(_ask(http, alice, conversation["id"], second))  # agent_id from the conversation
    [sent] = _stub(stack).requests(contains=second)
    assert sent["model"] == "ctx-model"
    assert [(m["role"], m["content"]) for m in sent["messages"]] == [
        ("system", prompt),
        ("user", first),
        ("user", second),
    ]
    assert sent["headers"]["authorization"] == "Bearer test-key"


def test_without_context_only_the_message_is_sent(
    http: httpx.Client, alice: User, admin: User, stack: Stack
) -> None:
    agent = create_agent(http, admin, system_prompt="secret system prompt")
    conversation = create_conversation(http, alice, agent_id=agent["id"])
    add_message(http, alice, conversation["id"], content="earlier message")
    text = f"alone {_marker()}"
    ok_data(_ask(http, alice, conversation["id"], text, include_context=False))
    [sent] = _stub(stack).requests(contains=text)
    assert [(m["role"], m["content"]) for m in sent["messages"]] == [("user", text)]


def test_cost_comes_from_the_agents_prices(
    http: httpx.Client, alice: User, admin: User, db: psycopg.Connection
) -> None:
    agent = create_agent(http, admin, input_price_per_1k="1.5", output_price_per_1k="3")
    conversation = create_conversation(http, alice, agent_id=agent["id"])
    reply = ok_data(_ask(http, alice, conversation["id"], f"price me {_marker()}"))
    expected = (
        Decimal(reply["input_tokens"]) * Decimal("1.5") + Decimal(reply["output_tokens"]) * 3
    ) / 1000
    assert Decimal(str(reply["cost"])) == expected.quantize(Decimal("0.000001"))
    usage = db.execute(
        "SELECT input_tokens, output_tokens, cost, agent_id FROM chat.ai_usage WHERE job_id = %s",
        (reply["job_id"],),
    ).fetchone()
    assert usage == (
        reply["input_tokens"],
        reply["output_tokens"],
        Decimal(str(reply["cost"])),
        agent["id"],
    )


def test_provider_errors_are_retried_then_succeed(
    http: httpx.Client, alice: User, stack: Stack
) -> None:
    conversation = create_conversation(http, alice)
    text = f"flaky [[fail:500]] [[times:2]] {_marker()}"
    reply = ok_data(_ask(http, alice, conversation["id"], text))
    assert reply["ai_response"].startswith("Echo: flaky")
    outcomes = [r["outcome"] for r in _stub(stack).requests(contains=text)]
    assert outcomes == ["failed", "failed", "completed"]


def test_rate_limited_provider_is_retried(http: httpx.Client, alice: User, stack: Stack) -> None:
    conversation = create_conversation(http, alice)
    text = f"busy [[fail:429]] [[retry_after:0.1]] [[times:1]] {_marker()}"
    ok_data(_ask(http, alice, conversation["id"], text))
    assert len(_stub(stack).requests(contains=text)) == 2


def test_provider_down_fails_with_502_and_a_job_to_inspect(
    http: httpx.Client, alice: User, stack: Stack
) -> None:
    conversation = create_conversation(http, alice)
    text = f"broken [[fail:500]] {_marker()}"
    error = assert_error(_ask(http, alice, conversation["id"], text), 502, "llm_server_error")
    job_id = error["error"]["details"]["job_id"]
    attempts = len(_stub(stack).requests(contains=text))
    assert attempts == int(stack.env.get("AI_WORKER_LLM_MAX_ATTEMPTS", "4"))
    job = ok_data(http.get(f"/chat/jobs/{job_id}", headers=alice.headers))
    assert job["status"] == "failed" and job["error_code"] == "llm_server_error"
    assert job["reply_message_id"] is None
    # No agent message; the user's message stays.
    senders = [m["sender"] for m in list_messages(http, alice, conversation["id"])["messages"]]
    assert senders == ["user"]


def test_a_hanging_provider_times_out_and_is_retried(
    http: httpx.Client, alice: User, stack: Stack
) -> None:
    conversation = create_conversation(http, alice)
    text = f"slow [[hang]] [[times:1]] {_marker()}"
    ok_data(_ask(http, alice, conversation["id"], text))
    assert len(_stub(stack).requests(contains=text)) == 2


def test_prefer_respond_async_answers_202_with_the_job(http: httpx.Client, alice: User) -> None:
    conversation = create_conversation(http, alice)
    response = _ask(
        http,
        alice,
        conversation["id"],
        f"later {_marker()}",
        headers={"Prefer": "respond-async"},
    )
    job = ok_data(response, 202)
    assert response.headers["location"] == f"/chat/jobs/{job['id']}"
    assert job["status"] in ("queued", "running", "completed")
    final = _wait_for_job(http, alice, job["id"])
    assert final["status"] == "completed" and final["reply_message_id"] is not None


def _wait_for_job(http: httpx.Client, user: User, job_id: int) -> dict[str, Any]:
    """Reads the job until it is final (a condition with a deadline)."""
    deadline = time.monotonic() + AI_TIMEOUT
    while True:
        job: dict[str, Any] = ok_data(http.get(f"/chat/jobs/{job_id}", headers=user.headers))
        if job["status"] not in ("queued", "running"):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['status']}"


def test_idempotency_key_never_pays_twice(
    http: httpx.Client, alice: User, db: psycopg.Connection, stack: Stack
) -> None:
    conversation = create_conversation(http, alice)
    text = f"once {_marker()}"
    key = {"Idempotency-Key": f"ai-{secrets.token_hex(8)}"}
    first = ok_data(_ask(http, alice, conversation["id"], text, headers=dict(key)))
    again = _ask(http, alice, conversation["id"], text, headers=dict(key))
    second = ok_data(again)
    assert second == first
    assert len(_stub(stack).requests(contains=text)) == 1
    assert _agent_messages_of_job(db, first["job_id"]) == 1


def test_a_duplicated_task_never_stores_a_second_reply(
    http: httpx.Client, alice: User, db: psycopg.Connection, stack: Stack
) -> None:
    conversation = create_conversation(http, alice)
    text = f"dup {_marker()}"
    reply = ok_data(_ask(http, alice, conversation["id"], text))
    # Deliver the same job again, as a broker redelivery would.
    client = celery_app(
        "test",
        broker_url=stack.redis_url,
        redis_prefix=stack.redis_prefix,
        visibility_timeout_seconds=600,
    )
    client.send_task(GENERATE_REPLY_TASK, args=[reply["job_id"]])
    worker_log = stack.log_dir / "ai_worker.log"
    deadline = time.monotonic() + AI_TIMEOUT
    while True:
        lines = [
            line
            for line in _read(worker_log)
            if '"delivery_skipped"' in line and f'"job_id":{reply["job_id"]},' in line
        ]
        if lines:
            break
        assert time.monotonic() < deadline, "the duplicate delivery was never processed"
    assert _agent_messages_of_job(db, reply["job_id"]) == 1
    assert len(_stub(stack).requests(contains=text)) == 1


def test_other_users_conversation_and_jobs_are_404(
    http: httpx.Client, alice: User, bob: User
) -> None:
    conversation = create_conversation(http, alice)
    reply = ok_data(_ask(http, alice, conversation["id"], f"mine {_marker()}"))
    assert_error(_ask(http, bob, conversation["id"], "intrude"), 404, "not_found")
    assert_error(http.get(f"/chat/jobs/{reply['job_id']}", headers=bob.headers), 404, "not_found")
    assert [m["sender"] for m in list_messages(http, alice, conversation["id"])["messages"]] == [
        "agent",
        "user",
    ]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({}, id="no-message"),
        pytest.param({"message": ""}, id="empty"),
        pytest.param({"message": "   "}, id="blank"),
        pytest.param({"message": "x", "agent_id": 999_999}, id="unknown-agent"),
        pytest.param({"message": "x", "include_context": "maybe"}, id="bad-flag"),
        pytest.param({"message": "x", "extra": 1}, id="unknown-field"),
        pytest.param({"message": "a\x00b"}, id="nul"),
    ],
)
def test_bad_requests_are_422(http: httpx.Client, alice: User, body: dict[str, Any]) -> None:
    conversation = create_conversation(http, alice)
    response = http.post(
        f"/chat/conversations/{conversation['id']}/ai-response", json=body, headers=alice.headers
    )
    assert_error(response, 422, "validation_error")
    assert list_messages(http, alice, conversation["id"])["total"] == 0


def test_missing_conversation_is_404(http: httpx.Client, alice: User) -> None:
    assert_error(_ask(http, alice, 2_000_000_000, "hello"), 404, "not_found")


def test_regenerating_a_reply_keeps_the_earlier_one(
    http: httpx.Client, alice: User, stack: Stack
) -> None:
    conversation = create_conversation(http, alice)
    text = f"answer twice {_marker()}"
    first = ok_data(_ask(http, alice, conversation["id"], text))
    second = ok_data(
        http.post(
            f"/chat/conversations/{conversation['id']}/messages/{first['message_id']}/regenerate",
            headers=alice.headers,
            timeout=AI_TIMEOUT,
        )
    )
    assert second["message_id"] > first["message_id"]
    assert second["ai_response"] == f"Echo: {text}"
    history = list_messages(http, alice, conversation["id"], order="asc")["messages"]
    assert [(m["sender"], m["status"]) for m in history] == [
        ("user", "sent"),
        ("agent", "superseded"),
        ("agent", "sent"),
    ]
    # The model was asked the same question both times: the earlier reply is not in the prompt.
    asked = [r["messages"] for r in _stub(stack).requests(contains=text)]
    assert len(asked) == 2 and asked[0] == asked[1]
    job = ok_data(http.get(f"/chat/jobs/{second['job_id']}", headers=alice.headers))
    assert job["regenerates_message_id"] == first["message_id"]


def test_only_agent_replies_of_ones_own_conversation_can_be_regenerated(
    http: httpx.Client, alice: User, bob: User
) -> None:
    conversation = create_conversation(http, alice)
    reply = ok_data(_ask(http, alice, conversation["id"], f"mine {_marker()}"))
    user_message = list_messages(http, alice, conversation["id"], order="asc")["messages"][0]
    base = f"/chat/conversations/{conversation['id']}/messages"
    assert_error(http.post(f"{base}/{user_message['id']}/regenerate", headers=alice.headers), 404)
    assert_error(http.post(f"{base}/{reply['message_id']}/regenerate", headers=bob.headers), 404)
    assert list_messages(http, alice, conversation["id"])["total"] == 2
