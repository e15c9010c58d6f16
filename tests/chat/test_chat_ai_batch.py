"""Batch regeneration (administrators): selection, dry run, concurrency, budget, idempotency,
cancel and resume, through the gateway with the real worker pool and the stand-in LLM."""

from __future__ import annotations

import secrets
import time
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest

from tests.chat.factories import create_agent, make_replies
from tests.chat.helpers import (
    BATCH_DEADLINE,
    BATCHES,
    assert_error,
    batch_jobs,
    ok_data,
    wait_batch,
)
from tests.harness import Stack, User


def max_in_flight(jobs: list[tuple[Any, ...]]) -> int:
    """The most jobs of the batch that existed unfinished at one time (checked at each job's
    creation: the only moments the number can grow)."""
    return max(
        sum(1 for other in jobs if other[3] <= job[3] and (other[4] is None or other[4] > job[3]))
        for job in jobs
    )


def max_model_calls(calls: list[dict[str, Any]]) -> int:
    """The most of these stand-in LLM requests that were open at one time (a call ending at
    the instant another starts does not overlap it)."""
    edges = sorted(
        [(call["received_at"], 1) for call in calls]
        + [(call["finished_at"], -1) for call in calls],
    )
    peak = open_now = 0
    for _, step in edges:
        open_now += step
        peak = max(peak, open_now)
    return peak


@pytest.fixture
def agent(http: httpx.Client, admin: User) -> dict[str, Any]:
    return create_agent(
        http, admin, input_price_per_1k=2.0, output_price_per_1k=4.0, model="stub-model"
    )


def test_batch_endpoints_are_for_administrators_only(
    http: httpx.Client, alice: User, agent: dict[str, Any]
) -> None:
    body = {"agent_id": agent["id"], "dry_run": True}
    assert_error(http.post(BATCHES, json=body, headers=alice.headers), 403)
    assert_error(http.get(BATCHES, headers=alice.headers), 403)
    assert_error(http.get(f"{BATCHES}/1", headers=alice.headers), 403)
    assert_error(http.post(f"{BATCHES}/1/cancel", headers=alice.headers), 403)
    assert_error(http.post(f"{BATCHES}/1/resume", headers=alice.headers), 403)
    assert_error(http.post(BATCHES, json=body), 401)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"concurrency": 4},
        {"agent_id": 1, "created_after": "2026-02-01T00:00:00Z", "created_before": "2026-01-01"},
        {"agent_id": 1, "concurrency": 0},
        {"agent_id": 1, "max_tokens": 0},
        {"agent_id": 1, "max_cost": -1},
        {"agent_id": 1, "key": "has spaces"},
        {"conversation_ids": []},
        {"agent_id": 1, "colour": "blue"},
    ],
)
def test_a_bad_selection_is_a_422(http: httpx.Client, admin: User, body: dict[str, Any]) -> None:
    assert_error(http.post(BATCHES, json=body, headers=admin.headers), 422)


def test_unknown_batch_is_a_404(http: httpx.Client, admin: User) -> None:
    assert_error(http.get(f"{BATCHES}/987654321", headers=admin.headers), 404)
    assert_error(http.post(f"{BATCHES}/987654321/cancel", headers=admin.headers), 404)
    assert_error(http.post(f"{BATCHES}/987654321/resume", headers=admin.headers), 404)


def test_dry_run_counts_and_prices_the_selection_and_starts_nothing(
    http: httpx.Client,
    admin: User,
    alice: User,
    bob: User,
    agent: dict[str, Any],
    db: psycopg.Connection,
) -> None:
    replies = make_replies(http, alice, agent["id"], 3) + make_replies(http, bob, agent["id"], 2)
    jobs_before = db.execute("SELECT count(*) FROM chat.ai_jobs").fetchone()
    estimate = ok_data(
        http.post(
            BATCHES,
            json={"agent_id": agent["id"], "dry_run": True, "max_tokens": 1},
            headers=admin.headers,
        )
    )
    assert estimate["dry_run"] is True
    assert estimate["replies"] == 5
    assert estimate["conversations"] == 5
    assert estimate["users"] == 2
    # The estimate is what the replies took the first time, at the agent's prices now.
    tokens = sum(r["input_tokens"] + r["output_tokens"] for r in replies)
    cost = sum(
        Decimal(r["input_tokens"]) * 2 / 1000 + Decimal(r["output_tokens"]) * 4 / 1000
        for r in replies
    )
    assert estimate["estimated_tokens"] == tokens
    assert Decimal(str(estimate["estimated_cost"])) == cost.quantize(Decimal("0.000001"))
    assert estimate["within_budget"] is False  # 1 token is not enough
    assert db.execute("SELECT count(*) FROM chat.ai_jobs").fetchone() == jobs_before
    batches = ok_data(http.get(BATCHES, headers=admin.headers, params={"limit": 100}))
    assert estimate["key"] not in {b["key"] for b in batches["batches"]}

    # Filters combine: one conversation of the agent's, and a time range that excludes all.
    one = ok_data(
        http.post(
            BATCHES,
            json={
                "agent_id": agent["id"],
                "conversation_ids": [replies[0]["conversation_id"]],
                "dry_run": True,
            },
            headers=admin.headers,
        )
    )
    assert one["replies"] == 1
    none = ok_data(
        http.post(
            BATCHES,
            json={
                "agent_id": agent["id"],
                "created_before": "2000-01-01T00:00:00Z",
                "dry_run": True,
            },
            headers=admin.headers,
        )
    )
    assert none["replies"] == 0 and none["estimated_cost"] == 0


