"""The chat service's attachment and export metrics move with what happens, and carry no user or
conversation ids."""

from __future__ import annotations

import re

import httpx

from tests.chat.factories import create_conversation
from tests.chat.helpers import assert_error, ok_data
from tests.harness import Stack, User, client


def _metrics(stack: Stack) -> str:
    with client(stack.chat_url) as chat:
        response = chat.get("/metrics")
    assert response.status_code == 200
    return response.text


def _value(text: str, name: str, **labels: str) -> float:
    """The sample of `name` with exactly `labels` (0 when absent)."""
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? ([0-9.e+-]+)$", line)
        if not match:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if found == labels:
            return float(match.group(2))
    return 0.0


def test_stored_and_refused_files_and_exports_are_counted(
    http: httpx.Client, alice: User, stack: Stack
) -> None:
    before = _metrics(stack)
    conversation = create_conversation(http, alice)
    body = b"counted bytes\n" * 10
    ok_data(
        http.post(
            f"/chat/conversations/{conversation['id']}/messages/upload",
            files=[("files", ("c.txt", body, "text/plain"))],
            headers=alice.headers,
        ),
        201,
    )
    assert_error(
        http.post(
            f"/chat/conversations/{conversation['id']}/messages/upload",
            files=[("files", ("fake.png", b"not an image", "image/png"))],
            headers=alice.headers,
        ),
        415,
    )
    export = http.get(f"/chat/conversations/{conversation['id']}/export", headers=alice.headers)
    assert export.status_code == 200
    after = _metrics(stack)

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert delta("chat_attachment_files_total", outcome="stored") == 1
    assert delta("chat_attachment_bytes_total", outcome="stored") == len(body)
    assert delta("chat_attachment_files_total", outcome="refused_type") == 1
    assert (
        delta("chat_exports_total", format="json", scope="conversation", outcome="completed") == 1
    )
    assert delta("chat_export_bytes_count", format="json", scope="conversation") == 1
    assert delta("chat_export_bytes_sum", format="json", scope="conversation") == len(
        export.content
    )
    assert delta("chat_export_duration_seconds_count", format="json", scope="conversation") == 1
    assert "chat_storage_errors_total" in after
    for line in after.splitlines():
        if line.startswith(("chat_attachment", "chat_export", "chat_storage")):
            assert "user" not in line and "conversation_id" not in line, line
