"""After a scripted workload through the gateway, every dashboard and global figure equals what
the chat tables say, and `python -m services.analytics.rebuild` proves it; a rollup that drifts
is reported, and rebuilding repairs it; duplicated events count once."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import httpx
import psycopg
import pytest
import redis

from deploy.local.stack import ROOT
from shared.events import EVENT_STREAM, parse_event
from tests.analytics.support import (
    assert_figures_match_chat_tables,
    dashboard,
    scripted_workload,
    wait_consistent,
    wait_for,
)
from tests.chat.factories import (
    add_message,
    create_agent,
    create_conversation,
    update_conversation,
)
from tests.harness import Stack, User

# A workload, then waiting (with deadlines) for the aggregators: longer than the default.
pytestmark = pytest.mark.timeout(300)


def rebuild_cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.analytics.rebuild", *args],
        env=stack.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_figures_equal_the_chat_tables_after_a_workload(
    stack: Stack,
    http: httpx.Client,
    db: psycopg.Connection,
    new_user: Callable[..., User],
    admin: User,
    agents: list[int | None],
) -> None:
    users = [new_user() for _ in range(3)]
    for n, user in enumerate(users):
        scripted_workload(http, user, agents[n:] + agents[:n], rounds=10)

    wait_consistent(stack)
    done = rebuild_cli(stack, "--verify-only")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verify: consistent" in done.stderr
    # Kathmandu is UTC+5:45: its days start on a quarter hour, not on a UTC hour.
    assert_figures_match_chat_tables(http, db, users, admin, tz="Asia/Kathmandu")
    assert_figures_match_chat_tables(http, db, users, admin, tz="UTC")

    # The workload did produce what the comparison is about.
    first = dashboard(http, users[0])
    assert first["ai_replies_completed"] > 0 and first["ai_replies_failed"] > 0, first
    assert first["most_active_agent"] is not None and first["most_active_agent"]["name"], first
    deleted = db.execute(
        "SELECT count(*) FROM analytics.conversations"
        " WHERE user_id = %s AND deleted_at IS NOT NULL",
        (users[0].id,),
    ).fetchone()
    assert deleted is not None and deleted[0] >= 2


def test_verify_reports_a_drifted_rollup_and_rebuild_repairs_it(
    stack: Stack, http: httpx.Client, db: psycopg.Connection, new_user: Callable[..., User]
) -> None:
    user = new_user()
    conversation = create_conversation(http, user)
    add_message(http, user, conversation["id"])
    add_message(http, user, conversation["id"])
    wait_consistent(stack)

    db.execute(
        "UPDATE analytics.user_totals SET messages = messages + 5 WHERE user_id = %s", (user.id,)
    )
    done = rebuild_cli(stack, "--verify-only")
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"user_totals(user_id={user.id}): messages: live 7, chat tables 2" in done.stdout
    assert dashboard(http, user)["total_messages"] == 7

    done = rebuild_cli(stack)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rebuild: rollups replaced" in done.stderr, done.stderr
    done = rebuild_cli(stack, "--verify-only")
    assert done.returncode == 0, done.stdout + done.stderr
    assert dashboard(http, user)["total_messages"] == 2

    # The aggregators go on from there: nothing the rebuild counted is counted again.
    add_message(http, user, conversation["id"])
    wait_for(lambda: dashboard(http, user)["total_messages"] == 3, "the next message")
    wait_consistent(stack)


def test_a_duplicated_event_counts_once(
    stack: Stack, http: httpx.Client, new_user: Callable[..., User]
) -> None:
    user = new_user()
    conversation = create_conversation(http, user)
    for _ in range(3):
        add_message(http, user, conversation["id"])
    wait_for(lambda: dashboard(http, user)["total_messages"] == 3, "three messages")

    # Append this conversation's events again, twice (as a relay retrying a publish would).
    client = redis.Redis.from_url(stack.redis_url)
    stream = f"{stack.redis_prefix}{EVENT_STREAM}"
    try:
        mine = []
        for _, fields in client.xrange(stream):
            event, data = parse_event(fields[b"event"])
            if getattr(data, "conversation_id", None) == conversation["id"]:
                mine.append(fields[b"event"])
        assert len(mine) == 4, mine
        for raw in mine + mine:
            client.xadd(stream, {"event": raw})
    finally:
        client.close()
    # A later message is applied after them (one aggregator reads the stream in order; with
    # several, verify below still waits for all of them).
    add_message(http, user, conversation["id"])
    wait_for(lambda: dashboard(http, user)["total_messages"] == 4, "the fourth message")
    wait_consistent(stack)
    data = dashboard(http, user)
    assert (data["total_conversations"], data["total_messages"]) == (1, 4), data


def _agent_messages(db: psycopg.Connection, conversation_id: int) -> dict[int, int]:
    rows = db.execute(
        """
        SELECT agent_id, sum(agent_messages)::int FROM analytics.conversation_buckets
        WHERE conversation_id = %s GROUP BY agent_id
        """,
        (conversation_id,),
    ).fetchall()
    return {int(agent): int(count) for agent, count in rows if count}


def test_an_agent_message_posted_by_hand_keeps_its_agent_when_the_conversation_changes_agents(
    stack: Stack, http: httpx.Client, db: psycopg.Connection, admin: User
) -> None:
    first, second = create_agent(http, admin)["id"], create_agent(http, admin)["id"]
    conversation = create_conversation(http, admin, agent_id=first)
    cid = conversation["id"]
    posted = add_message(http, admin, cid, content="written by hand", sender_type="agent")
    update_conversation(http, admin, cid, agent_id=second)

    # Counted for the agent it was posted for, live and by the rebuild from the chat tables
    # (which used to name the conversation's agent now, and so never agreed).
    wait_consistent(stack)
    assert _agent_messages(db, cid) == {first: 1}

    # Its deletion takes it off that agent, not the conversation's new one.
    ok = http.delete(
        f"/chat/conversations/{cid}/messages/{posted['message_id']}", headers=admin.headers
    )
    assert ok.status_code == 200, ok.text
    wait_for(lambda: _agent_messages(db, cid) == {}, "the deletion applied")
    wait_consistent(stack)
