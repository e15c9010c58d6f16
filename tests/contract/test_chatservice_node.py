"""The seed's `ChatService` TypeScript class, unchanged, run in Node against the real gateway.

The ```typescript block of tests/contract/seed/chat-api.md is extracted at test time, type-checked
and transpiled by the real TypeScript compiler (pinned in tests/contract/node/package-lock.json,
installed with `npm ci` into tests/contract/node/node_modules when missing), and driven by
tests/contract/node/driver.mjs, which emulates the browser: `localStorage` holds the token and
`fetch` resolves the class's relative URLs against the gateway as a page's origin.

What each method returns must have the shape of the seed example of the endpoint it calls, and
must be the caller's own data; another user's token sees none of it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import secrets
import shutil
import string
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.contract.seed_contract import assert_seed_shape, chat_service_typescript, example
from tests.harness import Stack, User, client, envelope_data, log_in

NODE_DIR = Path(__file__).resolve().parent / "node"
DRIVER = NODE_DIR / "driver.mjs"
NPM_CI_TIMEOUT = 600
DRIVER_TIMEOUT = 120
# The first test's setup may run `npm ci` (normally ~1 s; slow networks take longer).
pytestmark = pytest.mark.timeout(NPM_CI_TIMEOUT + DRIVER_TIMEOUT + 120)

# Class method -> the seed example (method, path) of the endpoint it calls.
BUILT = {
    "createConversation": ("POST", "/chat/conversations"),
    "sendMessage": ("POST", "/chat/conversations/{id}/messages"),
    "getConversations": ("GET", "/chat/conversations"),
    "getMessages": ("GET", "/chat/conversations/{id}/messages"),
    "searchMessages": ("GET", "/chat/search"),
    "generateAIResponse": ("POST", "/chat/conversations/{id}/ai-response"),
}
# The dashboard is eventually consistent (the analytics aggregator applies events a moment after
# the change) and the driver asks for it before any AI reply: see test_get_analytics below.
ANALYTICS = {
    "getAnalytics": ("GET", "/chat/analytics/dashboard"),
}
# Figures a user without an AI reply yet has none of (null), which the seed example shows filled.
NO_REPLY_YET = {"most_active_agent", "average_response_time"}


# --- installing the TypeScript compiler ----------------------------------------------------------


def _installed_matches_lock() -> bool:
    """Every package of package-lock.json is in node_modules at the locked version."""
    lock = json.loads((NODE_DIR / "package-lock.json").read_text(encoding="utf-8"))
    for location, entry in lock["packages"].items():
        if not location:
            continue
        manifest = NODE_DIR / location / "package.json"
        if not manifest.is_file():
            return False
        if json.loads(manifest.read_text(encoding="utf-8")).get("version") != entry["version"]:
            return False
    return True


@pytest.fixture(scope="session")
def node() -> str:
    """The node binary, with the locked packages installed beside the driver (npm ci if needed)."""
    node_bin, npm_bin = shutil.which("node"), shutil.which("npm")
    if npm_bin is None or node_bin is None:
        pytest.skip(
            "npm/node not found on PATH: the seed's TypeScript ChatService cannot be run "
            "(install Node.js >= 20 with npm to run this test)"
        )
    # One installer at a time, should several test processes start together.
    digest = hashlib.sha256(str(NODE_DIR).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"chat-contract-npm-{digest}.lock"
    with lock_path.open("w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        if not _installed_matches_lock():
            started = time.monotonic()
            done = subprocess.run(
                [npm_bin, "ci", "--no-audit", "--no-fund"],
                cwd=NODE_DIR,
                capture_output=True,
                text=True,
                timeout=NPM_CI_TIMEOUT,
                check=False,
            )
            assert done.returncode == 0, (
                f"`npm ci` in {NODE_DIR} failed ({done.returncode}) after "
                f"{time.monotonic() - started:.1f} s:\n{done.stdout}\n{done.stderr}"
            )
            assert _installed_matches_lock(), "npm ci finished but node_modules != package-lock"
    return node_bin


# --- one run of the driver, shared by the tests below ------------------------------------------


def _register(stack: Stack) -> User:
    suffix = secrets.token_hex(6)
    email, password = f"node-{suffix}@example.com", f"Pw-{secrets.token_urlsafe(12)}-9a"
    with client(stack.gateway_url) as gateway:
        body = {"email": email, "password": password, "name": f"Node {suffix}"}
        envelope_data(gateway.post("/auth/register", json=body), "register")
        return log_in(gateway, email, password)


class Run:
    def __init__(self, output: dict[str, Any], first: User, second: User, config: dict[str, Any]):
        self.output = output
        self.first = first
        self.second = second
        self.config = config

    def call(self, key: str) -> dict[str, Any]:
        calls = self.output.get("calls", {})
        assert key in calls, (
            f"the driver did not record {key}; output: {json.dumps(self.output)[:3000]}"
        )
        return calls[key]

    def result(self, key: str) -> Any:
        entry = self.call(key)
        assert "error" not in entry, f"ChatService.{entry['method']} threw: {entry['error']}"
        return entry["result"]


@pytest.fixture(scope="module")
def run(stack: Stack, node: str) -> Iterator[Run]:
    first, second = _register(stack), _register(stack)
    # Letters only: one unambiguous full-text lexeme that no other test's message contains.
    word = "zq" + "".join(secrets.choice(string.ascii_lowercase) for _ in range(10))
    config = {
        "gateway_url": stack.gateway_url,
        "source": chat_service_typescript(),
        "first_token": first.token,
        "second_token": second.token,
        "title": f"Node contract {word}",
        "content": f"My order number is #12345, reference {word}",
        "query": word,
    }
    done = subprocess.run(
        [node, str(DRIVER)],
        input=json.dumps(config),
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=DRIVER_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"driver failed ({done.returncode}):\n{done.stderr}\n{done.stdout}"
    try:
        output = json.loads(done.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(
            f"driver printed no JSON: {exc}\n{done.stdout}\n{done.stderr}"
        ) from exc
    yield Run(output, first, second, config)


def _path_pattern(seed_path: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(seed_path).replace(r"\{id\}", r"\d+") + r"(\?.*)?$")


def _the_request(entry: dict[str, Any], method: str, seed_path: str) -> dict[str, Any]:
    """The one HTTP request the class made for this call, checked against the seed endpoint."""
    requests = entry["requests"]
    assert len(requests) == 1, f"{entry['method']} made {len(requests)} requests: {requests}"
    request = requests[0]
    assert request["method"] == method, request
    assert _path_pattern(seed_path).match(request["url"]), (
        f"{entry['method']} requested {request['url']}, not {seed_path}"
    )
    return request


# --- the tests ---------------------------------------------------------------------------------


def test_seed_class_type_checks_and_transpiles_unchanged(run: Run) -> None:
    out = run.output
    assert out["type_diagnostics"] == [], (
        "tsc --strict (lib es2022+dom) on the seed's class:\n" + "\n".join(out["type_diagnostics"])
    )
    assert out["transpile_diagnostics"] == [], out["transpile_diagnostics"]
    assert set(out["class_methods"]) >= set(BUILT) | set(ANALYTICS), out["class_methods"]


@pytest.mark.parametrize("method", list(BUILT))
def test_method_returns_seed_shape(run: Run, method: str) -> None:
    http_method, seed_path = BUILT[method]
    entry = run.call(method)
    request = _the_request(entry, http_method, seed_path)
    # The class writes '/chat/...'; the "browser" resolved it against the gateway as page origin.
    assert request["resolved"] == run.output["page_url"].rstrip("/") + request["url"], request
    result = run.result(method)
    assert 200 <= request["status"] < 300, f"{method}: HTTP {request['status']}: {result}"
    assert isinstance(result, dict) and result.get("success") is True, result
    assert_seed_shape(result, example(http_method, seed_path)["response"], f"ChatService.{method}")


def test_results_are_the_callers_own_data(run: Run) -> None:
    conversation_id = run.output["conversation_id"]
    assert isinstance(conversation_id, int), run.output

    sent = run.result("sendMessage")["data"]
    assert sent["conversation_id"] == conversation_id
    assert sent["content"] == run.config["content"]
    assert sent["sender"] == "user"
    message_id = sent["message_id"]

    conversations = run.result("getConversations")["data"]["conversations"]
    mine = [c for c in conversations if c["id"] == conversation_id]
    assert mine, f"created conversation {conversation_id} not listed: {conversations}"
    assert mine[0]["title"] == run.config["title"]
    assert mine[0]["user_id"] == run.first.id
    assert mine[0]["agent_id"] == run.output["agent_id"]
    assert all(c["user_id"] == run.first.id for c in conversations), conversations

    messages = run.result("getMessages")["data"]["messages"]
    assert [(m["id"], m["content"], m["sender"]) for m in messages] == [
        (message_id, run.config["content"], "user")
    ], messages
    assert all(m["conversation_id"] == conversation_id for m in messages)

    found = run.result("searchMessages")["data"]
    assert found["query"] == run.config["query"]
    assert [(r["message_id"], r["conversation_id"]) for r in found["results"]] == [
        (message_id, conversation_id)
    ], found


def test_ai_response_answers_the_users_message(run: Run) -> None:
    """generateAIResponse(conversationId, message, agentId) with the message just sent: the reply
    (from the stand-in LLM, which echoes) is a new agent message; the user's is not stored twice."""
    sent = run.result("sendMessage")["data"]
    reply = run.result("generateAIResponse")["data"]
    assert reply["ai_response"] == f"Echo: {run.config['content']}", reply
    assert reply["message_id"] > sent["message_id"]
    assert reply["tokens_used"] == reply["input_tokens"] + reply["output_tokens"] > 0
    assert reply["processing_time"] >= 0 and reply["cost"] >= 0


