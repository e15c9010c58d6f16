"""Full-text search over the caller's messages: syntax, ranking, filters, snippets, and
malformed queries that must never be a 500."""

from __future__ import annotations

import re
from datetime import timedelta, timezone
from typing import Any

import httpx
import pytest

from tests.chat.factories import add_message, create_conversation, search, unique_word
from tests.chat.helpers import assert_error, ok_data, ts
from tests.harness import User

RESULT_FIELDS = {
    "message_id",
    "conversation_id",
    "content",
    "sender",
    "created_at",
    "snippet",
    "rank",
}


def test_search_finds_own_messages_with_seed_fields(http: httpx.Client, alice: User) -> None:
    word = unique_word()
    conversation = create_conversation(http, alice)
    hit = add_message(http, alice, conversation["id"], content=f"I need help with my {word}")
    add_message(http, alice, conversation["id"], content="something unrelated")
    response = http.get("/chat/search", params={"query": word, "limit": 20}, headers=alice.headers)
    data = ok_data(response)
    assert response.json()["message"] == "Found 1 results"
    assert (data["query"], data["total"], data["limit"], data["offset"]) == (word, 1, 20, 0)
    [result] = data["results"]
    assert set(result) >= RESULT_FIELDS
    assert result["message_id"] == hit["message_id"]
    assert result["conversation_id"] == conversation["id"]
    assert result["content"] == f"I need help with my {word}"
    assert result["sender"] == "user"
    assert ts(result["created_at"]) == ts(hit["created_at"])
    assert f"<mark>{word}</mark>" in result["snippet"]
    assert result["rank"] > 0


def test_search_matches_word_forms(http: httpx.Client, alice: User) -> None:
    conversation = create_conversation(http, alice)
    hit = add_message(http, alice, conversation["id"], content="The orders were shipped")
    found = search(http, alice, "order ship")
    assert [r["message_id"] for r in found["results"]] == [hit["message_id"]]


def test_message_matching_more_terms_ranks_first(http: httpx.Client, alice: User) -> None:
    a, b, c = unique_word("ra"), unique_word("rb"), unique_word("rc")
    conversation = create_conversation(http, alice)
    one = add_message(http, alice, conversation["id"], content=f"only {a} here")
    three = add_message(http, alice, conversation["id"], content=f"{a} with {b} and {c}")
    two = add_message(http, alice, conversation["id"], content=f"{a} and {b}")
    found = search(http, alice, f"{a} or {b} or {c}")
    assert [r["message_id"] for r in found["results"]] == [
        three["message_id"],
        two["message_id"],
        one["message_id"],
    ]
    ranks = [r["rank"] for r in found["results"]]
    assert ranks == sorted(ranks, reverse=True) and ranks[0] > ranks[-1]


def test_all_words_must_match_by_default(http: httpx.Client, alice: User) -> None:
    a, b = unique_word(), unique_word()
    conversation = create_conversation(http, alice)
    both = add_message(http, alice, conversation["id"], content=f"{a} {b}")
    add_message(http, alice, conversation["id"], content=f"{a} alone")
    assert [r["message_id"] for r in search(http, alice, f"{a} {b}")["results"]] == [
        both["message_id"]
    ]


def test_quoted_phrase_matches_only_the_exact_phrase(http: httpx.Client, alice: User) -> None:
    a, b = unique_word(), unique_word()
    conversation = create_conversation(http, alice)
    exact = add_message(http, alice, conversation["id"], content=f"the {a} {b} arrived")
    add_message(http, alice, conversation["id"], content=f"the {b} {a} arrived")
    add_message(http, alice, conversation["id"], content=f"the {a} big {b} arrived")
    found = search(http, alice, f'"{a} {b}"')
    assert [r["message_id"] for r in found["results"]] == [exact["message_id"]]
    assert found["total"] == 1
    # Unquoted, all three match.
    assert search(http, alice, f"{a} {b}")["total"] == 3


def test_or_matches_either(http: httpx.Client, alice: User) -> None:
    a, b = unique_word(), unique_word()
    conversation = create_conversation(http, alice)
    first = add_message(http, alice, conversation["id"], content=f"{a} here")
    second = add_message(http, alice, conversation["id"], content=f"{b} there")
    add_message(http, alice, conversation["id"], content="neither")
    found = search(http, alice, f"{a} or {b}")
    assert {r["message_id"] for r in found["results"]} == {
        first["message_id"],
        second["message_id"],
    }
    assert found["total"] == 2


def test_minus_excludes_a_word(http: httpx.Client, alice: User) -> None:
    a, b = unique_word(), unique_word()
    conversation = create_conversation(http, alice)
    kept = add_message(http, alice, conversation["id"], content=f"{a} only")
    add_message(http, alice, conversation["id"], content=f"{a} with {b}")
    found = search(http, alice, f"{a} -{b}")
    assert [r["message_id"] for r in found["results"]] == [kept["message_id"]]


