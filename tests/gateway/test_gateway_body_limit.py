"""Request bodies over GATEWAY_MAX_BODY_BYTES are refused with a 413 envelope, whether the size
is declared (Content-Length) or only discovered while reading (chunked), on proxied routes and on
the gateway's own."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.gateway.support import assert_error_envelope, client_from_new_address
from tests.harness import HTTP_TIMEOUT, Stack, User

LIMIT = 2048
DEFAULT_LIMIT = 1024 * 1024


@pytest.fixture(scope="module")
def small_body_gateway(stack: Stack) -> str:
    return stack.start_gateway(GATEWAY_MAX_BODY_BYTES=str(LIMIT))


@pytest.fixture
def gw(small_body_gateway: str) -> Iterator[httpx.Client]:
    with client_from_new_address(small_body_gateway) as client:
        yield client


def _conversation_body(size: int) -> bytes:
    """A valid conversation JSON body of exactly `size` bytes."""
    empty = json.dumps({"title": ""}).encode()
    body = json.dumps({"title": "t" * (size - len(empty))}).encode()
    assert len(body) == size
    return body


def _chunks(body: bytes, chunk: int = 512) -> Iterator[bytes]:
    for start in range(0, len(body), chunk):
        yield body[start : start + chunk]


JSON = {"Content-Type": "application/json"}


def test_conversation_body_at_the_limit_is_accepted(
    gw: httpx.Client, new_user: Callable[..., User]
) -> None:
    """The control: the same request, within the limit (and valid for chat), goes through."""
    user = new_user()
    body = json.dumps({"title": "within the limit " + "x" * 200}).encode()
    response = gw.post("/chat/conversations", content=body, headers={**JSON, **user.headers})
    assert response.status_code == 201, response.text


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_of_exactly_the_limit_is_not_413(
    gw: httpx.Client, new_user: Callable[..., User], chunked: bool
) -> None:
    """The boundary: LIMIT bytes pass the gateway (chat then refuses the over-long title)."""
    user = new_user()
    body = _conversation_body(LIMIT)
    content = _chunks(body) if chunked else body
    response = gw.post("/chat/conversations", content=content, headers={**JSON, **user.headers})
    assert_error_envelope(response, 422, "validation_error")


def test_conversation_body_over_the_limit_with_content_length_is_413(
    gw: httpx.Client, new_user: Callable[..., User]
) -> None:
    user = new_user()
    body = _conversation_body(LIMIT + 1)
    response = gw.post("/chat/conversations", content=body, headers={**JSON, **user.headers})
    assert response.request.headers.get("content-length") == str(LIMIT + 1)
    assert_error_envelope(response, 413, "payload_too_large")


def test_conversation_body_over_the_limit_chunked_is_413(
    gw: httpx.Client, new_user: Callable[..., User]
) -> None:
    user = new_user()
    body = _conversation_body(LIMIT * 4)
    response = gw.post(
        "/chat/conversations", content=_chunks(body), headers={**JSON, **user.headers}
    )
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in response.request.headers
    assert_error_envelope(response, 413, "payload_too_large")
    # The refused, half-read request leaves the connection usable (or closed), never confused.
    after = gw.get("/chat/conversations", headers=user.headers)
    assert after.status_code == 200, after.text


def test_chunked_body_within_the_limit_is_forwarded_whole(
    gw: httpx.Client, new_user: Callable[..., User]
) -> None:
    user = new_user()
    title = "chunked " + secrets.token_hex(120)  # 248 characters, in several chunks
    body = json.dumps({"title": title}).encode()
    response = gw.post(
        "/chat/conversations", content=_chunks(body, 40), headers={**JSON, **user.headers}
    )
    assert response.status_code == 201, response.text
    conversation_id = response.json()["data"]["conversation_id"]
    stored = gw.get(f"/chat/conversations/{conversation_id}", headers=user.headers)
    assert stored.status_code == 200, stored.text
    assert stored.json()["data"]["title"] == title


def _register_body(size: int) -> bytes:
    suffix = secrets.token_hex(6)
    base = {"email": f"big-{suffix}@example.com", "password": "long-enough-1", "name": ""}
    empty = json.dumps(base).encode()
    body = json.dumps({**base, "name": "n" * (size - len(empty))}).encode()
    assert len(body) == size
    return body


def test_register_body_over_the_limit_with_content_length_is_413(gw: httpx.Client) -> None:
    response = gw.post("/auth/register", content=_register_body(LIMIT + 1), headers=JSON)
    assert_error_envelope(response, 413, "payload_too_large")


def test_register_body_over_the_limit_chunked_is_413(gw: httpx.Client) -> None:
    response = gw.post("/auth/register", content=_chunks(_register_body(LIMIT * 4)), headers=JSON)
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert_error_envelope(response, 413, "payload_too_large")


def test_register_chunked_body_within_the_limit_works(gw: httpx.Client) -> None:
    suffix = secrets.token_hex(6)
    body = json.dumps(
        {"email": f"chunk-{suffix}@example.com", "password": "long-enough-1", "name": "Chunky"}
    ).encode()
    response = gw.post("/auth/register", content=_chunks(body, 16), headers=JSON)
    assert response.status_code == 201, response.text
    assert response.json()["data"]["email"] == f"chunk-{suffix}@example.com"


def test_default_limit_is_one_mebibyte(stack: Stack, new_user: Callable[..., User]) -> None:
    user = new_user()
    with httpx.Client(base_url=stack.gateway_url, timeout=HTTP_TIMEOUT, trust_env=False) as gw:
        response = gw.post(
            "/chat/conversations",
            content=_conversation_body(DEFAULT_LIMIT + 1),
            headers={**JSON, **user.headers},
        )
    assert_error_envelope(response, 413, "payload_too_large")
