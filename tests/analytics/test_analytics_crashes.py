"""Crashes and data loss in the middle of a workload: aggregators and the relay killed with
SIGKILL, then Redis losing the stream. After recovery every figure still equals the chat
tables: nothing lost (pending entries are taken over, the relay replays), nothing counted twice
(applied event ids are remembered)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest
import redis

from shared.events import EVENT_STREAM
from shared.stream_consumer import stream_names
from tests.analytics.support import (
    assert_figures_match_chat_tables,
    scripted_workload,
    wait_consistent,
    wait_for,
)
from tests.harness import Stack, User, client

# A workload, then waiting (with deadlines) for the aggregators: longer than the default.
pytestmark = pytest.mark.timeout(300)

ROUNDS = 12


class Progress:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rounds = 0

    def step(self) -> None:
        with self._lock:
            self.rounds += 1


def own_process(stack: Stack, name: str) -> int:
    return next(service.process.pid for service in stack.services if service.name == name)


def test_killed_aggregators_and_relay_and_a_redis_data_loss_lose_and_double_nothing(
    stack: Stack,
    http: httpx.Client,
    db: psycopg.Connection,
    new_user: Callable[..., User],
    admin: User,
    agents: list[int | None],
) -> None:
    users = [new_user() for _ in range(3)]
    redis_client = redis.Redis.from_url(stack.redis_url)
    _, dead = stream_names(stack.redis_prefix)
    dead_before = redis_client.xlen(dead)
    # Two more aggregators share the group; a second relay waits as a standby.
    _, extra_aggregator = stack.start_service("aggregator")
    _, survivor = stack.start_service("aggregator")
    _, extra_relay = stack.start_service("relay")
    progress = Progress()

    def run(user: User, offset: int) -> None:
        with client(stack.gateway_url) as gateway:
            mix = agents[offset:] + agents[:offset]
            scripted_workload(gateway, user, mix, rounds=ROUNDS, progress=progress.step)

    with ThreadPoolExecutor(len(users)) as pool:
        running = [pool.submit(run, user, n) for n, user in enumerate(users)]
        wait_for(lambda: progress.rounds >= 6 or any(f.done() for f in running), "some rounds")
        os.kill(own_process(stack, "aggregator"), signal.SIGKILL)
        os.kill(extra_aggregator.pid, signal.SIGKILL)
        os.kill(own_process(stack, "relay"), signal.SIGKILL)

        wait_for(lambda: progress.rounds >= 18 or any(f.done() for f in running), "more rounds")
        # As after a Redis restart without persistence: the stream (with its consumer group
        # and pending entries) and the relay's marker are gone.
        redis_client.delete(
            f"{stack.redis_prefix}{EVENT_STREAM}",
            f"{stack.redis_prefix}{EVENT_STREAM}:relay-marker",
        )
        stack.restart_service("aggregator")
        stack.restart_service("relay")  # now a standby: the extra relay took over
        for future in running:
            future.result()
    assert progress.rounds == ROUNDS * len(users)

    wait_consistent(stack)
    assert_figures_match_chat_tables(http, db, users, admin, tz="Europe/Paris")
    # Taken over or replayed, never given up on.
    assert redis_client.xlen(dead) == dead_before
    # The aggregator that was reading when the stream vanished went on (it recreated the group).
    assert survivor.returncode is None, survivor.tail()
    redis_client.close()
    # The stack's own (restarted) aggregator and relay carry on for the other tests; the extra
    # processes give their database connections back.
    survivor.stop()
    extra_relay.stop()