def test_another_users_token_sees_none_of_it(run: Run) -> None:
    conversation_id = run.output["conversation_id"]
    message_id = run.result("sendMessage")["data"]["message_id"]

    entry = run.call("second.getMessages")
    request = _the_request(entry, "GET", "/chat/conversations/{id}/messages")
    result = run.result("second.getMessages")
    assert request["status"] == 404, f"HTTP {request['status']}: {result}"
    assert isinstance(result, dict), result
    assert result.get("success") is False, result
    assert result.get("data") is None, result
    assert isinstance(result.get("message"), str) and result["message"], result
    assert run.config["content"] not in json.dumps(result), result

    entry = run.call("second.searchMessages")
    request = _the_request(entry, "GET", "/chat/search")
    found = run.result("second.searchMessages")
    assert request["status"] == 200 and found.get("success") is True, found
    hits = found["data"]["results"]
    assert not [
        r for r in hits if r["message_id"] == message_id or r["conversation_id"] == conversation_id
    ], hits
    assert found["data"]["total"] == 0, found


def test_get_analytics(run: Run) -> None:
    """getAnalytics() answers the seed's shape with the caller's figures. The driver calls it
    before generateAIResponse, so the figures an AI reply would give are still null, and the
    conversation just created may not be counted yet (events are applied asynchronously)."""
    http_method, seed_path = ANALYTICS["getAnalytics"]
    entry = run.call("getAnalytics")
    request = _the_request(entry, http_method, seed_path)
    result = run.result("getAnalytics")
    assert request["status"] == 200, f"HTTP {request['status']}: {result}"
    assert isinstance(result, dict) and result.get("success") is True, result
    data = result["data"]
    assert data["most_active_agent"] is None and data["average_response_time"] is None, data
    seed = example(http_method, seed_path)["response"]
    expected = {**seed, "data": {k: v for k, v in seed["data"].items() if k not in NO_REPLY_YET}}
    assert_seed_shape(result, expected, "ChatService.getAnalytics")
    assert data["total_conversations"] in (0, 1) and data["total_messages"] in (0, 1), data
    assert data["daily_stats"][-1]["messages"] == data["total_messages"], data
