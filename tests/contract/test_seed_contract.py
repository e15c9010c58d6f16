"""The shape comparison the contract tests rely on (no services needed)."""

from __future__ import annotations

import pytest

from tests.contract.seed_contract import (
    chat_service_typescript,
    nullable_seed_columns,
    shape_mismatches,
)

EXAMPLE = {
    "success": True,
    "data": {"items": [{"id": 1, "score": 0.5, "tokens_used": 3}], "total": 5, "note": None},
}


def test_same_shape_with_extra_keys_matches() -> None:
    actual = {
        "success": True,
        "extra": "ok",
        "data": {
            "items": [{"id": 7, "score": 2, "tokens_used": None, "x": 1}],
            "total": 0,
            "note": [1],
        },
    }
    assert shape_mismatches(actual, EXAMPLE) == []


@pytest.mark.parametrize(
    ("actual", "problem"),
    [
        ({"data": EXAMPLE["data"]}, "$.success: missing"),
        ({"success": "true", "data": EXAMPLE["data"]}, "$.success: expected boolean"),
        ({"success": True, "data": {"items": [], "total": 1}}, "$.data.items: empty array"),
        (
            {
                "success": True,
                "data": {"items": [{"id": "1", "score": 1, "tokens_used": 1}], "total": 1},
            },
            "$.data.items[0].id: expected number",
        ),
        (
            {
                "success": True,
                "data": {"items": [{"id": None, "score": 1, "tokens_used": 1}], "total": 1},
            },
            "$.data.items[0].id: expected number",
        ),
        (
            {"success": True, "data": {"items": [{"id": 1, "score": 1}], "total": True}},
            "$.data.items[0].tokens_used: missing",
        ),
        (
            {
                "success": True,
                "data": {"items": [{"id": 1, "score": 1, "tokens_used": 1}], "total": True},
            },
            "$.data.total: expected number",
        ),
        ({"success": True, "data": None}, "$.data: expected object"),
    ],
)
def test_departures_are_reported(actual: object, problem: str) -> None:
    assert any(p.startswith(problem) for p in shape_mismatches(actual, EXAMPLE)), shape_mismatches(
        actual, EXAMPLE
    )


def test_nullable_columns_come_from_the_seed_sql() -> None:
    assert nullable_seed_columns() == {
        "agent_id",
        "last_message_at",
        "tokens_used",
        "processing_time",
        "file_type",
        "file_size",
        "file_path",
        "session_end",
        "duration_minutes",
    }


def test_typescript_block_is_extracted_verbatim() -> None:
    source = chat_service_typescript()
    assert source.startswith("export class ChatService {\n")
    assert source.rstrip().endswith("}")
    assert "```" not in source
