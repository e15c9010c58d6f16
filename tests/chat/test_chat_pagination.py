"""Offset and keyset pagination of conversations and messages, query validation, and keyset
walks that stay exact while rows are being inserted."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import httpx
import pytest

from tests.chat.factories import add_message, create_conversation, list_messages
from tests.chat.helpers import (
    assert_error,
    ok_data,
    walk_conversation_pages,
    walk_message_pages,
)
from tests.harness import User

DEADLINE_SECONDS = 30.0


def _expected_conversation_order(conversations: list[dict[str, Any]]) -> list[int]:
    """The documented order: pinned first, then newest (highest id) first."""
    ordered = sorted(conversations, key=lambda c: (c["is_pinned"], c["id"]), reverse=True)
    return [c["id"] for c in ordered]


def _flatten(pages: list[list[int]]) -> list[int]:
    return [item for page in pages for item in page]


def _b64(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.fixture
def fifty_five(http: httpx.Client, alice: User) -> list[dict[str, Any]]:
    """55 conversations of alice; every 8th one pinned."""
    return [create_conversation(http, alice, pinned=i % 8 == 3) for i in range(55)]


# --- conversations -------------------------------------------------------------------------------


def test_cursor_walk_yields_every_conversation_once_in_order(
    http: httpx.Client, alice: User, fifty_five: list[dict[str, Any]]
) -> None:
    expected = _expected_conversation_order(fifty_five)
    pages = walk_conversation_pages(http, alice, limit=10)
    assert [len(p) for p in pages] == [10, 10, 10, 10, 10, 5]
    assert _flatten(pages) == expected
    # The pinned ones (7 of them) come first and the cursor crosses from pinned to unpinned.
    pinned = [c["id"] for c in fifty_five if c["is_pinned"]]
    assert len(pinned) == 7
    assert set(_flatten(pages)[:7]) == set(pinned)


def test_last_page_has_no_cursor(http: httpx.Client, alice: User) -> None:
    for _ in range(20):
        create_conversation(http, alice)
    first = ok_data(http.get("/chat/conversations", params={"limit": 10}, headers=alice.headers))
    assert (len(first["conversations"]), first["has_more"]) == (10, True)
    assert isinstance(first["next_cursor"], str) and first["next_cursor"]
    second = ok_data(
        http.get(
            "/chat/conversations",
            params={"limit": 10, "cursor": first["next_cursor"]},
            headers=alice.headers,
        )
    )
    # Exactly 20: the second page is full but nothing follows it.
    assert len(second["conversations"]) == 10
    assert second["has_more"] is False
    assert second["next_cursor"] is None
    assert second["total"] == 20


def test_offset_pagination_returns_total_limit_offset(
    http: httpx.Client, alice: User, fifty_five: list[dict[str, Any]]
) -> None:
    expected = _expected_conversation_order(fifty_five)
    data = ok_data(
        http.get("/chat/conversations", params={"limit": 5, "offset": 10}, headers=alice.headers)
    )
    assert (data["total"], data["limit"], data["offset"]) == (55, 5, 10)
    assert [c["id"] for c in data["conversations"]] == expected[10:15]
    assert data["has_more"] is True
    tail = ok_data(
        http.get("/chat/conversations", params={"limit": 10, "offset": 50}, headers=alice.headers)
    )
    assert [c["id"] for c in tail["conversations"]] == expected[50:]
    assert (tail["total"], tail["has_more"]) == (55, False)
    beyond = ok_data(
        http.get("/chat/conversations", params={"limit": 10, "offset": 500}, headers=alice.headers)
    )
    assert (beyond["conversations"], beyond["total"], beyond["has_more"]) == ([], 55, False)


async def test_cursor_walk_has_no_gaps_or_duplicates_under_concurrent_inserts(
    ahttp: httpx.AsyncClient, http: httpx.Client, alice: User, fifty_five: list[dict[str, Any]]
) -> None:
    existing = _expected_conversation_order(fifty_five)
    inserted: list[int] = []
    progress = asyncio.Condition()
    stop = asyncio.Event()

    async def inserter() -> None:
        n = 0
        while not stop.is_set() and n < 200:
            response = await ahttp.post(
                "/chat/conversations", json={"title": f"during {n}"}, headers=alice.headers
            )
            conversation_id = ok_data(response, 201)["conversation_id"]
            n += 1
            async with progress:
                inserted.append(conversation_id)
                progress.notify_all()

    async def wait_for_inserts(count: int) -> None:
        async with progress:
            await asyncio.wait_for(
                progress.wait_for(lambda: len(inserted) >= count), DEADLINE_SECONDS
            )

    task = asyncio.create_task(inserter())
    try:
        seen: list[int] = []
        cursor: str | None = None
        pages = 0
        while True:
            # Each page is fetched after at least one more conversation was created.
            await wait_for_inserts(pages + 1)
            params: dict[str, Any] = {"limit": 10}
            if cursor:
                params["cursor"] = cursor
            response = await ahttp.get("/chat/conversations", params=params, headers=alice.headers)
            data = ok_data(response)
            seen.extend(c["id"] for c in data["conversations"])
            pages += 1
            assert pages < 100
            if not data["has_more"]:
                assert data["next_cursor"] is None
                break
            cursor = data["next_cursor"]
    finally:
        stop.set()
        await asyncio.wait_for(task, DEADLINE_SECONDS)

    assert len(inserted) >= pages
    assert len(seen) == len(set(seen)), "a conversation appeared twice"
    assert [i for i in seen if i in set(existing)] == existing, "gap or disorder"
    assert set(seen) <= set(existing) | set(inserted)


# --- messages ------------------------------------------------------------------------------------


@pytest.fixture
def conversation_with_55(http: httpx.Client, alice: User) -> tuple[int, list[int]]:
    conversation = create_conversation(http, alice)
    ids = [
        add_message(http, alice, conversation["id"], content=f"m{i}")["message_id"]
        for i in range(55)
    ]
    return conversation["id"], ids


@pytest.mark.parametrize("order", ["desc", "asc"])
def test_message_cursor_walk_yields_every_message_once_in_order(
    http: httpx.Client, alice: User, conversation_with_55: tuple[int, list[int]], order: str
) -> None:
    conversation_id, ids = conversation_with_55
    pages = walk_message_pages(http, alice, conversation_id, limit=10, order=order)
    assert [len(p) for p in pages] == [10, 10, 10, 10, 10, 5]
    assert _flatten(pages) == (ids[::-1] if order == "desc" else ids)


def test_message_offset_pagination(
    http: httpx.Client, alice: User, conversation_with_55: tuple[int, list[int]]
) -> None:
    conversation_id, ids = conversation_with_55
    data = list_messages(http, alice, conversation_id, limit=7, offset=20)
    assert (data["total"], data["limit"], data["offset"]) == (55, 7, 20)
    assert [m["id"] for m in data["messages"]] == ids[::-1][20:27]
    asc = list_messages(http, alice, conversation_id, limit=7, offset=20, order="asc")
    assert [m["id"] for m in asc["messages"]] == ids[20:27]


@pytest.mark.parametrize("order", ["desc", "asc"])
async def test_message_cursor_walk_under_concurrent_inserts(
    ahttp: httpx.AsyncClient,
    http: httpx.Client,
    alice: User,
    conversation_with_55: tuple[int, list[int]],
    order: str,
) -> None:
    conversation_id, existing = conversation_with_55
    url = f"/chat/conversations/{conversation_id}/messages"
    inserted: list[int] = []
    progress = asyncio.Condition()
    stop = asyncio.Event()

    async def inserter() -> None:
        # Bounded, so an ascending walk (which also meets the new rows) reaches the end.
        for n in range(20):
            if stop.is_set():
                return
            response = await ahttp.post(url, json={"content": f"during {n}"}, headers=alice.headers)
            message_id = ok_data(response, 201)["message_id"]
            async with progress:
                inserted.append(message_id)
                progress.notify_all()

    async def wait_for_inserts(count: int) -> None:
        async with progress:
            await asyncio.wait_for(
                progress.wait_for(lambda: len(inserted) >= count), DEADLINE_SECONDS
            )

    task = asyncio.create_task(inserter())
    try:
        seen: list[int] = []
        cursor: str | None = None
        pages = 0
        while True:
            await wait_for_inserts(min(pages + 1, 20))
            params: dict[str, Any] = {"limit": 10, "order": order}
            if cursor:
                params["cursor"] = cursor
            data = ok_data(await ahttp.get(url, params=params, headers=alice.headers))
            seen.extend(m["id"] for m in data["messages"])
            pages += 1
            assert pages < 100
            if not data["has_more"]:
                break
            cursor = data["next_cursor"]
    finally:
        stop.set()
        await asyncio.wait_for(task, DEADLINE_SECONDS)

    expected = existing[::-1] if order == "desc" else existing
    assert len(seen) == len(set(seen)), "a message appeared twice"
    assert [i for i in seen if i in set(existing)] == expected, "gap or disorder"
    assert set(seen) <= set(existing) | set(inserted)
    # Whatever was seen is in the walk's order.
    assert seen == sorted(seen, reverse=order == "desc")
    total = list_messages(http, alice, conversation_id, limit=1)["total"]
    assert total == 55 + len(inserted)


# --- validation ----------------------------------------------------------------------------------


BAD_PAGING = [
    pytest.param({"limit": 0}, id="limit-0"),
    pytest.param({"limit": 101}, id="limit-101"),
    pytest.param({"limit": -1}, id="limit-negative"),
    pytest.param({"limit": "abc"}, id="limit-abc"),
    pytest.param({"limit": "1.5"}, id="limit-float"),
    pytest.param({"offset": -1}, id="offset-negative"),
    pytest.param({"offset": "x"}, id="offset-abc"),
]

BAD_CURSORS = [
    pytest.param("garbage!!", id="not-base64"),
    pytest.param("", id="empty"),
    pytest.param(_b64("c:1"), id="too-few-parts"),
    pytest.param(_b64("c:2:5"), id="bad-pinned"),
    pytest.param(_b64("c:1:-5"), id="negative-id"),
    pytest.param(_b64("c:0:0"), id="zero-id"),
    pytest.param(_b64("c:0:99999999999"), id="huge-id"),
    pytest.param(_b64("c:0:abc"), id="non-numeric-id"),
    pytest.param(_b64("m:desc:5"), id="message-cursor"),
    pytest.param(_b64("é:0:5"), id="non-ascii"),
    pytest.param("x" * 201, id="too-long"),
]


@pytest.mark.parametrize("params", BAD_PAGING)
def test_conversation_list_rejects_bad_paging(
    http: httpx.Client, alice: User, params: dict[str, Any]
) -> None:
    assert_error(
        http.get("/chat/conversations", params=params, headers=alice.headers),
        422,
        "validation_error",
    )


@pytest.mark.parametrize("params", BAD_PAGING)
def test_message_list_rejects_bad_paging(
    http: httpx.Client, alice: User, params: dict[str, Any]
) -> None:
    conversation = create_conversation(http, alice)
    response = http.get(
        f"/chat/conversations/{conversation['id']}/messages", params=params, headers=alice.headers
    )
    assert_error(response, 422, "validation_error")


@pytest.mark.parametrize("cursor", BAD_CURSORS)
def test_conversation_list_rejects_bad_cursors(
    http: httpx.Client, alice: User, cursor: str
) -> None:
    create_conversation(http, alice)
    response = http.get("/chat/conversations", params={"cursor": cursor}, headers=alice.headers)
    if cursor == "":
        # An empty cursor is the same as none: the first page.
        assert ok_data(response)["total"] == 1
    else:
        assert_error(response, 422, "validation_error")


@pytest.mark.parametrize(
    "cursor",
    [
        pytest.param("garbage!!", id="not-base64"),
        pytest.param(_b64("c:0:5"), id="conversation-cursor"),
        pytest.param(_b64("m:asc:5"), id="other-order"),
        pytest.param(_b64("m:desc:0"), id="zero-id"),
        pytest.param(_b64("m:desc"), id="too-few-parts"),
        pytest.param("x" * 201, id="too-long"),
    ],
)
def test_message_list_rejects_bad_cursors(http: httpx.Client, alice: User, cursor: str) -> None:
    conversation = create_conversation(http, alice)
    response = http.get(
        f"/chat/conversations/{conversation['id']}/messages",
        params={"cursor": cursor},
        headers=alice.headers,
    )
    assert_error(response, 422, "validation_error")


def test_cursor_together_with_offset_is_422(http: httpx.Client, alice: User) -> None:
    conversation = create_conversation(http, alice)
    for i in range(3):
        create_conversation(http, alice)
        add_message(http, alice, conversation["id"], content=f"m{i}")
    page = ok_data(http.get("/chat/conversations", params={"limit": 1}, headers=alice.headers))
    response = http.get(
        "/chat/conversations",
        params={"limit": 1, "cursor": page["next_cursor"], "offset": 1},
        headers=alice.headers,
    )
    body = assert_error(response, 422, "validation_error")
    assert "offset" in body["message"]
    messages = list_messages(http, alice, conversation["id"], limit=1)
    response = http.get(
        f"/chat/conversations/{conversation['id']}/messages",
        params={"limit": 1, "cursor": messages["next_cursor"], "offset": 2},
        headers=alice.headers,
    )
    assert_error(response, 422, "validation_error")
    # offset=0 with a cursor is fine: it is the default.
    ok_data(
        http.get(
            "/chat/conversations",
            params={"limit": 1, "cursor": page["next_cursor"], "offset": 0},
            headers=alice.headers,
        )
    )


def test_limit_bounds_are_inclusive(http: httpx.Client, alice: User) -> None:
    for limit in (1, 100):
        data = ok_data(
            http.get("/chat/conversations", params={"limit": limit}, headers=alice.headers)
        )
        assert data["limit"] == limit
