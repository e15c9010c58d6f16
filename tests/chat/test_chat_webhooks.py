"""Webhooks through the gateway and the real delivery process: registration (admins only,
validated), signed deliveries (checked with the `standardwebhooks` library), retries until the
receiver recovers, dead letters after the last attempt, the delivery log, event-type filters,
inactive endpoints, secret rotation.

The harness runs the delivery process with CHAT_WEBHOOKS_MAX_ATTEMPTS=4 and backoff from 0.05 s
capped at 0.3 s, and a 3 s HTTP timeout (tests/conftest.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
import redis
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from shared.events import EVENT_STREAM
from tests.chat.factories import add_message, create_conversation, update_conversation
from tests.chat.helpers import assert_error, ok_data, ts
from tests.harness import Stack, User
from tests.support.webhook_receiver import Received, Reply, Respond, WebhookReceiver

HOOKS = "/chat/admin/webhooks"
WAIT_SECONDS = 30.0


# --- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[Callable[[Respond], WebhookReceiver]]:
    """A factory of receivers (stopped at the end of the test)."""
    started: list[WebhookReceiver] = []

    def make(respond: Respond) -> WebhookReceiver:
        started.append(WebhookReceiver(respond))
        return started[-1]

    yield make
    for one in started:
        one.stop()


@pytest.fixture
def register(
    http: httpx.Client, admin: User, receiver: Callable[[Respond], WebhookReceiver]
) -> Iterator[Callable[..., dict[str, Any]]]:
    """Registers webhooks as the admin; deletes them at the end of the test (before the
    receivers stop), so no later test's events go to them."""
    created: list[int] = []

    def make(url: str, event_types: list[str], **fields: Any) -> dict[str, Any]:
        body = {"url": url, "event_types": event_types, **fields}
        hook: dict[str, Any] = ok_data(http.post(HOOKS, json=body, headers=admin.headers), 201)
        created.append(hook["id"])
        return hook

    yield make
    for hook_id in created:
        response = http.delete(f"{HOOKS}/{hook_id}", headers=admin.headers)
        assert response.status_code in (200, 404), response.text


def of_user(user: User) -> Callable[[Received], bool]:
    return lambda request: request.json()["user_id"] == user.id


def deliveries(http: httpx.Client, admin: User, hook_id: int, **params: Any) -> dict[str, Any]:
    return ok_data(
        http.get(
            f"{HOOKS}/{hook_id}/deliveries", params={"limit": 100, **params}, headers=admin.headers
        )
    )


def delivery_of(http: httpx.Client, admin: User, hook_id: int, event_id: str) -> dict[str, Any]:
    found = [d for d in deliveries(http, admin, hook_id)["deliveries"] if d["event_id"] == event_id]
    assert len(found) == 1, found
    detail: dict[str, Any] = ok_data(
        http.get(f"{HOOKS}/{hook_id}/deliveries/{found[0]['id']}", headers=admin.headers)
    )
    return detail


