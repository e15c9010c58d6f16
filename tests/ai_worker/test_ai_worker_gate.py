"""A batch's model-call gate (services/ai_worker/gate.py) on the real Redis: the limit holds
across threads, a release hands the slot over at once, a dead holder's lease runs out, a
redelivered job takes back its own slot, and a waiter gives up when it is no longer wanted."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from services.ai_worker.gate import BatchGate, GateClosed, lookahead
from tests.harness import Stack

FAR = 30.0  # a deadline no passing test reaches


@pytest.fixture
def client(stack: Stack) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(stack.redis_url, socket_timeout=5)
    yield client
    client.close()


@pytest.fixture
def gate(stack: Stack, client: redis.Redis) -> BatchGate:
    prefix = f"{stack.redis_prefix}gate-{secrets.token_hex(4)}:"
    return BatchGate(client, prefix, lease_seconds=60)


def wanted() -> bool:
    return True


def test_no_more_than_the_limit_hold_slots_and_a_release_hands_one_over(gate: BatchGate) -> None:
    assert gate.acquire(1, 101, 2, still_wanted=wanted, deadline=time.monotonic() + FAR)
    assert gate.acquire(1, 102, 2, still_wanted=wanted, deadline=time.monotonic() + FAR)
    # Another batch has slots of its own.
    assert gate.acquire(2, 201, 1, still_wanted=wanted, deadline=time.monotonic() + FAR)

    got = threading.Event()

    def third() -> None:
        gate.acquire(1, 103, 2, still_wanted=wanted, deadline=time.monotonic() + FAR)
        got.set()

    waiter = threading.Thread(target=third)
    waiter.start()
    try:
        # Full: the third waits (for a whole poll interval and more it has not got one).
        assert not got.wait(0.8)
        released = time.monotonic()
        gate.release(1, 101, 2)
        assert got.wait(FAR)
        # Woken by the release, not by its own poll.
        assert time.monotonic() - released < 0.4
    finally:
        gate.release(1, 102, 2)
        gate.release(1, 103, 2)
        waiter.join(FAR)


def test_a_redelivered_job_takes_back_its_own_slot(gate: BatchGate) -> None:
    assert gate.acquire(3, 301, 1, still_wanted=wanted, deadline=time.monotonic() + FAR)
    # Its worker died; the broker delivers the job again: it is let in at once.
    assert gate.acquire(3, 301, 1, still_wanted=wanted, deadline=time.monotonic() + 0.1)
    with pytest.raises(GateClosed) as closed:
        gate.acquire(3, 302, 1, still_wanted=wanted, deadline=time.monotonic() + 0.1)
    assert not closed.value.cancelled


def test_a_dead_holders_slot_is_free_when_its_lease_runs_out(
    stack: Stack, client: redis.Redis
) -> None:
    gate = BatchGate(client, f"{stack.redis_prefix}gate-{secrets.token_hex(4)}:", lease_seconds=1)
    assert gate.acquire(4, 401, 1, still_wanted=wanted, deadline=time.monotonic() + FAR)
    started = time.monotonic()
    # 401 never releases (its worker was killed): 402 gets the slot after the lease.
    assert gate.acquire(4, 402, 1, still_wanted=wanted, deadline=time.monotonic() + FAR)
    assert 0.5 < time.monotonic() - started < 5


def test_a_waiter_that_is_no_longer_wanted_gives_up(gate: BatchGate) -> None:
    assert gate.acquire(5, 501, 1, still_wanted=wanted, deadline=time.monotonic() + FAR)
    asked = []

    def cancelled() -> bool:
        asked.append(time.monotonic())
        return False

    with pytest.raises(GateClosed) as closed:
        gate.acquire(5, 502, 1, still_wanted=cancelled, deadline=time.monotonic() + FAR)
    assert closed.value.cancelled and len(asked) == 1


def test_without_redis_the_gate_opens(stack: Stack) -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    gate = BatchGate(dead, "x:", lease_seconds=60)
    assert gate.acquire(6, 601, 1, still_wanted=wanted, deadline=time.monotonic() + FAR) is False
    gate.release(6, 601, 1)  # logged, not raised


def test_waiters_are_handed_slots_in_arrival_order(gate: BatchGate, client: redis.Redis) -> None:
    assert gate.acquire(7, 701, 1, still_wanted=wanted, deadline=time.monotonic() + FAR)
    queue = gate._keys(7)[0][1]
    order: list[int] = []

    def wait(job_id: int) -> None:
        if gate.acquire(7, job_id, 1, still_wanted=wanted, deadline=time.monotonic() + FAR):
            order.append(job_id)

    def queued(count: int) -> None:
        deadline = time.monotonic() + FAR
        while client.llen(queue) < count:
            assert time.monotonic() < deadline, "the waiter never queued"
            time.sleep(0.01)  # a polling interval; the queue's length is what is waited on

    threads = [threading.Thread(target=wait, args=(job_id,)) for job_id in (702, 703)]
    threads[0].start()
    queued(1)
    threads[1].start()
    queued(2)
    gate.release(7, 701, 1)
    threads[0].join(FAR)
    assert order == [702]
    # The first leaves (its call done, or it gave up): the slot passes to the second.
    gate.release(7, 702, 1)
    threads[1].join(FAR)
    assert order == [702, 703]
    assert client.llen(queue) == 0
    gate.release(7, 703, 1)


def test_a_batch_keeps_as_many_jobs_ready_as_its_concurrency_up_to_eight() -> None:
    assert [lookahead(c) for c in (1, 4, 8, 16, 256)] == [1, 4, 8, 8, 8]