def test_a_batch_regenerates_each_reply_once_within_its_concurrency(
    stack: Stack,
    http: httpx.Client,
    admin: User,
    alice: User,
    bob: User,
    agent: dict[str, Any],
    db: psycopg.Connection,
) -> None:
    # Each model call takes 0.3 s (the directive is in the prompt, so regenerations keep it).
    tag = f"limit-{secrets.token_hex(4)}"
    replies = make_replies(http, alice, agent["id"], 5, suffix=f"{tag} [[delay:0.3]]")
    replies += make_replies(http, bob, agent["id"], 4, suffix=f"{tag} [[delay:0.3]]")
    created = ok_data(
        http.post(BATCHES, json={"agent_id": agent["id"], "concurrency": 3}, headers=admin.headers),
        201,
    )
    assert created["status"] == "running"
    assert created["progress"]["total"] == 9
    batch = wait_batch(http, admin, created["id"], "completed")
    progress = batch["progress"]
    assert (progress["done"], progress["failed"], progress["remaining"]) == (9, 0, 0)
    assert progress["percent"] == 100.0 and progress["eta_seconds"] == 0

    jobs = batch_jobs(db, created["id"])
    assert sorted(job[1] for job in jobs) == sorted(r["message_id"] for r in replies)
    assert all(job[2] == "completed" for job in jobs)
    assert progress["tokens_used"] == sum(job[5] for job in jobs)
    # The limit holds where it matters: model calls. Up to as many more jobs wait ready, so a
    # slot never idles while the next job is queued and its prompt read.
    assert stack.llm is not None
    calls = [c for c in stack.llm.control.requests(contains=tag) if c["finished_at"]]
    assert len(calls) == 9 + 9, "each reply generated once, then regenerated once"
    peak_calls = max_model_calls(calls)
    assert 2 <= peak_calls <= 3, f"at most 3 model calls at once, and more than one: {peak_calls}"
    peak = max_in_flight(jobs)
    assert peak <= 6, f"at most 3 jobs calling the model and 3 ready: saw {peak}"

    # Every earlier reply is kept, superseded; each conversation has exactly one new reply.
    for reply in replies:
        owner = alice if reply in replies[:5] else bob
        messages = ok_data(
            http.get(
                f"/chat/conversations/{reply['conversation_id']}/messages",
                headers=owner.headers,
            )
        )["messages"]
        agents = [m for m in messages if m["sender"] == "agent"]
        assert len(agents) == 2
        old = next(m for m in agents if m["id"] == reply["message_id"])
        assert old["status"] == "superseded"
        new = next(m for m in agents if m["id"] != reply["message_id"])
        assert new["status"] == "sent" and new["content"] == reply["ai_response"]

    # The owners' own AI quota is not charged for an administrator's batch.
    used = db.execute(
        "SELECT count(*) FROM chat.ai_usage WHERE batch_id = %s", (created["id"],)
    ).fetchone()
    assert used == (9,)


def test_running_the_same_batch_twice_starts_nothing_new(
    http: httpx.Client, admin: User, alice: User, agent: dict[str, Any], db: psycopg.Connection
) -> None:
    make_replies(http, alice, agent["id"], 3)
    body = {"agent_id": agent["id"], "concurrency": 2}
    first = ok_data(http.post(BATCHES, json=body, headers=admin.headers), 201)
    again = ok_data(http.post(BATCHES, json=body, headers=admin.headers), 200)
    assert again["id"] == first["id"] and again["key"] == first["key"]
    wait_batch(http, admin, first["id"], "completed")
    # Once it is done, running it again still starts nothing.
    third = ok_data(http.post(BATCHES, json={**body, "concurrency": 5}, headers=admin.headers))
    assert third["id"] == first["id"] and third["status"] == "completed"
    assert len(batch_jobs(db, first["id"])) == 3

    # The key names the batch: another selection under it is a conflict.
    other = {"agent_id": agent["id"], "key": first["key"], "created_before": "2000-01-01"}
    assert_error(http.post(BATCHES, json=other, headers=admin.headers), 409)

    # A new key starts a new batch, which selects only the current replies (the new ones).
    second = ok_data(
        http.post(BATCHES, json={**body, "key": f"again-{first['id']}"}, headers=admin.headers),
        201,
    )
    assert second["id"] != first["id"] and second["progress"]["total"] == 3
    regenerated = {job[0] for job in batch_jobs(db, first["id"])}
    done = wait_batch(http, admin, second["id"], "completed")
    assert done["progress"]["done"] == 3
    targets = db.execute(
        """
        SELECT j.id FROM chat.ai_jobs j JOIN chat.messages m ON m.ai_job_id = j.id
        WHERE m.id IN (SELECT regenerates_message_id FROM chat.ai_jobs WHERE batch_id = %s)
        """,
        (second["id"],),
    ).fetchall()
    assert {row[0] for row in targets} == regenerated