def wait_delivery(
    http: httpx.Client,
    admin: User,
    hook_id: int,
    condition: Callable[[dict[str, Any]], bool],
    what: str,
) -> dict[str, Any]:
    """Polls the delivery log until one delivery meets `condition`."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        log = deliveries(http, admin, hook_id)["deliveries"]
        for delivery in log:
            if condition(delivery):
                return delivery
        assert time.monotonic() < deadline, f"{what}: not within {WAIT_SECONDS} s: {log}"
        time.sleep(0.05)  # a polling interval; the delivery log is what is waited on


def metrics_text(stack: Stack) -> str:
    process = next(s for s in stack.services if s.name == "webhooks")
    response = httpx.get(f"{process.url}/metrics", timeout=10)
    assert response.status_code == 200
    return response.text


def webhook_metrics(stack: Stack) -> dict[str, float]:
    """webhook_deliveries_total by outcome."""
    text = metrics_text(stack)
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("webhook_deliveries_total{"):
            series, value = line.rsplit(" ", 1)
            values[series.split('outcome="', 1)[1].split('"', 1)[0]] = float(value)
    return values


def verify(secret: str, request: Received) -> Any:
    """The body, if the request's signature verifies with `secret` (the library's own check,
    independent of ours: it also refuses timestamps more than 5 minutes off)."""
    return Webhook(secret).verify(request.body, request.headers)


# --- the check ----------------------------------------------------------------------------


def test_a_receiver_failing_twice_gets_each_event_once_with_valid_signatures(
    stack: Stack,
    http: httpx.Client,
    admin: User,
    alice: User,
    receiver: Callable[[Respond], WebhookReceiver],
    register: Callable[..., dict[str, Any]],
) -> None:
    before = webhook_metrics(stack)
    # The first two deliveries of every event fail; from the third on it accepts.
    rx = receiver(lambda request, nth: 500 if nth <= 2 else 204)
    hook = register(rx.url, ["conversation.created", "message.created"], description="crm")
    assert hook["secret"].startswith("whsec_") and hook["is_active"] is True
    assert hook["event_types"] == ["conversation.created", "message.created"]

    conversation = create_conversation(http, alice, title="hooked")
    add_message(http, alice, conversation["id"], content="hello hooks")
    mine = of_user(alice)
    rx.wait_for(lambda: len(rx.successes(mine)) == 2, "both events delivered")

    requests = rx.requests(mine)
    by_id: dict[str, list[Received]] = {}
    for request in requests:
        by_id.setdefault(request.webhook_id, []).append(request)
    assert len(by_id) == 2
    events = {}
    for webhook_id, attempts in by_id.items():
        # Three attempts, the same id and body each time, two failures then one success.
        assert [r.status for r in attempts] == [500, 500, 204]
        assert len({r.body for r in attempts}) == 1
        for request in attempts:
            assert verify(hook["secret"], request)["id"] == webhook_id
            assert request.headers["content-type"] == "application/json"
            assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 300
            assert request.headers["webhook-signature"].startswith("v1,")
            assert request.path == "/hooks"
            # The receiver joins the trace of the request behind the event.
            trace = request.json()["trace"]
            assert request.headers["traceparent"] == trace["traceparent"], trace
        # The timestamp is the attempt's own, so it never goes back.
        stamps = [int(r.headers["webhook-timestamp"]) for r in attempts]
        assert stamps == sorted(stamps)
        events[webhook_id] = attempts[0].json()

    # The body is exactly the event as on the stream (shared/events.py).
    stream = redis.Redis.from_url(stack.redis_url)
    try:
        on_stream = {}
        for _, fields in stream.xrange(f"{stack.redis_prefix}{EVENT_STREAM}"):
            try:
                event = orjson.loads(fields.get(b"event", b""))
            except orjson.JSONDecodeError:
                continue  # another test's deliberately malformed entry (the stream is shared)
            if isinstance(event, dict) and event.get("id") in events:
                on_stream[event["id"]] = event
    finally:
        stream.close()
    assert on_stream == events
    assert sorted(e["type"] for e in events.values()) == ["conversation.created", "message.created"]
    created = next(e for e in events.values() if e["type"] == "conversation.created")
    assert created["data"]["conversation_id"] == conversation["id"]
    assert created["data"]["title"] == "hooked"

    # The delivery log: three attempts, delivered, each attempt recorded. The receiver has the
    # third request a moment before the sender records its answer: wait for the record.
    for webhook_id in events:
        wait_delivery(
            http,
            admin,
            hook["id"],
            lambda d, wid=webhook_id: d["event_id"] == wid and d["status"] == "delivered",
            f"delivery of {webhook_id} recorded",
        )
        delivery = delivery_of(http, admin, hook["id"], webhook_id)
        assert delivery["status"] == "delivered", delivery
        assert delivery["attempts"] == 3, delivery["attempt_log"]
        assert delivery["last_status_code"] == 204
        assert delivery["last_error"] is None
        assert delivery["next_attempt_at"] is None
        assert ts(delivery["delivered_at"]) >= ts(delivery["created_at"])
        assert delivery["webhook_id"] == hook["id"]
        assert delivery["payload"] == events[webhook_id]
        log = delivery["attempt_log"]
        assert [(a["attempt"], a["outcome"], a["status_code"]) for a in log] == [
            (1, "failed", 500),
            (2, "failed", 500),
            (3, "delivered", 204),
        ]
        assert log[0]["error"] == "HTTP 500" and log[0]["response_excerpt"] == "ok"
    after = webhook_metrics(stack)
    assert after.get("delivered", 0) - before.get("delivered", 0) == 2
    assert after.get("failed", 0) - before.get("failed", 0) == 4
    text = metrics_text(stack)
    for series in (
        "webhook_delivery_latency_seconds_count",
        "webhook_attempt_duration_seconds_count",
        "webhook_deliveries_due",
        'events_consumed_total{group="webhooks",type="message.created"}',
        'events_consumer_lag_entries{group="webhooks"}',
    ):
        assert series in text, series


# --- registration ---------------------------------------------------------------------------------


def test_only_admins_manage_webhooks(
    stack: Stack,
    http: httpx.Client,
    admin: User,
    bob: User,
    register: Callable[..., dict[str, Any]],
) -> None:
    hook = register("https://example.com/hooks", ["*"])
    body = {"url": "https://example.com/x", "event_types": ["*"]}
    assert_error(http.post(HOOKS, json=body, headers=bob.headers), 403, "forbidden")
    assert_error(http.get(HOOKS, headers=bob.headers), 403, "forbidden")
    for path in (f"{HOOKS}/{hook['id']}", f"{HOOKS}/{hook['id']}/deliveries"):
        assert_error(http.get(path, headers=bob.headers), 403, "forbidden")
    assert_error(
        http.put(f"{HOOKS}/{hook['id']}", json={"is_active": False}, headers=bob.headers), 403
    )
    assert_error(http.delete(f"{HOOKS}/{hook['id']}", headers=bob.headers), 403)
    assert_error(http.post(f"{HOOKS}/{hook['id']}/rotate-secret", headers=bob.headers), 403)
    assert_error(http.get(HOOKS), 401)
    # Nothing changed, and the secret is shown only at creation.
    shown = ok_data(http.get(f"{HOOKS}/{hook['id']}", headers=admin.headers))
    assert shown["is_active"] is True and "secret" not in shown
    listed = ok_data(http.get(HOOKS, headers=admin.headers))
    assert hook["id"] in [h["id"] for h in listed["webhooks"]]
    assert all("secret" not in h for h in listed["webhooks"])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://example.com/hooks", "event_types": ["*"]}, "url"),
        ({"url": "not a url", "event_types": ["*"]}, "url"),
        ({"url": "http://", "event_types": ["*"]}, "url"),
        ({"url": "example.com/hooks", "event_types": ["*"]}, "url"),
        ({"url": "javascript:alert(1)", "event_types": ["*"]}, "url"),
        ({"url": "https://example.com/" + "a" * 2000, "event_types": ["*"]}, "url"),
        ({"url": "https://example.com", "event_types": []}, "event_types"),
        ({"url": "https://example.com", "event_types": ["message.sent"]}, "event_types"),
        ({"url": "https://example.com", "event_types": ["*", "message.created"]}, "event_types"),
        ({"event_types": ["*"]}, "url"),
        ({"url": "https://example.com", "event_types": ["*"], "secret": "mine"}, "secret"),
    ],
)
def test_invalid_webhooks_are_refused(
    http: httpx.Client, admin: User, body: dict[str, Any], field: str
) -> None:
    error = assert_error(http.post(HOOKS, json=body, headers=admin.headers), 422)
    assert field in error["error"]["details"][0]["loc"], error


def test_updates_are_validated_and_delete_removes_the_log(
    http: httpx.Client, admin: User, register: Callable[..., dict[str, Any]]
) -> None:
    hook = register("https://example.com/hooks", ["message.created"])
    path = f"{HOOKS}/{hook['id']}"
    assert_error(http.put(path, json={"url": "gopher://x"}, headers=admin.headers), 422)
    assert_error(http.put(path, json={"event_types": ["nope"]}, headers=admin.headers), 422)
    assert_error(http.put(path, json={}, headers=admin.headers), 422)
    assert_error(http.put(path, json={"is_active": None}, headers=admin.headers), 422)
    changed = ok_data(
        http.put(
            path,
            json={"url": "https://example.org/new", "event_types": ["*"], "description": "all"},
            headers=admin.headers,
        )
    )
    assert changed["url"] == "https://example.org/new"
    assert changed["event_types"] == ["*"] and changed["description"] == "all"
    assert ts(changed["updated_at"]) >= ts(changed["created_at"])
    assert ok_data(http.delete(path, headers=admin.headers)) == {"webhook_id": hook["id"]}
    assert_error(http.get(path, headers=admin.headers), 404, "not_found")
    assert_error(http.get(f"{path}/deliveries", headers=admin.headers), 404)
    assert_error(http.delete(path, headers=admin.headers), 404)
    assert_error(http.put(path, json={"is_active": True}, headers=admin.headers), 404)


# --- what is sent where ---------------------------------------------------------------------------


def test_endpoints_get_only_their_event_types_and_inactive_ones_nothing(
    http: httpx.Client,
    admin: User,
    alice: User,
    receiver: Callable[[Respond], WebhookReceiver],
    register: Callable[..., dict[str, Any]],
) -> None:
    everything = receiver(lambda request, nth: 200)
    messages = receiver(lambda request, nth: 200)
    off = receiver(lambda request, nth: 200)
    all_hook = register(everything.url, ["*"])
    messages_hook = register(messages.url, ["message.created"])
    off_hook = register(off.url, ["*"], is_active=False)
    mine = of_user(alice)

    conversation = create_conversation(http, alice)
    add_message(http, alice, conversation["id"])
    update_conversation(http, alice, conversation["id"], is_pinned=True)
    # All three reached the catch-all endpoint, so every endpoint's deliveries of them are
    # decided (each batch of the stream is enqueued for all endpoints in one transaction).
    everything.wait_for(lambda: len(everything.successes(mine)) == 3, "all three events")
    # Senders work in parallel: deliveries are not ordered (receivers order by occurred_at).
    assert sorted(r.json()["type"] for r in everything.successes(mine)) == [
        "conversation.created",
        "conversation.updated",
        "message.created",
    ]
    messages.wait_for(lambda: len(messages.successes(mine)) == 1, "the message event")
    ids = {r.webhook_id for r in everything.successes(mine)}
    logged = [d for d in deliveries(http, admin, messages_hook["id"])["deliveries"]]
    assert [d["event_type"] for d in logged if d["event_id"] in ids] == ["message.created"]
    assert [r.json()["type"] for r in messages.requests(mine)] == ["message.created"]
    # The inactive endpoint: no request, no delivery.
    assert off.requests() == []
    assert deliveries(http, admin, off_hook["id"])["total"] == 0

    # The receiver has each request a moment before the sender records its answer: wait for
    # the three records before reading the log's filters.
    deadline = time.monotonic() + WAIT_SECONDS
    while deliveries(http, admin, all_hook["id"], status="delivered")["total"] < 3:
        assert time.monotonic() < deadline, "three deliveries recorded as delivered"
        time.sleep(0.05)  # a polling interval; the delivery log is what is waited on

    # The log pages newest first and filters.
    page = deliveries(http, admin, all_hook["id"], limit=2)
    assert page["total"] == 3 and page["limit"] == 2 and page["offset"] == 0
    assert [d["event_type"] for d in page["deliveries"]] == [
        "conversation.updated",
        "message.created",
    ]
    rest = deliveries(http, admin, all_hook["id"], limit=2, offset=2)
    assert [d["event_type"] for d in rest["deliveries"]] == ["conversation.created"]
    assert deliveries(http, admin, all_hook["id"], status="delivered")["total"] == 3
    assert deliveries(http, admin, all_hook["id"], status="dead")["total"] == 0
    assert deliveries(http, admin, all_hook["id"], event_type="message.created")["total"] == 1
    assert_error(
        http.get(
            f"{HOOKS}/{all_hook['id']}/deliveries", params={"status": "lost"}, headers=admin.headers
        ),
        422,
    )

    # Activated, it gets what happens from then on (not what happened while it was off).
    ok_data(http.put(f"{HOOKS}/{off_hook['id']}", json={"is_active": True}, headers=admin.headers))
    message = add_message(http, alice, conversation["id"])
    off.wait_for(lambda: len(off.successes(mine)) == 1, "the event after activation")
    got = off.successes(mine)[0].json()
    assert got["type"] == "message.created" and got["data"]["message_id"] == message["message_id"]


def test_an_endpoint_that_never_recovers_ends_dead_and_can_be_retried(
    stack: Stack,
    http: httpx.Client,
    admin: User,
    alice: User,
    receiver: Callable[[Respond], WebhookReceiver],
    register: Callable[..., dict[str, Any]],
) -> None:
    max_attempts = int(stack.env["CHAT_WEBHOOKS_MAX_ATTEMPTS"])
    backoff_base = float(stack.env["CHAT_WEBHOOKS_BACKOFF_BASE_SECONDS"])
    backoff_cap = float(stack.env["CHAT_WEBHOOKS_BACKOFF_MAX_SECONDS"])
    recovered = threading.Event()
    box: dict[str, str] = {}

    def respond(request: Received, nth: int) -> int | Reply:
        if recovered.is_set():
            return 200
        # A redirect is a failure, and is not followed.
        return Reply(302, headers={"location": box["url"] + "/elsewhere"})

    rx = receiver(respond)
    box["url"] = rx.url
    hook = register(rx.url, ["conversation.created"])
    before = webhook_metrics(stack)
    create_conversation(http, alice)
    mine = of_user(alice)

    dead = wait_delivery(http, admin, hook["id"], lambda d: d["status"] == "dead", "dead")
    assert dead["attempts"] == max_attempts
    assert dead["last_status_code"] == 302 and dead["last_error"] == "HTTP 302"
    assert dead["next_attempt_at"] is None and dead["delivered_at"] is None
    attempts = rx.requests(mine)
    assert len(attempts) == max_attempts
    assert {r.path for r in rx.requests()} == {"/hooks"}  # never followed to /elsewhere
    assert {r.webhook_id for r in attempts} == {dead["event_id"]}
    # Backoff: each wait at least half of base * 4^(n-1) (the jitter's floor), within the cap.
    gaps = [b.arrived - a.arrived for a, b in zip(attempts, attempts[1:], strict=False)]
    for n, gap in enumerate(gaps, start=1):
        assert gap >= 0.5 * min(backoff_cap, backoff_base * 4 ** (n - 1)) - 0.01, gaps
    detail = delivery_of(http, admin, hook["id"], dead["event_id"])
    assert [a["outcome"] for a in detail["attempt_log"]] == ["failed"] * (max_attempts - 1) + [
        "dead"
    ]
    after = webhook_metrics(stack)
    assert after.get("dead", 0) - before.get("dead", 0) == 1
    assert after.get("failed", 0) - before.get("failed", 0) == max_attempts - 1
    assert ok_data(http.get(f"{HOOKS}/{hook['id']}", headers=admin.headers))["is_active"]

    # Retried by hand once the receiver works: one more attempt, delivered, same webhook-id.
    recovered.set()
    retry_path = f"{HOOKS}/{hook['id']}/deliveries/{dead['id']}/retry"
    scheduled = ok_data(http.post(retry_path, headers=admin.headers))
    assert scheduled["status"] == "pending" and scheduled["id"] == dead["id"]
    done = wait_delivery(
        http, admin, hook["id"], lambda d: d["status"] == "delivered", "delivered after retry"
    )
    assert done["attempts"] == max_attempts + 1 and done["last_status_code"] == 200
    assert [r.status for r in rx.requests(mine)] == [302] * max_attempts + [200]
    assert {r.webhook_id for r in rx.requests(mine)} == {dead["event_id"]}
    assert_error(http.post(retry_path, headers=admin.headers), 409, "conflict")
    missing = f"{HOOKS}/{hook['id']}/deliveries/999999999/retry"
    assert_error(http.post(missing, headers=admin.headers), 404)


def test_a_receiver_slower_than_the_timeout_is_retried(
    http: httpx.Client,
    admin: User,
    alice: User,
    receiver: Callable[[Respond], WebhookReceiver],
    register: Callable[..., dict[str, Any]],
) -> None:
    # The first attempt outlasts the sender's 3 s timeout (held until the test is done); the
    # second is answered at once.
    release = threading.Event()
    rx = receiver(
        lambda request, nth: Reply(200, delay_seconds=30.0, until=release) if nth == 1 else 200
    )
    try:
        hook = register(rx.url, ["conversation.created"])
        create_conversation(http, alice)
        done = wait_delivery(http, admin, hook["id"], lambda d: d["status"] == "delivered", "done")
    finally:
        release.set()
    assert done["attempts"] == 2
    log = delivery_of(http, admin, hook["id"], done["event_id"])["attempt_log"]
    assert log[0]["outcome"] == "failed" and log[0]["status_code"] is None
    assert "timeout" in log[0]["error"], log
    assert 2.9 <= log[0]["duration_seconds"] < 10, log


def test_an_inactive_endpoint_is_never_sent_to_and_resumes_when_activated(
    http: httpx.Client,
    admin: User,
    alice: User,
    receiver: Callable[[Respond], WebhookReceiver],
    register: Callable[..., dict[str, Any]],
) -> None:
    release = threading.Event()
    healthy = threading.Event()

    def respond(request: Received, nth: int) -> int | Reply:
        if healthy.is_set():
            return 200
        if nth == 1:
            return 500
        # The second attempt is held (past the sender's timeout) while the test deactivates.
        return Reply(500, delay_seconds=5.0, until=release)

    rx = receiver(respond)
    hook = register(rx.url, ["conversation.created"])
    path = f"{HOOKS}/{hook['id']}"
    create_conversation(http, alice)
    mine = of_user(alice)
    rx.wait_for(lambda: len(rx.requests(mine)) == 2, "the second attempt under way")
    ok_data(http.put(path, json={"is_active": False}, headers=admin.headers))
    release.set()
    event_id = rx.requests(mine)[0].webhook_id
    # Deactivated mid-attempt: the attempt is recorded, and the delivery waits (paused).
    deadline = time.monotonic() + WAIT_SECONDS
    while len((paused := delivery_of(http, admin, hook["id"], event_id))["attempt_log"]) < 2:
        assert time.monotonic() < deadline, paused
        time.sleep(0.05)  # a polling interval; the attempt log is what is waited on
    assert paused["status"] == "failed" and paused["next_attempt_at"] is None, paused
    # Several backoff caps (0.3 s) and sender polls (0.05 s) go by: nothing is sent.
    quiet_until = time.monotonic() + 1.5
    while time.monotonic() < quiet_until:
        assert len(rx.requests(mine)) == 2
        time.sleep(0.05)  # watching for a request that must not come
    assert deliveries(http, admin, hook["id"])["deliveries"][0]["attempts"] == 2

    healthy.set()
    ok_data(http.put(path, json={"is_active": True}, headers=admin.headers))
    done = wait_delivery(http, admin, hook["id"], lambda d: d["status"] == "delivered", "resumed")
    assert done["attempts"] == 3 and done["id"] == paused["id"]
    assert [r.status for r in rx.requests(mine)][-1] == 200


def test_after_a_secret_rotation_both_secrets_sign_until_the_old_one_expires(
    http: httpx.Client,
    admin: User,
    alice: User,
    receiver: Callable[[Respond], WebhookReceiver],
    register: Callable[..., dict[str, Any]],
) -> None:
    rx = receiver(lambda request, nth: 200)
    hook = register(rx.url, ["conversation.created"])
    path = f"{HOOKS}/{hook['id']}"
    rotated = ok_data(http.post(f"{path}/rotate-secret", headers=admin.headers))
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != hook["secret"]
    expires = ts(rotated["previous_secret_expires_at"])
    assert timedelta(hours=23) < expires - datetime.now(UTC) <= timedelta(hours=24)
    mine = of_user(alice)

    create_conversation(http, alice)
    rx.wait_for(lambda: len(rx.successes(mine)) == 1, "first delivery")
    first = rx.successes(mine)[0]
    assert len(first.headers["webhook-signature"].split(" ")) == 2
    assert verify(hook["secret"], first) == verify(rotated["secret"], first) == first.json()

    # Rotated again without a grace period: only the newest secret signs.
    newest = ok_data(
        http.post(
            f"{path}/rotate-secret",
            json={"previous_secret_valid_seconds": 0},
            headers=admin.headers,
        )
    )
    assert newest["previous_secret_expires_at"] is None
    create_conversation(http, alice)
    rx.wait_for(lambda: len(rx.successes(mine)) == 2, "second delivery")
    second = rx.successes(mine)[1]
    assert len(second.headers["webhook-signature"].split(" ")) == 1
    assert verify(newest["secret"], second) == second.json()
    for stale in (hook["secret"], rotated["secret"]):
        with pytest.raises(WebhookVerificationError):
            verify(stale, second)


def test_two_delivery_processes_share_the_work_and_send_each_event_once(
    stack: Stack,
    http: httpx.Client,
    alice: User,
    receiver: Callable[[Respond], WebhookReceiver],
    register: Callable[..., dict[str, Any]],
) -> None:
    # Slow answers keep every sender of both processes busy at once.
    rx = receiver(lambda request, nth: Reply(200, delay_seconds=0.05))
    register(rx.url, ["conversation.created"])
    second_url, second = stack.start_service("webhooks")
    try:
        mine = of_user(alice)
        for _ in range(30):
            create_conversation(http, alice)
        rx.wait_for(lambda: len(rx.successes(mine)) >= 30, "thirty deliveries")
        ids = [r.webhook_id for r in rx.requests(mine)]
        assert len(ids) == len(set(ids)) == 30, "an event was sent twice"
        # The receiver has a request a moment before its sender counts it: poll the counter.
        deadline = time.monotonic() + WAIT_SECONDS
        while 'webhook_deliveries_total{outcome="delivered"}' not in (
            httpx.get(f"{second_url}/metrics", timeout=10).text
        ):
            assert time.monotonic() < deadline, "the second process sent none"
            time.sleep(0.05)  # a polling interval; the counter is what is waited on
    finally:
        assert second.stop() == 0, "the second process did not stop cleanly on SIGTERM"
