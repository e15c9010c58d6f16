"""Export (JSON, Markdown; one conversation or the whole account, streamed) and import: an
export imported into an empty account gives the same conversations and messages, exactly."""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import zipfile
from pathlib import Path
from typing import Any

import httpx
import psycopg

from tests.chat.factories import add_message, create_conversation, update_conversation
from tests.chat.helpers import assert_error, ok_data
from tests.harness import Stack, User

AI_TIMEOUT = 60.0


def export_all(http: httpx.Client, user: User) -> dict[str, Any]:
    response = http.get("/chat/export", headers=user.headers, timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["content-disposition"].startswith('attachment; filename="chat-export-')
    # Streamed: its length was not known when the answer started.
    assert "content-length" not in response.headers
    document: dict[str, Any] = response.json()
    return document


def import_export(http: httpx.Client, user: User, body: bytes) -> httpx.Response:
    return http.post(
        "/chat/import",
        content=body,
        headers={**user.headers, "Content-Type": "application/json"},
        timeout=120,
    )


def _comparable(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The conversations without what an import renews: ids, owner and attachment files."""
    conversations = []
    for conversation in document["conversations"]:
        messages = [
            {k: v for k, v in message.items() if k not in ("id", "attachments")}
            for message in conversation["messages"]
        ]
        fields = {k: v for k, v in conversation.items() if k not in ("id", "messages")}
        conversations.append({**fields, "messages": messages})
    return sorted(conversations, key=lambda c: (c["created_at"], c["title"]))


def _seed_messages(db: psycopg.Connection, conversation_id: int, count: int) -> None:
    """Many messages at once (as the API would have written them), with distinct times."""
    db.execute(
        """
        WITH added AS (
            INSERT INTO chat.messages (conversation_id, content, sender, status, tokens_used,
                                       processing_time, created_at, updated_at)
            SELECT %(cid)s, 'bulk message ' || g || ' ✓ "quoted" <tag>',
                   CASE WHEN g %% 2 = 0 THEN 'agent' ELSE 'user' END,
                   CASE WHEN g %% 7 = 0 THEN 'superseded' ELSE 'sent' END,
                   CASE WHEN g %% 2 = 0 THEN g ELSE NULL END,
                   CASE WHEN g %% 2 = 0 THEN g / 10.0 ELSE NULL END,
                   now() - make_interval(secs => %(count)s - g),
                   now() - make_interval(secs => %(count)s - g)
            FROM generate_series(1, %(count)s) g
            RETURNING created_at
        )
        UPDATE chat.conversations
        SET total_messages = total_messages + %(count)s,
            last_message_at = (SELECT max(created_at) FROM added)
        WHERE id = %(cid)s
        """,
        {"cid": conversation_id, "count": count},
    )


def test_an_account_export_imported_into_an_empty_account_round_trips_exactly(
    http: httpx.Client,
    alice: User,
    bob: User,
    db: psycopg.Connection,
    stack: Stack,
) -> None:
    empty = create_conversation(http, alice, title="Nothing said yet")
    flagged = create_conversation(http, alice, title="Pinned — ünïcode ✓", pinned=True)
    update_conversation(http, alice, flagged["id"], is_archived=True, status="closed")
    add_message(http, alice, flagged["id"], content="line one\nline two\twith a tab")
    reply = ok_data(
        http.post(
            f"/chat/conversations/{flagged['id']}/ai-response",
            json={"message": "please answer"},
            headers=alice.headers,
            timeout=AI_TIMEOUT,
        )
    )
    files = [("files", ("n.txt", b"attached\n", "text/plain"))]
    ok_data(
        http.post(
            f"/chat/conversations/{flagged['id']}/messages/upload",
            data={"content": "with a file"},
            files=files,
            headers=alice.headers,
        ),
        201,
    )
    bulk = create_conversation(http, alice, title="A long one")
    _seed_messages(db, bulk["id"], 1203)  # more than two import batches

    source = export_all(http, alice)
    assert source["format"] == "chat-export" and source["version"] == 1
    assert source["totals"] == {"conversations": 3, "messages": 4 + 1203}
    by_id = {c["id"]: c for c in source["conversations"]}
    assert set(by_id) == {empty["id"], flagged["id"], bulk["id"]}
    assert by_id[empty["id"]]["messages"] == []
    agent = [m for m in by_id[flagged["id"]]["messages"] if m["sender"] == "agent"]
    assert [m["id"] for m in agent] == [reply["message_id"]]
    assert agent[0]["tokens_used"] == reply["tokens_used"]
    with_file = by_id[flagged["id"]]["messages"][-1]
    [attachment] = with_file["attachments"]
    assert attachment["download_url"] == f"/chat/attachments/{attachment['id']}/content"
    assert attachment["file_name"] == "n.txt" and attachment["file_size"] == 9

    imported = ok_data(import_export(http, bob, json.dumps(source).encode()), 201)
    assert imported["conversations"] == 3 and imported["messages"] == 1207
    assert imported["attachments_skipped"] == 1
    copy = export_all(http, bob)
    assert copy["totals"] == source["totals"]
    assert _comparable(copy) == _comparable(source)
    assert {c["id"] for c in copy["conversations"]}.isdisjoint(by_id)

    # Analytics hears of the imported history like of any other (one event per row).
    counts = dict(
        db.execute(
            """
            SELECT type, count(*) FROM chat.outbox
            WHERE user_id = %s AND type IN ('conversation.created', 'message.created')
            GROUP BY type
            """,
            (bob.id,),
        ).fetchall()
    )
    assert counts == {"conversation.created": 3, "message.created": 1207}


def test_one_conversation_exports_as_json_and_markdown(
    http: httpx.Client, alice: User, bob: User
) -> None:
    conversation = create_conversation(http, alice, title="Trip planning")
    add_message(http, alice, conversation["id"], content="Where shall we go?")
    ok_data(
        http.post(
            f"/chat/conversations/{conversation['id']}/messages/upload",
            data={"content": "Here is the map"},
            files=[("files", ("map [v2].txt", b"north\n", "text/plain"))],
            headers=alice.headers,
        ),
        201,
    )
    other = create_conversation(http, alice, title="Not this one")
    add_message(http, alice, other["id"], content="elsewhere")

    as_json = http.get(f"/chat/conversations/{conversation['id']}/export", headers=alice.headers)
    assert as_json.status_code == 200, as_json.text
    document = as_json.json()
    [exported] = document["conversations"]
    assert exported["title"] == "Trip planning"
    assert [m["content"] for m in exported["messages"]] == ["Where shall we go?", "Here is the map"]
    assert document["totals"] == {"conversations": 1, "messages": 2}

    as_md = http.get(
        f"/chat/conversations/{conversation['id']}/export",
        params={"format": "markdown"},
        headers=alice.headers,
    )
    assert as_md.status_code == 200, as_md.text
    assert as_md.headers["content-type"].startswith("text/markdown")
    assert as_md.headers["content-disposition"].endswith('.md"')
    text = as_md.text
    assert text.startswith("# Trip planning\n")
    assert text.index("Where shall we go?") < text.index("Here is the map")
    attachment_id = exported["messages"][1]["attachments"][0]["id"]
    assert f"[map \\[v2\\].txt](/chat/attachments/{attachment_id}/content)" in text
    assert "elsewhere" not in text

    assert_error(
        http.get(f"/chat/conversations/{conversation['id']}/export", headers=bob.headers), 404
    )
    assert_error(
        http.get("/chat/export", params={"format": "markdown"}, headers=alice.headers), 422
    )


def test_a_one_conversation_export_imports_too(http: httpx.Client, alice: User, bob: User) -> None:
    conversation = create_conversation(http, alice, title="Single")
    for text in ("first", "second", "third"):
        add_message(http, alice, conversation["id"], content=text)
    body = http.get(f"/chat/conversations/{conversation['id']}/export", headers=alice.headers)
    imported = ok_data(import_export(http, bob, body.content), 201)
    [new_id] = imported["conversation_ids"]
    messages = ok_data(
        http.get(
            f"/chat/conversations/{new_id}/messages", params={"order": "asc"}, headers=bob.headers
        )
    )["messages"]
    assert [m["content"] for m in messages] == ["first", "second", "third"]
    assert ok_data(http.get(f"/chat/conversations/{new_id}", headers=bob.headers))["title"] == (
        "Single"
    )


def test_an_invalid_import_is_refused_whole(
    http: httpx.Client, alice: User, bob: User, db: psycopg.Connection
) -> None:
    conversation = create_conversation(http, alice, title="Valid")
    add_message(http, alice, conversation["id"], content="fine")
    document = export_all(http, alice)
    broken = json.loads(json.dumps(document))
    broken["conversations"].append(
        {"title": "Bad", "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z",
         "messages": [{"content": "x", "sender": "robot", "created_at": "2024-01-01T00:00:00Z",
                       "updated_at": "2024-01-01T00:00:00Z"}]}
    )  # fmt: skip
    refused = assert_error(import_export(http, bob, json.dumps(broken).encode()), 422)
    assert refused["message"].startswith("conversations[1].messages[0].sender")
    truncated = json.dumps(document).encode()[:-40]
    assert_error(import_export(http, bob, truncated), 422, "validation_error")
    wrong = json.dumps({"format": "something-else", "version": 1, "conversations": []}).encode()
    assert_error(import_export(http, bob, wrong), 422)
    assert_error(
        http.post(
            "/chat/import",
            content=b"title,content\n",
            headers={**bob.headers, "Content-Type": "text/csv"},
        ),
        415,
    )
    # Nothing of the refused imports was written: the valid first conversation neither.
    assert ok_data(http.get("/chat/conversations", headers=bob.headers))["total"] == 0
    row = db.execute("SELECT count(*) FROM chat.outbox WHERE user_id = %s", (bob.id,)).fetchone()
    assert row is not None and row[0] == 0


def test_an_import_is_streamed_through_the_gateway_in_chunks(
    http: httpx.Client, alice: User, bob: User
) -> None:
    conversation = create_conversation(http, alice, title=f"Chunked {secrets.token_hex(3)}")
    add_message(http, alice, conversation["id"], content="a " * 5000)
    body = json.dumps(export_all(http, alice)).encode()
    assert len(body) > 10_000

    def chunks() -> Any:
        for start in range(0, len(body), 997):
            yield body[start : start + 997]

    response = http.post(
        "/chat/import",
        content=chunks(),
        headers={**bob.headers, "Content-Type": "application/json"},
    )
    assert ok_data(response, 201)["messages"] == 1


def _upload(http: httpx.Client, user: User, conversation_id: int, files: Any) -> dict[str, Any]:
    data: dict[str, Any] = ok_data(
        http.post(
            f"/chat/conversations/{conversation_id}/messages/upload",
            data={"content": "files"},
            files=files,
            headers=user.headers,
        ),
        201,
    )
    return data


def _archive(http: httpx.Client, user: User, path: str = "/chat/export") -> bytes:
    response = http.get(path, params={"format": "zip"}, headers=user.headers, timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert "content-length" not in response.headers
    return response.content


def _files_of(document: dict[str, Any]) -> list[tuple[str, str, int, str]]:
    return [
        (a["file_name"], a["file_type"], a["file_size"], a["sha256"])
        for c in document["conversations"]
        for m in c["messages"]
        for a in m["attachments"]
    ]


def test_a_zip_export_carries_the_files_and_imports_them_back(
    http: httpx.Client, alice: User, bob: User
) -> None:
    conversation = create_conversation(http, alice, title="With files")
    add_message(http, alice, conversation["id"], content="before the files")
    png = (
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00"
        b"\x00\x90wS\xde\x00\x00\x00\x0cIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N"
        b"\x00\x00\x00\x00IEND\xaeB`\x82"
    )
    notes = "ünïcode notes\n" * 2000
    _upload(
        http,
        alice,
        conversation["id"],
        [
            ("files", ("notes.txt", notes.encode(), "text/plain")),
            ("files", ("dot.png", png, "image/png")),
        ],
    )
    other = create_conversation(http, alice, title="Also files")
    _upload(http, alice, other["id"], [("files", ("data.json", b'{"a": 1}', "application/json"))])

    body = _archive(http, alice)
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        document = json.loads(archive.read("export.json"))
        listed = {
            a["archive_path"]: a
            for c in document["conversations"]
            for m in c["messages"]
            for a in m["attachments"]
        }
        assert set(archive.namelist()) == {"export.json", *listed}
        contents = {path: archive.read(path) for path in listed}
    assert sorted(contents.values()) == sorted([notes.encode(), png, b'{"a": 1}'])
    for path, attachment in listed.items():
        assert path == f"attachments/{attachment['id']}/{attachment['file_name']}"

    imported = ok_data(
        http.post(
            "/chat/import",
            content=body,
            headers={**bob.headers, "Content-Type": "application/zip"},
            timeout=60,
        ),
        201,
    )
    assert imported["attachments_restored"] == 3 and imported["attachments_skipped"] == 0
    copy = export_all(http, bob)
    assert _comparable(copy) == _comparable(document)
    assert sorted(_files_of(copy)) == sorted(_files_of(document))
    for c in copy["conversations"]:
        for m in c["messages"]:
            for a in m["attachments"]:
                downloaded = http.get(a["download_url"], headers=bob.headers)
                assert downloaded.status_code == 200
                assert hashlib.sha256(downloaded.content).hexdigest() == a["sha256"]
                # bob's copies are his own: alice cannot read them.
                assert_error(http.get(a["download_url"], headers=alice.headers), 404)

    one = _archive(http, alice, f"/chat/conversations/{other['id']}/export")
    with zipfile.ZipFile(io.BytesIO(one)) as archive:
        assert len(archive.namelist()) == 2


def test_a_zip_import_with_a_file_that_is_not_its_type_is_refused_whole(
    http: httpx.Client, alice: User, bob: User, stack: Stack
) -> None:
    conversation = create_conversation(http, alice, title="Tampered")
    _upload(http, alice, conversation["id"], [("files", ("a.txt", b"plain\n", "text/plain"))])
    with zipfile.ZipFile(io.BytesIO(_archive(http, alice))) as archive:
        document = archive.read("export.json")
        [path] = [n for n in archive.namelist() if n != "export.json"]
    tampered = io.BytesIO()
    with zipfile.ZipFile(tampered, "w") as archive:
        archive.writestr("export.json", document)
        archive.writestr(path, b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)  # not text any more
    stored = Path(stack.env["CHAT_STORAGE_DIR"]) / "attachments"
    before = set(stored.iterdir())
    refused = assert_error(
        http.post(
            "/chat/import",
            content=tampered.getvalue(),
            headers={**bob.headers, "Content-Type": "application/zip"},
        ),
        415,
    )
    assert refused["error"]["details"]["file_name"] == "a.txt"
    assert ok_data(http.get("/chat/conversations", headers=bob.headers))["total"] == 0
    assert set(stored.iterdir()) == before
    not_zip = http.post(
        "/chat/import",
        content=b"PK nope",
        headers={**bob.headers, "Content-Type": "application/zip"},
    )
    assert_error(not_zip, 422)