def test_the_budget_stops_a_batch_and_a_resume_with_more_finishes_it(
    http: httpx.Client, admin: User, alice: User, agent: dict[str, Any], db: psycopg.Connection
) -> None:
    replies = make_replies(http, alice, agent["id"], 4)
    per_reply = [r["input_tokens"] + r["output_tokens"] for r in replies]
    budget = per_reply[0] + per_reply[1]  # replies come in message order: the first two fit
    created = ok_data(
        http.post(
            BATCHES,
            json={"agent_id": agent["id"], "concurrency": 1, "max_tokens": budget},
            headers=admin.headers,
        ),
        201,
    )
    stopped = wait_batch(http, admin, created["id"], "budget_exhausted")
    progress = stopped["progress"]
    assert (progress["done"], progress["pending"], progress["in_flight"]) == (2, 2, 0)
    assert progress["tokens_used"] <= budget

    resumed = ok_data(
        http.post(
            f"{BATCHES}/{created['id']}/resume",
            json={"max_tokens": sum(per_reply)},
            headers=admin.headers,
        )
    )
    assert resumed["status"] == "running" and resumed["max_tokens"] == sum(per_reply)
    done = wait_batch(http, admin, created["id"], "completed")
    assert done["progress"]["done"] == 4
    assert len(batch_jobs(db, created["id"])) == 4


def test_cancel_stops_dispatch_and_resume_picks_up_where_it_stopped(
    http: httpx.Client, admin: User, alice: User, agent: dict[str, Any], db: psycopg.Connection
) -> None:
    make_replies(http, alice, agent["id"], 4, suffix="[[delay:0.5]]")
    created = ok_data(
        http.post(BATCHES, json={"agent_id": agent["id"], "concurrency": 1}, headers=admin.headers),
        201,
    )
    cancelled = ok_data(http.post(f"{BATCHES}/{created['id']}/cancel", headers=admin.headers))
    assert cancelled["status"] == "cancelled"
    assert_error(http.post(f"{BATCHES}/{created['id']}/cancel", headers=admin.headers), 409)
    # Whatever was in flight ends (a queued job is cancelled, a running one finishes) and
    # nothing else starts.
    deadline = time.monotonic() + BATCH_DEADLINE
    while any(job[2] in ("queued", "running") for job in batch_jobs(db, created["id"])):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    stopped = ok_data(http.get(f"{BATCHES}/{created['id']}", headers=admin.headers))
    # Concurrency 1: one job calling the model and one ready (cancelled while it waited).
    assert stopped["progress"]["pending"] >= 2
    assert len(batch_jobs(db, created["id"])) <= 2

    ok_data(
        http.post(
            f"{BATCHES}/{created['id']}/resume", json={"retry_failed": True}, headers=admin.headers
        )
    )
    done = wait_batch(http, admin, created["id"], "completed")
    assert (done["progress"]["done"], done["progress"]["cancelled"]) == (4, 0)
    live = [job for job in batch_jobs(db, created["id"]) if job[2] != "cancelled"]
    assert sorted(job[1] for job in live) == sorted({job[1] for job in live})  # once each


def test_a_batch_whose_dispatch_was_lost_is_started_by_the_sweeper(
    http: httpx.Client, admin: User, alice: User, agent: dict[str, Any], db: psycopg.Connection
) -> None:
    """As if the chat service crashed between committing a batch and asking for its dispatch:
    the batch's rows exist, nothing was sent; the workers' sweep starts and finishes it."""
    replies = make_replies(http, alice, agent["id"], 2)
    key = f"lost-{secrets.token_hex(4)}"
    row = db.execute(
        """
        INSERT INTO chat.ai_batches (key, created_by, selection, concurrency,
                                     job_deadline_seconds)
        VALUES (%s, %s, '{}', 2, 600) RETURNING id
        """,
        (key, admin.id),
    ).fetchone()
    assert row is not None
    batch_id = row[0]
    for reply in replies:
        db.execute(
            """
            INSERT INTO chat.ai_batch_items (batch_id, message_id, conversation_id, user_id,
                                             agent_id, prompt_message_id, include_context,
                                             estimated_tokens, estimated_cost)
            SELECT %s, m.id, m.conversation_id, %s, %s, j.prompt_message_id, true, 10, 0
            FROM chat.messages m JOIN chat.ai_jobs j ON j.id = m.ai_job_id WHERE m.id = %s
            """,
            (batch_id, alice.id, agent["id"], reply["message_id"]),
        )
    done = wait_batch(http, admin, batch_id, "completed")
    assert done["progress"]["done"] == 2
