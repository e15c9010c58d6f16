"""Sessions (chat.chat_session_history): every message, the user's and the worker's alike, joins
the conversation's latest session unless it comes CHAT_SESSION_IDLE_MINUTES or more after that
session's end, in which case it starts a new one; GET .../sessions shows them, newest first."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from services.ai_worker.settings import WorkerSettings
from services.chat.settings import ChatSettings
from tests.chat.factories import add_message, create_conversation, get_conversation
from tests.chat.helpers import assert_error, ok_data, ts
from tests.harness import Stack, User, client

# The extra chat service's idle gap in the gap test: 1.8 s, waited out for real.
SHORT_IDLE_MINUTES = 0.03


def sessions(http: httpx.Client, user: User, conversation_id: int, **params: Any) -> Any:
    return ok_data(
        http.get(
            f"/chat/conversations/{conversation_id}/sessions",
            params={"limit": 100, **params},
            headers=user.headers,
        )
    )


def test_messages_close_together_form_one_session(http: httpx.Client, alice: User) -> None:
    conversation = create_conversation(http, alice)
    cid = conversation["id"]
    assert sessions(http, alice, cid) == {"sessions": [], "total": 0, "limit": 100, "offset": 0}
    first = add_message(http, alice, cid)
    add_message(http, alice, cid)
    # A user message (chat service) and the agent's reply (stored by the worker).
    reply = ok_data(
        http.post(
            f"/chat/conversations/{cid}/ai-response",
            json={"message": "one more"},
            headers=alice.headers,
        )
    )
    data = sessions(http, alice, cid)
    assert data["total"] == 1
    [session] = data["sessions"]
    assert session["conversation_id"] == cid
    assert session["messages_count"] == 4 == get_conversation(http, alice, cid)["total_messages"]
    assert ts(session["session_start"]) == ts(first["created_at"])
    assert ts(session["session_end"]) == ts(reply["created_at"])
    assert session["duration_minutes"] == 0


def test_a_gap_of_the_idle_time_starts_a_new_session(
    stack: Stack, http: httpx.Client, alice: User
) -> None:
    chat_url, _ = stack.start_service("chat", CHAT_SESSION_IDLE_MINUTES=str(SHORT_IDLE_MINUTES))
    gateway_url = stack.start_gateway(GATEWAY_CHAT_URL=str(chat_url))
    conversation = create_conversation(http, alice)
    cid = conversation["id"]
    idle = timedelta(minutes=SHORT_IDLE_MINUTES)
    with client(gateway_url) as short:
        early = [add_message(short, alice, cid) for _ in range(2)]
        time.sleep(idle.total_seconds() + 0.2)  # the idle gap itself, the scenario's subject
        late = [add_message(short, alice, cid) for _ in range(3)]
        data = sessions(short, alice, cid)
    times = [ts(m["created_at"]) for m in early + late]
    assert times[1] - times[0] < idle, "the first two posts were too slow to share a session"
    assert times[2] - times[1] >= idle

    assert data["total"] == 2
    newest, oldest = data["sessions"]
    assert (oldest["messages_count"], newest["messages_count"]) == (2, 3)
    assert (ts(oldest["session_start"]), ts(oldest["session_end"])) == (times[0], times[1])
    assert (ts(newest["session_start"]), ts(newest["session_end"])) == (times[2], times[4])
    assert oldest["duration_minutes"] == newest["duration_minutes"] == 0


def test_the_rule_at_its_boundaries(
    http: httpx.Client, alice: User, db: psycopg.Connection
) -> None:
    """The SQL function itself, with explicit times: less than the gap extends, exactly the gap
    starts anew; the duration is whole minutes rounded down."""
    conversation = create_conversation(http, alice)
    cid = conversation["id"]
    t0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    gap = timedelta(minutes=30)
    offsets = [
        timedelta(0),
        timedelta(minutes=10),
        timedelta(minutes=39, seconds=59),  # 29:59 after the previous end: same session
        timedelta(minutes=69, seconds=59),  # exactly 30:00 later: a new session
        timedelta(minutes=71, seconds=58),
    ]
    for offset in offsets:
        db.execute("SELECT chat.record_session_activity(%s, %s, %s)", (cid, t0 + offset, gap))
    data = sessions(http, alice, cid)
    assert data["total"] == 2
    newest, oldest = data["sessions"]
    assert (ts(oldest["session_start"]), ts(oldest["session_end"])) == (t0, t0 + offsets[2])
    assert (oldest["messages_count"], oldest["duration_minutes"]) == (3, 39)
    assert (ts(newest["session_start"]), ts(newest["session_end"])) == (
        t0 + offsets[3],
        t0 + offsets[4],
    )
    assert (newest["messages_count"], newest["duration_minutes"]) == (2, 1)

    # Pages: newest first, with the total on each.
    page = sessions(http, alice, cid, limit=1, offset=1)
    assert (page["total"], page["limit"], page["offset"]) == (2, 1, 1)
    assert [s["id"] for s in page["sessions"]] == [oldest["id"]]
    assert sessions(http, alice, cid, offset=2)["sessions"] == []


async def test_concurrent_posts_share_one_session_and_count_exactly(
    ahttp: httpx.AsyncClient, http: httpx.Client, alice: User
) -> None:
    conversation = create_conversation(http, alice)
    cid = conversation["id"]
    responses = await asyncio.gather(
        *(
            ahttp.post(
                f"/chat/conversations/{cid}/messages",
                json={"content": f"burst {i}"},
                headers=alice.headers,
            )
            for i in range(30)
        )
    )
    assert [r.status_code for r in responses] == [201] * 30, [r.text for r in responses]
    data = sessions(http, alice, cid)
    assert data["total"] == 1
    assert data["sessions"][0]["messages_count"] == 30


def test_sessions_of_another_users_conversation_are_404(
    http: httpx.Client, alice: User, bob: User
) -> None:
    conversation = create_conversation(http, alice)
    add_message(http, alice, conversation["id"])
    response = http.get(f"/chat/conversations/{conversation['id']}/sessions", headers=bob.headers)
    assert_error(response, 404, "not_found")
    assert sessions(http, alice, conversation["id"])["total"] == 1


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 101}, {"offset": -1}])
def test_sessions_paging_is_validated(http: httpx.Client, alice: User, params: Any) -> None:
    conversation = create_conversation(http, alice)
    response = http.get(
        f"/chat/conversations/{conversation['id']}/sessions", params=params, headers=alice.headers
    )
    assert_error(response, 422)


def test_chat_and_worker_read_one_idle_gap_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAT_SESSION_IDLE_MINUTES", "2.5")
    assert ChatSettings().session_idle == WorkerSettings().session_idle == timedelta(seconds=150)
    monkeypatch.delenv("CHAT_SESSION_IDLE_MINUTES")
    assert ChatSettings().session_idle == WorkerSettings().session_idle == timedelta(minutes=30)
