"""Every error is the envelope with the right status: unknown paths, wrong methods, broken JSON,
bad ids; never an HTML page, a bare {"detail": ...} body or a 500."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from deploy.local.processes import free_port
from tests.gateway.support import assert_error_envelope, register_and_log_in
from tests.harness import HTTP_TIMEOUT, Stack, User


@pytest.fixture(scope="module")
def user(stack: Stack) -> User:
    return register_and_log_in(stack.gateway_url, "errors")


@pytest.fixture
def gw(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway_url, timeout=HTTP_TIMEOUT, trust_env=False) as c:
        yield c


@pytest.mark.parametrize(
    "path",
    ["/nope", "/auth/nope", "/api/v1/conversations", "/chat/nope", "/chat/conversations/1/x"],
)
def test_unknown_path_is_404_envelope(gw: httpx.Client, user: User, path: str) -> None:
    assert_error_envelope(gw.get(path, headers=user.headers), 404, "not_found")


def test_unknown_path_without_token_is_still_an_envelope(gw: httpx.Client) -> None:
    response = gw.get("/nope")
    assert_error_envelope(response, 404, "not_found")


WRONG_METHODS = [
    ("PATCH", "/chat/conversations", {"GET", "POST"}),
    ("DELETE", "/chat/conversations", {"GET", "POST"}),
    ("POST", "/chat/conversations/1", {"GET", "PUT", "DELETE"}),
    ("DELETE", "/auth/login", {"POST"}),
    ("GET", "/auth/register", {"POST"}),
    ("PUT", "/auth/me", {"GET"}),
]
_IDS = [f"{method} {path}" for method, path, _ in WRONG_METHODS]


@pytest.mark.parametrize(("method", "path", "allowed"), WRONG_METHODS, ids=_IDS)
def test_wrong_method_is_405_envelope(
    gw: httpx.Client, user: User, method: str, path: str, allowed: set[str]
) -> None:
    response = gw.request(method, path, headers=user.headers)
    assert_error_envelope(response, 405, "method_not_allowed")
    assert response.headers.get("allow"), response.headers


@pytest.mark.parametrize(("method", "path", "allowed"), WRONG_METHODS, ids=_IDS)
def test_405_allow_header_lists_every_supported_method(
    gw: httpx.Client, user: User, method: str, path: str, allowed: set[str]
) -> None:
    """RFC 9110 §15.5.6: a 405 lists the methods the resource supports, all of them."""
    response = gw.request(method, path, headers=user.headers)
    assert response.status_code == 405, response.text
    allow = {m.strip() for m in response.headers.get("allow", "").split(",") if m.strip()}
    assert allowed <= allow, f"{method} {path}: Allow: {response.headers.get('allow')!r}"


@pytest.mark.parametrize(
    "path", ["/auth/register", "/auth/login", "/chat/conversations"], ids=lambda p: p
)
@pytest.mark.parametrize(
    "content",
    [b"{not json", b'{"title": "unterminated', b"", b"[1, 2", b"{'single': 'quotes'}"],
    ids=["broken", "unterminated", "empty", "truncated-array", "single-quotes"],
)
def test_invalid_json_body_is_422_envelope(
    gw: httpx.Client, user: User, path: str, content: bytes
) -> None:
    headers = {"Content-Type": "application/json", **user.headers}
    response = gw.post(path, content=content, headers=headers)
    assert_error_envelope(response, 422, "validation_error")


@pytest.mark.parametrize(
    "path", ["/auth/register", "/auth/login", "/chat/conversations"], ids=lambda p: p
)
def test_body_that_is_not_utf8_is_a_client_error_envelope(
    gw: httpx.Client, user: User, path: str
) -> None:
    """JSON must be UTF-8 (RFC 8259 §8.1); FastAPI reports undecodable bytes as 400, not 422."""
    headers = {"Content-Type": "application/json", **user.headers}
    response = gw.post(path, content=b'{"title": "\xff\xfe"}', headers=headers)
    assert response.status_code in (400, 422), response.text
    assert_error_envelope(response, response.status_code)


def test_json_body_of_the_wrong_type_is_422_envelope(gw: httpx.Client, user: User) -> None:
    for body in ([], "a string", 42, None):
        response = gw.post("/chat/conversations", json=body, headers=user.headers)
        assert_error_envelope(response, 422, "validation_error")


@pytest.mark.parametrize(
    "conversation_id",
    ["abc", "1.5", "-1", "0", "2147483648", "99999999999999999999999999", "1e3", "%20", "0x10"],
)
@pytest.mark.parametrize("suffix", ["", "/messages"])
def test_bad_conversation_id_is_422_envelope_never_500(
    gw: httpx.Client, user: User, conversation_id: str, suffix: str
) -> None:
    response = gw.get(f"/chat/conversations/{conversation_id}{suffix}", headers=user.headers)
    assert_error_envelope(response, 422, "validation_error")


@pytest.mark.parametrize("conversation_id", ["2147483647", "1000000"])
def test_well_formed_but_unknown_conversation_id_is_404_envelope(
    gw: httpx.Client, user: User, conversation_id: str
) -> None:
    response = gw.get(f"/chat/conversations/{conversation_id}", headers=user.headers)
    assert_error_envelope(response, 404, "not_found")


def test_bad_query_parameter_is_422_envelope(gw: httpx.Client, user: User) -> None:
    for params in ({"limit": "0"}, {"limit": "101"}, {"limit": "x"}, {"offset": "-1"}):
        response = gw.get("/chat/conversations", params=params, headers=user.headers)
        assert_error_envelope(response, 422, "validation_error")


def test_success_bodies_are_the_envelope(gw: httpx.Client, user: User) -> None:
    response = gw.get("/chat/conversations", headers=user.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True and isinstance(body["message"], str) and "data" in body


# --- an upstream that is down ----------------------------------------------------------------


@pytest.fixture(scope="module")
def orphan_gateway(stack: Stack) -> str:
    """A gateway whose chat service address has nothing listening."""
    return stack.start_gateway(GATEWAY_CHAT_URL=f"http://127.0.0.1:{free_port()}")


def test_chat_down_is_503_envelope_quickly(orphan_gateway: str, user: User) -> None:
    # The client's own deadline: a down service must be reported, not waited on.
    with httpx.Client(base_url=orphan_gateway, timeout=10.0, trust_env=False) as client:
        for method, path in (
            ("GET", "/chat/conversations"),
            ("POST", "/chat/conversations"),
            ("GET", "/chat/conversations/1/messages"),
        ):
            kwargs = {"json": {"title": "x"}} if method == "POST" else {}
            response = client.request(method, path, headers=user.headers, **kwargs)
            assert_error_envelope(response, 503, "service_unavailable")
            assert response.headers.get("retry-after", "").isdigit(), response.headers


def test_chat_down_still_checks_the_token_first(orphan_gateway: str) -> None:
    with httpx.Client(base_url=orphan_gateway, timeout=10.0, trust_env=False) as client:
        response = client.get("/chat/conversations")
        assert_error_envelope(response, 401, "unauthorized")


def test_chat_down_leaves_the_gateway_alive(orphan_gateway: str, user: User) -> None:
    with httpx.Client(base_url=orphan_gateway, timeout=10.0, trust_env=False) as client:
        health = client.get("/healthz")
        assert health.status_code == 200, health.text
        assert health.json()["success"] is True
        me = client.get("/auth/me", headers=user.headers)
        assert me.status_code == 200, me.text
        # Analytics is another upstream, and it is up: it still answers, from its own rollups.
        analytics = client.get("/chat/analytics/dashboard", headers=user.headers)
        assert analytics.status_code == 200, analytics.text


def test_chat_down_is_counted_in_upstream_metrics(orphan_gateway: str, user: User) -> None:
    with httpx.Client(base_url=orphan_gateway, timeout=10.0, trust_env=False) as client:
        client.get("/chat/conversations", headers=user.headers)
        metrics = client.get("/metrics").text
    lines = [
        line
        for line in metrics.splitlines()
        if line.startswith("gateway_upstream_requests_total{") and 'upstream="chat"' in line
    ]
    assert lines, metrics[-2000:]
    assert any('outcome="connect_error"' in line for line in lines), lines
