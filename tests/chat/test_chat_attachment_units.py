"""The pure parts of attachments, without the stack: file names, type checks on streamed bytes,
and how attachments enter the AI prompt within its budget."""

from __future__ import annotations

from typing import Any

import pytest

from services.ai_worker.service import build_prompt
from services.chat.attachments.file_types import (
    Refused,
    TypeCheck,
    claimed_type,
    sanitize_file_name,
)

ALLOWED = frozenset({"text/plain", "application/json", "image/png", "text/csv"})
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("/etc/passwd", "passwd"),
        ("..\\..\\boot.ini", "boot.ini"),
        ("...", "file"),
        ("", "file"),
        (None, "file"),
        ("e\u0301t\u00e9.txt", "\u00e9t\u00e9.txt"),  # NFC
        ("a\nb\rc\x00d.txt", "abcd.txt"),
        ("invoice\u202efdp.exe", "invoicefdp.exe"),
        ('q"uo<t>e|s?*:.txt', "q_uo_t_e_s___.txt"),
    ],
)
def test_file_names_are_cleaned(raw: str | None, expected: str) -> None:
    assert sanitize_file_name(raw) == expected


def test_a_long_name_keeps_its_extension_within_255_bytes() -> None:
    name = sanitize_file_name("é" * 300 + ".csv")
    assert name.endswith(".csv") and len(name.encode()) <= 255
    assert name.startswith("é")


def test_the_claimed_type_falls_back_to_the_extension() -> None:
    assert claimed_type("Image/JPG; q=1", "x.png") == "image/jpeg"
    assert claimed_type("application/octet-stream", "notes.md") == "text/markdown"
    assert claimed_type("", "table.CSV") == "text/csv"
    assert claimed_type(None, "noextension") == "application/octet-stream"


def _feed(check: TypeCheck, data: bytes, step: int = 1000) -> str:
    for start in range(0, len(data), step):
        check.feed(data[start : start + step])
    return check.finish()


def test_text_is_verified_across_chunk_boundaries_and_kept_when_small() -> None:
    text = ("ünïcödé ✓ " * 500).encode()  # multi-byte characters split between chunks
    check = TypeCheck("text/plain", ALLOWED, keep_text_bytes=len(text))
    assert _feed(check, text, step=7) == "text/plain"
    assert check.context_text() == text.decode()


def test_text_over_the_context_size_is_accepted_but_not_kept() -> None:
    check = TypeCheck("text/csv", ALLOWED, keep_text_bytes=100)
    assert _feed(check, b"a,b\n" * 1000) == "text/csv"
    assert check.context_text() is None


def test_json_with_a_byte_order_mark_is_json() -> None:
    check = TypeCheck("application/json", ALLOWED, keep_text_bytes=1000)
    assert _feed(check, b'\xef\xbb\xbf{"a": 1}') == "application/json"
    assert check.context_text() == '{"a": 1}'


@pytest.mark.parametrize(
    ("claimed", "data"),
    [
        ("text/plain", PNG),
        ("image/png", b"plain text"),
        ("text/plain", b"ok " * 5000 + b"\xc3"),  # cut inside a character at the very end
        ("text/plain", b"ok " * 5000 + b"\x00"),
        ("application/json", b"hello"),
        ("image/gif", b"GIF89a" + b"\x00" * 50),  # a real GIF, but not allowed here
    ],
)
def test_bytes_that_are_not_the_claimed_allowed_type_are_refused(claimed: str, data: bytes) -> None:
    with pytest.raises(Refused):
        _feed(TypeCheck(claimed, ALLOWED, keep_text_bytes=10), data)


AGENT: dict[str, Any] = {"system_prompt": ""}


def _row(sender: str, content: str, *attachments: dict[str, Any]) -> dict[str, Any]:
    return {"sender": sender, "content": content, "attachments": list(attachments)}


def _file(name: str, text: str | None, kind: str = "text/plain") -> dict[str, Any]:
    return {
        "file_name": name,
        "file_type": kind,
        "file_size": len(text or "x"),
        "text": text,
        "text_chars": None if text is None else len(text),
    }


def test_the_answered_messages_files_come_first_then_the_historys_newest_first() -> None:
    history = [  # newest first, as the repository returns it
        _row("user", "latest", _file("now.txt", "N" * 400)),
        _row("agent", "reply"),
        _row("user", "older", _file("old.txt", "O" * 400)),
    ]
    # 20 tokens for the texts besides the files': room for one file of ~100 tokens + 16.
    messages = build_prompt(AGENT, history, include_context=True, budget_tokens=150)
    contents = [m["content"] for m in messages]
    assert contents[-1].startswith("latest") and "N" * 400 in contents[-1]
    assert contents[0].startswith("older")
    assert "O" * 400 not in contents[0]
    assert "[Attached file: old.txt (text/plain, 400 bytes): not included: over the" in contents[0]


def test_without_context_files_are_only_named_and_other_types_never_sent() -> None:
    history = [_row("user", "look", _file("a.txt", "secret"), _file("b.png", None, "image/png"))]
    [message] = build_prompt(AGENT, history, include_context=False, budget_tokens=10_000)
    assert "secret" not in message["content"]
    assert "[Attached file: a.txt (text/plain, 6 bytes): not included]" in message["content"]
    [with_context] = build_prompt(AGENT, history, include_context=True, budget_tokens=10_000)
    assert "secret" in with_context["content"]
    assert "b.png (image/png, 1 bytes): not included: not a text file" in with_context["content"]


def test_a_text_cut_short_by_the_query_is_never_sent_in_part() -> None:
    cut = {**_file("big.txt", "x" * 100), "text_chars": 5000}
    [message] = build_prompt(
        AGENT, [_row("user", "q", cut)], include_context=True, budget_tokens=10**6
    )
    assert "x" * 100 not in message["content"] and "over the context budget" in message["content"]