def test_filter_by_conversation(http: httpx.Client, alice: User) -> None:
    word = unique_word()
    first, second = create_conversation(http, alice), create_conversation(http, alice)
    in_first = add_message(http, alice, first["id"], content=f"{word} one")
    add_message(http, alice, second["id"], content=f"{word} two")
    found = search(http, alice, word, conversation_id=first["id"])
    assert [r["message_id"] for r in found["results"]] == [in_first["message_id"]]
    assert found["total"] == 1
    assert search(http, alice, word)["total"] == 2


def test_filter_by_sender(http: httpx.Client, admin: User) -> None:
    word = unique_word()
    conversation = create_conversation(http, admin)
    from_user = add_message(http, admin, conversation["id"], content=f"{word} question")
    from_agent = add_message(
        http, admin, conversation["id"], content=f"{word} answer", sender_type="agent"
    )
    agent_only = search(http, admin, word, sender="agent")
    assert [r["message_id"] for r in agent_only["results"]] == [from_agent["message_id"]]
    assert agent_only["results"][0]["sender"] == "agent"
    user_only = search(http, admin, word, sender="user")
    assert [r["message_id"] for r in user_only["results"]] == [from_user["message_id"]]
    assert search(http, admin, word)["total"] == 2
    assert_error(
        http.get("/chat/search", params={"query": word, "sender": "robot"}, headers=admin.headers),
        422,
    )


def test_filter_by_date_range(http: httpx.Client, alice: User) -> None:
    word = unique_word()
    conversation = create_conversation(http, alice)
    messages = [
        add_message(http, alice, conversation["id"], content=f"{word} {i}") for i in range(3)
    ]
    stamps = [ts(m["created_at"]) for m in messages]
    assert stamps[0] < stamps[1] < stamps[2]
    ids = [m["message_id"] for m in messages]

    def found(**params: str) -> set[int]:
        return {r["message_id"] for r in search(http, alice, word, **params)["results"]}

    # date_from is inclusive, date_to exclusive.
    assert found(date_from=stamps[1].isoformat()) == {ids[1], ids[2]}
    assert found(date_to=stamps[1].isoformat()) == {ids[0]}
    assert found(date_from=stamps[1].isoformat(), date_to=stamps[2].isoformat()) == {ids[1]}
    later = (stamps[2] + timedelta(seconds=1)).isoformat()
    assert found(date_from=later) == set()
    # A naive timestamp is UTC.
    naive = stamps[1].replace(tzinfo=None).isoformat()
    assert found(date_from=naive) == {ids[1], ids[2]}
    # An offset is honoured: the same instant written in +02:00.
    shifted = stamps[1].astimezone(timezone(timedelta(hours=2))).isoformat()
    assert found(date_from=shifted) == {ids[1], ids[2]}
    assert_error(
        http.get(
            "/chat/search", params={"query": word, "date_from": "yesterday"}, headers=alice.headers
        ),
        422,
    )


def test_snippet_escapes_html_and_marks_matches(http: httpx.Client, alice: User) -> None:
    conversation = create_conversation(http, alice)
    content = "<script>alert(1)</script> order"
    hit = add_message(http, alice, conversation["id"], content=content)
    [result] = search(http, alice, "order")["results"]
    assert result["message_id"] == hit["message_id"]
    assert result["content"] == content  # the raw content is data, returned as written
    snippet = result["snippet"]
    assert "<mark>order</mark>" in snippet
    assert "&lt;script&gt;" in snippet, snippet
    assert "<script" not in snippet
    assert "</script" not in snippet
    without_marks = snippet.replace("<mark>", "").replace("</mark>", "")
    assert "<" not in without_marks and ">" not in without_marks


def test_snippet_escapes_markup_around_matches(http: httpx.Client, alice: User) -> None:
    word = unique_word()
    conversation = create_conversation(http, alice)
    add_message(
        http,
        alice,
        conversation["id"],
        content=f'<img src=x onerror="alert(1)"> Jerry\'s "{word}" & <b>{word}</b>',
    )
    [result] = search(http, alice, word)["results"]
    snippet = result["snippet"]
    assert f"<mark>{word}</mark>" in snippet
    # Quotes and apostrophes of the text are escaped, not dropped.
    assert "&quot;" in snippet, snippet
    assert "&#x27;" in snippet or "&#39;" in snippet, snippet
    without_marks = snippet.replace("<mark>", "").replace("</mark>", "")
    assert "<" not in without_marks and ">" not in without_marks, snippet
    assert '"' not in without_marks and "'" not in without_marks, snippet


