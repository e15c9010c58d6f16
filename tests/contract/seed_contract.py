"""The seed's contract, read from the copies in tests/contract/seed/: its examples, its TypeScript
client, and a recursive comparison of a real response with an example's shape.

Shape rule: every key of the example is present in the response with the same JSON type
(null, boolean, number, string, array, object; int and float are both "number"), recursively;
for arrays the response's first element is compared with the example's first element. Extra keys
in the response are allowed. A null in the example matches anything.

One allowance, taken from the seed itself: a null in the response matches an example's scalar
when the key is a column the seed's own SQL declares nullable with no default
(`nullable_seed_columns()`: e.g. `messages.tokens_used`, `conversations.last_message_at`). The
examples show those filled in, but the seed's schema lets them be empty (a user's message has no
token count until an AI worker produces one).
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

SEED_DIR = Path(__file__).resolve().parent / "seed"
SEED_FILES = ("chat-api.md", "seed-examples.json")
REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_SEED_DIR = REPO_ROOT.parent / "shared" / "seed"

_FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def seed_text(name: str) -> str:
    return (SEED_DIR / name).read_text(encoding="utf-8")


@cache
def seed_examples() -> tuple[dict[str, Any], ...]:
    return tuple(json.loads(seed_text("seed-examples.json")))


def example(method: str, path: str) -> dict[str, Any]:
    """The seed example of `method path`, path as the seed writes it (`/chat/.../{id}`)."""
    matches = [e for e in seed_examples() if e["method"] == method and e["path"] == path]
    assert len(matches) == 1, f"seed has {len(matches)} examples for {method} {path}"
    return matches[0]


def fenced_blocks(markdown: str, language: str) -> list[str]:
    return [body for lang, body in _FENCE.findall(markdown) if lang == language]


def chat_service_typescript() -> str:
    """The seed's ```typescript block (the ChatService class), exactly as written."""
    blocks = fenced_blocks(seed_text("chat-api.md"), "typescript")
    assert len(blocks) == 1, f"chat-api.md has {len(blocks)} typescript blocks, expected 1"
    assert "export class ChatService" in blocks[0]
    return blocks[0]


@cache
def nullable_seed_columns() -> frozenset[str]:
    """Columns of the seed's CREATE TABLE statements that may hold NULL and have no default."""
    columns: set[str] = set()
    for sql in fenced_blocks(seed_text("chat-api.md"), "sql"):
        for table_body in re.findall(r"CREATE TABLE \w+ \((.*)\);", sql, re.DOTALL):
            for line in table_body.splitlines():
                definition = line.split("--")[0].strip().rstrip(",")
                if not definition or definition.upper().startswith(("FOREIGN KEY", "PRIMARY KEY")):
                    continue
                name, _, rest = definition.partition(" ")
                upper = rest.upper()
                if "NOT NULL" in upper or "PRIMARY KEY" in upper or "DEFAULT" in upper:
                    continue
                columns.add(name)
    return frozenset(columns)


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    raise TypeError(f"not a JSON value: {value!r}")


def shape_mismatches(
    actual: Any, expected: Any, where: str = "$", key: str | None = None
) -> list[str]:
    """How `actual` departs from the shape of the seed example `expected` (empty: it matches)."""
    if expected is None:
        return []
    expected_type, actual_type = json_type(expected), json_type(actual)
    if (
        actual_type == "null"
        and key in nullable_seed_columns()
        and expected_type
        not in (
            "array",
            "object",
        )
    ):
        return []
    if actual_type != expected_type:
        return [f"{where}: expected {expected_type} (seed: {expected!r}), got {actual!r}"]
    if isinstance(expected, dict):
        problems = []
        for name, value in expected.items():
            if name not in actual:
                problems.append(f"{where}.{name}: missing (seed: {value!r})")
            else:
                problems += shape_mismatches(actual[name], value, f"{where}.{name}", name)
        return problems
    if isinstance(expected, list) and expected:
        if not actual:
            return [f"{where}: empty array, the seed's has {len(expected)} element(s) to compare"]
        return shape_mismatches(actual[0], expected[0], f"{where}[0]")
    return []


def assert_seed_shape(actual: Any, expected: Any, what: str) -> None:
    problems = shape_mismatches(actual, expected)
    assert not problems, (
        f"{what}: response does not have the seed example's shape:\n  "
        + "\n  ".join(problems)
        + f"\nresponse: {json.dumps(actual, indent=1)[:4000]}"
    )
