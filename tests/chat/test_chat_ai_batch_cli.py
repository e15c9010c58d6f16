"""`chat-admin regenerate`: dry run, a run with its progress, a second run that starts nothing,
and a run killed mid-batch whose re-run attaches to the same batch and sees it through."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.chat.factories import create_agent, make_replies
from tests.chat.helpers import BATCH_DEADLINE, batch_jobs
from tests.harness import Stack, User

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cli_env(stack: Stack) -> dict[str, str]:
    return {
        **os.environ,
        "CHAT_API_URL": stack.gateway_url,
        "ADMIN_EMAIL": stack.admin_email,
        "ADMIN_PASSWORD": stack.admin_password,
    }


def chat_admin(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.chat.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BATCH_DEADLINE,
    )


def batch_ids(db: psycopg.Connection, agent_id: int) -> list[int]:
    rows = db.execute(
        "SELECT id FROM chat.ai_batches WHERE selection->>'agent_id' = %s ORDER BY id",
        (str(agent_id),),
    ).fetchall()
    return [row[0] for row in rows]


def test_dry_run_then_run_then_run_again(
    http: httpx.Client,
    admin: User,
    alice: User,
    db: psycopg.Connection,
    cli_env: dict[str, str],
) -> None:
    agent: dict[str, Any] = create_agent(http, admin, input_price_per_1k=1.0)
    make_replies(http, alice, agent["id"], 3)
    selection = ["regenerate", "--agent", str(agent["id"]), "--concurrency", "2"]

    dry = chat_admin(cli_env, *selection, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "Selected 3 replies in 3 conversations of 1 users" in dry.stdout
    assert batch_ids(db, agent["id"]) == []

    # Without a terminal, starting needs --yes.
    refused = chat_admin(cli_env, *selection)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert batch_ids(db, agent["id"]) == []

    run = chat_admin(cli_env, *selection, "--yes")
    assert run.returncode == 0, run.stdout + run.stderr
    [batch_id] = batch_ids(db, agent["id"])
    assert f"Batch {batch_id} started" in run.stdout
    assert f"Batch {batch_id} completed: 3 regenerated, 0 failed" in run.stdout
    assert "3/3" in run.stderr  # the progress bar reached the end
    assert len(batch_jobs(db, batch_id)) == 3

    again = chat_admin(cli_env, *selection, "--yes")
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"Batch {batch_id} already exists" in again.stdout
    assert batch_ids(db, agent["id"]) == [batch_id]
    assert len(batch_jobs(db, batch_id)) == 3


def test_a_killed_command_run_again_attaches_to_its_batch(
    http: httpx.Client,
    admin: User,
    alice: User,
    db: psycopg.Connection,
    cli_env: dict[str, str],
) -> None:
    agent: dict[str, Any] = create_agent(http, admin)
    make_replies(http, alice, agent["id"], 4, suffix="[[delay:0.4]]")
    selection = ["regenerate", "--agent", str(agent["id"]), "--concurrency", "1", "--yes"]
    first = subprocess.Popen(
        [sys.executable, "-m", "services.chat.cli", *selection],
        env=cli_env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + BATCH_DEADLINE
        while not batch_ids(db, agent["id"]):
            assert first.poll() is None, "the command ended before its batch existed"
            assert time.monotonic() < deadline, "no batch was created"
            time.sleep(0.05)
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    [batch_id] = batch_ids(db, agent["id"])

    rerun = chat_admin(cli_env, *selection)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"Batch {batch_id} already exists" in rerun.stdout
    assert f"Batch {batch_id} completed: 4 regenerated" in rerun.stdout
    jobs = batch_jobs(db, batch_id)
    assert sorted(job[1] for job in jobs) == sorted({job[1] for job in jobs}) and len(jobs) == 4


def test_bad_credentials_and_bad_input_are_clear_errors(
    stack: Stack, cli_env: dict[str, str]
) -> None:
    wrong = {**cli_env, "ADMIN_PASSWORD": "not-the-password"}
    denied = chat_admin(wrong, "batches")
    assert denied.returncode == 2 and "HTTP 401" in denied.stderr
    empty = chat_admin(cli_env, "regenerate", "--dry-run")
    assert empty.returncode == 2 and "at least one of" in empty.stderr
    assert "Traceback" not in denied.stderr + empty.stderr
