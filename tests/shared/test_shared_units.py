"""Pure functions: rate-limit headers, chat pagination cursors, envelope serialisation, request
ids, route templates and error codes."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from services.chat.pagination import (
    decode_conversation_cursor,
    decode_message_cursor,
    encode_conversation_cursor,
    encode_message_cursor,
)
from services.gateway.proxy import RouteTemplates
from services.gateway.ratelimit import Decision
from shared.envelope import dumps, error_body, fail, ok, success_body
from shared.errors import (
    NotFound,
    RateLimited,
    Unauthorized,
    ValidationFailed,
    code_for_status,
)
from shared.middleware import incoming_request_id

# --- rate-limit decision headers -------------------------------------------------------------


def test_allowed_decision_headers() -> None:
    headers = Decision(
        True, limit=60, remaining=59, retry_after_seconds=0, reset_seconds=1
    ).headers()
    assert headers == {
        "X-RateLimit-Limit": "60",
        "X-RateLimit-Remaining": "59",
        "X-RateLimit-Reset": "1",
    }
    assert "Retry-After" not in headers


def test_refused_decision_headers_add_retry_after() -> None:
    headers = Decision(
        False, limit=3, remaining=0, retry_after_seconds=2, reset_seconds=4
    ).headers()
    assert headers["Retry-After"] == "2"
    assert headers["X-RateLimit-Limit"] == "3"
    assert headers["X-RateLimit-Remaining"] == "0"
    assert headers["X-RateLimit-Reset"] == "4"
    assert all(isinstance(v, str) for v in headers.values())


# --- pagination cursors ----------------------------------------------------------------------


@pytest.mark.parametrize(("pinned", "ident"), [(True, 1), (False, 42), (True, 2**31 - 1)])
def test_conversation_cursor_round_trip(pinned: bool, ident: int) -> None:
    cursor = encode_conversation_cursor(pinned, ident)
    assert set(cursor) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    decoded = decode_conversation_cursor(cursor)
    assert (decoded.is_pinned, decoded.id) == (pinned, ident)


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_message_cursor_round_trip(order: str) -> None:
    cursor = encode_message_cursor(12345, order)
    decoded = decode_message_cursor(cursor, order)
    assert (decoded.id, decoded.order) == (12345, order)


def test_message_cursor_of_the_other_order_is_refused() -> None:
    with pytest.raises(ValidationFailed):
        decode_message_cursor(encode_message_cursor(5, "asc"), "desc")


def test_cursors_of_one_list_are_refused_by_the_other() -> None:
    with pytest.raises(ValidationFailed):
        decode_message_cursor(encode_conversation_cursor(True, 5), "desc")
    with pytest.raises(ValidationFailed):
        decode_conversation_cursor(encode_message_cursor(5, "desc"))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "!!!",
        "not a cursor",
        "%%%%",
        "é",
        "a",
        _b64(b"c:2:1"),
        _b64(b"c:1:0"),
        _b64(b"c:1:-1"),
        _b64(b"c:1:2147483648"),
        _b64(b"c:1:99999999999999999999"),
        _b64(b"c:1:1:1"),
        _b64(b"c:1"),
        _b64(b"c:1: 5"),
        _b64(b"c:1:\xff"),
        _b64("c:1:١٢".encode()),  # Arabic-Indic digits: str.isdigit() is true for them
    ],
)
def test_garbage_conversation_cursor_is_validation_failed(cursor: str) -> None:
    with pytest.raises(ValidationFailed) as raised:
        decode_conversation_cursor(cursor)
    assert raised.value.status_code == 422


@pytest.mark.parametrize(
    "cursor", ["", "???", _b64(b"m:desc:0"), _b64(b"m:desc:x"), _b64(b"m:sideways:1")]
)
def test_garbage_message_cursor_is_validation_failed(cursor: str) -> None:
    with pytest.raises(ValidationFailed):
        decode_message_cursor(cursor, "desc")


# --- envelope --------------------------------------------------------------------------------


def test_dumps_renders_utc_datetimes_with_z() -> None:
    aware = datetime(2024, 6, 29, 10, 0, 0, tzinfo=UTC)
    assert dumps({"at": aware}) == b'{"at":"2024-06-29T10:00:00Z"}'


def test_dumps_treats_naive_datetimes_as_utc() -> None:
    assert dumps(datetime(2024, 6, 29, 10, 0, 0, 123000)) == b'"2024-06-29T10:00:00.123000Z"'


def test_dumps_keeps_other_offsets_explicit() -> None:
    paris = datetime(2024, 6, 29, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    assert dumps(paris) == b'"2024-06-29T12:00:00+02:00"'


def test_dumps_accepts_non_string_keys() -> None:
    assert orjson.loads(dumps({1: "a"})) == {"1": "a"}


def test_success_and_error_bodies() -> None:
    assert success_body({"x": 1}, "done") == {"success": True, "message": "done", "data": {"x": 1}}
    assert error_body("not_found", "nope") == {
        "success": False,
        "message": "nope",
        "data": None,
        "error": {"code": "not_found", "details": None},
    }


def test_ok_and_fail_responses() -> None:
    response = ok({"n": 1}, "fine", status_code=201, headers={"X-A": "b"})
    assert response.status_code == 201
    assert response.headers["x-a"] == "b"
    assert response.media_type == "application/json"
    assert orjson.loads(response.body) == {"success": True, "message": "fine", "data": {"n": 1}}
    failed = fail(429, "rate_limited", "slow down", headers={"Retry-After": "3"})
    assert failed.status_code == 429 and failed.headers["retry-after"] == "3"
    assert orjson.loads(failed.body)["error"] == {"code": "rate_limited", "details": None}


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (401, "unauthorized"),
        (404, "not_found"),
        (405, "method_not_allowed"),
        (413, "payload_too_large"),
        (422, "validation_error"),
        (429, "rate_limited"),
        (503, "service_unavailable"),
        (418, "error"),
        (502, "internal_error"),
    ],
)
def test_code_for_status(status: int, code: str) -> None:
    assert code_for_status(status) == code


def test_error_classes_carry_status_code_and_headers() -> None:
    assert (Unauthorized().status_code, Unauthorized().code) == (401, "unauthorized")
    assert Unauthorized().headers == {"WWW-Authenticate": "Bearer"}
    assert NotFound("gone").message == "gone"
    limited = RateLimited(headers={"Retry-After": "1"})
    assert limited.status_code == 429 and limited.headers == {"Retry-After": "1"}


# --- request ids -----------------------------------------------------------------------------


def _scope(*values: bytes) -> dict:
    return {"headers": [(b"x-request-id", v) for v in values]}


@pytest.mark.parametrize("value", [b"abc", b"a.b_c:d-e", b"x" * 128])
def test_a_well_formed_request_id_is_kept(value: bytes) -> None:
    assert incoming_request_id(_scope(value)) == value.decode()


@pytest.mark.parametrize(
    "value", [b"", b"x" * 129, b"has space", b"a/b", b"caf\xc3\xa9", b"new\nline", b"a\x00"]
)
def test_a_malformed_request_id_is_replaced(value: bytes) -> None:
    replaced = incoming_request_id(_scope(value))
    assert replaced != value.decode("latin-1")
    assert len(replaced) == 32 and int(replaced, 16) >= 0


def test_a_missing_request_id_is_generated_fresh() -> None:
    first, second = incoming_request_id({"headers": []}), incoming_request_id({"headers": []})
    assert first != second


# --- route templates (the gateway's metric labels) -------------------------------------------


@pytest.fixture
def templates() -> RouteTemplates:
    routes = RouteTemplates()
    routes.load(
        [
            "/chat/conversations",
            "/chat/conversations/{conversation_id}",
            "/chat/conversations/{conversation_id}/messages",
            "/chat/agents/{agent_id}",
            "/chat/search",
        ]
    )
    return routes


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/chat/conversations", "/chat/conversations"),
        ("/chat/conversations/12", "/chat/conversations/{conversation_id}"),
        ("/chat/conversations/abc", "/chat/conversations/{conversation_id}"),
        ("/chat/conversations/12/messages", "/chat/conversations/{conversation_id}/messages"),
        ("/chat/agents/3", "/chat/agents/{agent_id}"),
    ],
)
def test_route_templates_match_concrete_paths(
    templates: RouteTemplates, path: str, template: str
) -> None:
    match = templates.match(path)
    assert match is not None and match.path == template


@pytest.mark.parametrize(
    "path", ["/chat/conversations/12/other", "/chat/conversations/", "/chat/x", "/chat/search/1"]
)
def test_route_templates_do_not_match_other_paths(templates: RouteTemplates, path: str) -> None:
    assert templates.match(path) is None
