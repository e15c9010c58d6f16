"""Offset and keyset pagination: opaque cursors that pin a position in a list's sort order."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from shared.errors import ValidationFailed

MAX_LIMIT = 100


@dataclass(frozen=True, slots=True)
class Page:
    limit: int
    offset: int


@dataclass(frozen=True, slots=True)
class ConversationCursor:
    """Position after (is_pinned, id) in the order `is_pinned DESC, id DESC`."""

    is_pinned: bool
    id: int


@dataclass(frozen=True, slots=True)
class MessageCursor:
    """Position after message `id`, in the list's direction (`desc` newest first)."""

    id: int
    order: str


def _encode(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode(cursor: str) -> list[str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii").split(":")
    except (binascii.Error, UnicodeError, ValueError) as exc:
        raise _invalid() from exc


def _invalid() -> ValidationFailed:
    return ValidationFailed(
        "cursor: not a cursor this list returned",
        details=[{"loc": ["query", "cursor"], "msg": "invalid cursor", "type": "value_error"}],
    )


def _positive_int(value: str) -> int:
    if not value.isdigit() or len(value) > 10:
        raise _invalid()
    number = int(value)
    if not 0 < number < 2**31:
        raise _invalid()
    return number


def encode_conversation_cursor(is_pinned: bool, conversation_id: int) -> str:
    return _encode(f"c:{int(is_pinned)}:{conversation_id}")


def decode_conversation_cursor(cursor: str) -> ConversationCursor:
    parts = _decode(cursor)
    if len(parts) != 3 or parts[0] != "c" or parts[1] not in ("0", "1"):
        raise _invalid()
    return ConversationCursor(is_pinned=parts[1] == "1", id=_positive_int(parts[2]))


def encode_message_cursor(message_id: int, order: str) -> str:
    return _encode(f"m:{order}:{message_id}")


def decode_message_cursor(cursor: str, order: str) -> MessageCursor:
    parts = _decode(cursor)
    if len(parts) != 3 or parts[0] != "m" or parts[1] != order:
        raise _invalid()
    return MessageCursor(id=_positive_int(parts[2]), order=order)


def check_cursor_with_offset(cursor: str | None, offset: int) -> None:
    if cursor is not None and offset != 0:
        raise ValidationFailed(
            "cursor and offset are exclusive: a cursor already says where the page starts",
            details=[
                {
                    "loc": ["query", "offset"],
                    "msg": "must be 0 with a cursor",
                    "type": "value_error",
                }
            ],
        )