def test_search_pagination(http: httpx.Client, alice: User) -> None:
    word = unique_word()
    conversation = create_conversation(http, alice)
    for i in range(5):
        add_message(http, alice, conversation["id"], content=f"{word} number {i}")
    everything = search(http, alice, word, limit=100)
    assert everything["total"] == 5
    ids = [r["message_id"] for r in everything["results"]]
    page = search(http, alice, word, limit=2, offset=2)
    assert (page["total"], page["limit"], page["offset"]) == (5, 2, 2)
    assert [r["message_id"] for r in page["results"]] == ids[2:4]


# --- malformed queries ---------------------------------------------------------------------------

MALFORMED = [
    '"unbalanced',
    'unbalanced"',
    '"""',
    '""',
    '"',
    "-",
    "--",
    "- -",
    "or",
    "OR",
    "or or or",
    "-or",
    "a or",
    "or a",
    "!!!",
    "!",
    ":*",
    "a:*",
    "&|",
    "&",
    "|",
    "a & b | !c",
    "(",
    ")",
    "((a)",
    "a <-> b",
    "<->",
    "<2>",
    "\\",
    "\\\\",
    "a\\b",
    "\\'",
    "'",
    "'''",
    "'; drop table chat.messages; --",
    "1' OR '1'='1",
    "%",
    "%%",
    "_",
    "*",
    "?",
    "$1",
    "%00",
    "\x00",
    "a\x00b",
    "\x01\x02\x03",
    "日本語のテキスト",
    "Ünïcödé ßtraße",
    "مرحبا",
    "🎉🔥",
    "👨‍👩‍👧‍👦",
    "\u200b",
    "\ufeff",
    "\U0010ffff",
    "   ",
    "\t\n",
    "the",
    "the and of",
    "a" * 500,
    "ab " * 166,
    "-" * 32,
    "-" * 33,
    "- " * 33,
    "-" * 500,
    '"' * 500,
    "(" * 500,
    "\\" * 500,
    "'" * 500,
    "or " * 166,
    "-x " * 166,
    "🎉" * 500,
    "é" * 500,
    ("x" * 499) + "\x00",
]


def _query_id(index: int, query: str) -> str:
    shown = ascii(query)[1:-1]
    if len(shown) > 16:
        shown = f"{shown[:12]}..x{len(query)}"
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", shown)
    return f"q{index}[{safe}]"


@pytest.mark.parametrize("query", MALFORMED, ids=[_query_id(i, q) for i, q in enumerate(MALFORMED)])
def test_malformed_queries_never_fail_the_server(
    http: httpx.Client, alice: User, query: str
) -> None:
    conversation = create_conversation(http, alice)
    add_message(http, alice, conversation["id"], content="some ordinary text about an order")
    response = http.get("/chat/search", params={"query": query}, headers=alice.headers)
    assert response.status_code in (200, 422), (repr(query), response.status_code, response.text)
    body = response.json()
    if response.status_code == 200:
        assert body["success"] is True
        assert isinstance(body["data"]["results"], list)
        assert body["data"]["total"] == len(body["data"]["results"]) or body["data"]["total"] > 20
    else:
        assert body["success"] is False and body["error"]["code"] == "validation_error"


def test_literal_percent_00_in_the_url_is_handled(http: httpx.Client, alice: User) -> None:
    """A raw `%00` in the query string (a NUL once decoded)."""
    create_conversation(http, alice)
    response = http.get("/chat/search?query=order%00x", headers=alice.headers)
    assert response.status_code in (200, 422), response.text
    response = http.get("/chat/search?query=%00", headers=alice.headers)
    assert response.status_code in (200, 422), response.text


def test_empty_or_missing_query_is_422(http: httpx.Client, alice: User) -> None:
    assert_error(http.get("/chat/search", params={"query": ""}, headers=alice.headers), 422)
    assert_error(http.get("/chat/search", headers=alice.headers), 422)


def test_query_over_500_characters_is_422(http: httpx.Client, alice: User) -> None:
    ok_data(http.get("/chat/search", params={"query": "a" * 500}, headers=alice.headers))
    assert_error(
        http.get("/chat/search", params={"query": "a" * 501}, headers=alice.headers),
        422,
        "validation_error",
    )


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 101},
        {"limit": -1},
        {"limit": "abc"},
        {"offset": -1},
        {"conversation_id": 0},
        {"conversation_id": "abc"},
        {"conversation_id": 2**31},
    ],
)
def test_search_rejects_bad_parameters(
    http: httpx.Client, alice: User, params: dict[str, Any]
) -> None:
    response = http.get("/chat/search", params={"query": "order", **params}, headers=alice.headers)
    assert_error(response, 422, "validation_error")
