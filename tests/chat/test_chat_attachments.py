"""Attachments through the gateway, on both object stores: the local filesystem and an
S3-compatible server (moto's server mode, in this test process: the one stand-in besides the
LLM). Each store gets its own chat process and gateway, with limits small enough to test.

Uploads, listing and byte-for-byte downloads; another user's 404; the per-file, per-user and
gateway limits (413); types checked against the bytes (415); names sanitised and never used
for storage; files deleted with their message or conversation; text files in the AI prompt.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from deploy.local.processes import ManagedProcess, free_port
from tests.chat.factories import add_message, create_conversation, list_messages
from tests.chat.helpers import assert_error, ok_data
from tests.harness import Stack, User, client

MIB = 1024 * 1024
MAX_FILE = 7 * MIB  # over one 5 MiB S3 part, so the multipart path is used too
MAX_USER = 10 * MIB
MAX_UPLOAD = 12 * MIB  # the gateway's limit for one upload request
PART = 5 * MIB
BUCKET = "chat-attachments-test"
AI_TIMEOUT = 60.0
LIMITS = {
    "CHAT_ATTACHMENT_MAX_FILE_BYTES": str(MAX_FILE),
    "CHAT_ATTACHMENT_MAX_USER_BYTES": str(MAX_USER),
    "CHAT_ATTACHMENT_MAX_FILES": "4",
    # Small pools: the Postgres server's connections are shared with every other process.
    "CHAT_DB_POOL_MAX_SIZE": "5",
}


def png_bytes(width: int = 3, height: int = 2) -> bytes:
    """A small valid PNG (RGB, one colour)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    raw = b"".join(b"\x00" + b"\x10\x80\xf0" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


@dataclass
class Store:
    """One object store under test: the gateway in front of its chat process, and a way to
    see which objects it holds."""

    name: str
    gateway_url: str
    keys: Callable[[], set[str]]
    pending_uploads: Callable[[], int]
    processes: list[ManagedProcess]

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


def _chat_and_gateway(stack: Stack, **overrides: str) -> tuple[str, list[ManagedProcess]]:
    """A chat process with `overrides` and a gateway in front of it; the gateway's URL."""
    chat_url, chat = stack.start_service("chat", **LIMITS, **overrides)
    gateway_url, gateway = stack.start_service(
        "gateway",
        GATEWAY_CHAT_URL=str(chat_url),
        GATEWAY_MAX_UPLOAD_BYTES=str(MAX_UPLOAD),
        GATEWAY_DB_POOL_MAX_SIZE="3",
    )
    assert gateway_url is not None
    return gateway_url, [chat, gateway]


def _local_store(stack: Stack) -> Store:
    root = Path(stack.env["CHAT_STORAGE_DIR"])
    gateway, processes = _chat_and_gateway(stack)

    def keys() -> set[str]:
        folder = root / "attachments"
        return {f"attachments/{p.name}" for p in folder.iterdir()} if folder.exists() else set()

    def pending() -> int:
        return len(list((root / ".partial").iterdir()))

    return Store("local", gateway, keys, pending, processes)


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def _s3_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test-secret",
    )


def _s3_store(stack: Stack, endpoint: str, **overrides: str) -> Store:
    s3 = _s3_client(endpoint)
    bucket = f"{BUCKET}-{secrets.token_hex(3)}"
    s3.create_bucket(Bucket=bucket)
    gateway, processes = _chat_and_gateway(
        stack,
        CHAT_STORAGE_BACKEND="s3",
        CHAT_S3_ENDPOINT_URL=endpoint,
        CHAT_S3_BUCKET=bucket,
        CHAT_S3_ACCESS_KEY="test",
        CHAT_S3_SECRET_KEY="test-secret",
        CHAT_S3_REGION="us-east-1",
        CHAT_S3_PART_SIZE_BYTES=str(PART),
        **overrides,
    )

    def keys() -> set[str]:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return {item["Key"] for page in pages for item in page.get("Contents", [])}

    def pending() -> int:
        return len(s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []))

    return Store("s3", gateway, keys, pending, processes)


@pytest.fixture(scope="module", params=["local", "s3"])
def store(request: pytest.FixtureRequest, stack: Stack) -> Iterator[Store]:
    if request.param == "local":
        running = _local_store(stack)
    else:
        running = _s3_store(stack, request.getfixturevalue("s3_server"))
    yield running
    running.stop()  # not kept for the rest of the run: they hold database connections


@pytest.fixture
def gw(store: Store) -> Iterator[httpx.Client]:
    with client(store.gateway_url) as http:
        yield http


Files = list[tuple[str, tuple[str, bytes, str]]]


def upload(
    gw: httpx.Client,
    user: User,
    conversation_id: int,
    files: Files,
    *,
    content: str | None = "see the files",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    data = {} if content is None else {"content": content}
    return gw.post(
        f"/chat/conversations/{conversation_id}/messages/upload",
        data=data,
        files=files,
        headers={**user.headers, **(headers or {})},
        timeout=60,
    )


def text_file(name: str = "notes.txt", text: str | None = None) -> tuple[str, bytes, str]:
    body = (text or f"Meeting notes {secrets.token_hex(4)}: ship on Friday.\n").encode()
    return (name, body, "text/plain")


def _attachment_ids(created: dict[str, Any]) -> list[int]:
    return [a["id"] for a in created["attachments"]]


def test_upload_list_and_download_byte_for_byte(gw: httpx.Client, alice: User) -> None:
    conversation = create_conversation(gw, alice)
    notes = text_file("notes.txt", "Première ligne\nsecond line, ünïcode ✓\n")
    image = ("pixel.png", png_bytes(), "image/png")
    created = ok_data(
        upload(gw, alice, conversation["id"], [("files", notes), ("files", image)]), 201
    )
    assert created["content"] == "see the files"
    assert created["total_messages"] == 1
    attachments = created["attachments"]
    assert [(a["file_name"], a["file_type"], a["file_size"]) for a in attachments] == [
        ("notes.txt", "text/plain", len(notes[1])),
        ("pixel.png", "image/png", len(image[1])),
    ]
    for attachment in attachments:
        assert set(attachment) == {
            "id", "file_name", "file_type", "file_size", "created_at", "download_url"
        }  # fmt: skip
        assert attachment["download_url"] == f"/chat/attachments/{attachment['id']}/content"

    listed = list_messages(gw, alice, conversation["id"])["messages"]
    assert [m["id"] for m in listed] == [created["message_id"]]
    assert listed[0]["attachments"] == attachments
    per_message = ok_data(
        gw.get(
            f"/chat/conversations/{conversation['id']}/messages/{created['message_id']}"
            "/attachments",
            headers=alice.headers,
        )
    )
    assert per_message == {"attachments": attachments, "total": 2}

    for attachment, (_name, body, kind) in zip(attachments, (notes, image), strict=True):
        response = gw.get(attachment["download_url"], headers=alice.headers)
        assert response.status_code == 200, response.text
        assert response.content == body
        assert response.headers["content-type"].split(";")[0] == kind
        assert response.headers["content-length"] == str(len(body))
        assert response.headers["content-disposition"].startswith("attachment;")
        assert response.headers["x-content-type-options"] == "nosniff"
        info = ok_data(gw.get(f"/chat/attachments/{attachment['id']}", headers=alice.headers))
        assert info["sha256"] == hashlib.sha256(body).hexdigest()
        assert info["message_id"] == created["message_id"]
        assert "file_path" not in info and "storage_key" not in info


def test_a_large_file_streams_both_ways_byte_for_byte(
    gw: httpx.Client, alice: User, store: Store
) -> None:
    """6 MiB: more than one S3 part, and more than the gateway buffers."""
    conversation = create_conversation(gw, alice)
    body = (b"0123456789abcdef" * (6 * MIB // 16))[:-5] + b"tail\n"
    created = ok_data(
        upload(gw, alice, conversation["id"], [("files", ("big.csv", body, "text/csv"))]), 201
    )
    [attachment] = created["attachments"]
    assert attachment["file_size"] == len(body) and attachment["file_type"] == "text/csv"
    with gw.stream("GET", attachment["download_url"], headers=alice.headers) as response:
        assert response.status_code == 200
        received = hashlib.sha256()
        size = 0
        for chunk in response.iter_bytes():
            received.update(chunk)
            size += len(chunk)
    assert size == len(body) and received.hexdigest() == hashlib.sha256(body).hexdigest()
    assert store.pending_uploads() == 0


def test_another_user_gets_404_for_every_file(gw: httpx.Client, alice: User, bob: User) -> None:
    conversation = create_conversation(gw, alice)
    created = ok_data(
        upload(
            gw,
            alice,
            conversation["id"],
            [("files", text_file()), ("files", ("p.png", png_bytes(), "image/png"))],
        ),
        201,
    )
    for attachment_id in _attachment_ids(created):
        assert_error(gw.get(f"/chat/attachments/{attachment_id}/content", headers=bob.headers), 404)
        assert_error(gw.get(f"/chat/attachments/{attachment_id}", headers=bob.headers), 404)
        # The owner still can (so the 404 is about the caller, not the file).
        assert gw.get(
            f"/chat/attachments/{attachment_id}/content", headers=alice.headers
        ).is_success
    assert_error(
        gw.get(
            f"/chat/conversations/{conversation['id']}/messages/{created['message_id']}"
            "/attachments",
            headers=bob.headers,
        ),
        404,
    )
    # Nor can bob attach files to alice's conversation: refused before the body is read, a
    # large one included (the gateway is still sending it when the 404 comes).
    assert_error(upload(gw, bob, conversation["id"], [("files", text_file())]), 404)
    large = ("big.txt", b"x" * (5 * MIB), "text/plain")
    assert_error(upload(gw, bob, conversation["id"], [("files", large)]), 404)
    assert gw.get("/chat/conversations", headers=bob.headers).status_code == 200
    assert_error(gw.get(f"/chat/attachments/{2**31 - 1}/content", headers=alice.headers), 404)
    assert gw.get(f"/chat/attachments/{created['attachments'][0]['id']}/content").status_code == 401


def test_a_file_over_the_per_file_limit_is_413_and_nothing_is_kept(
    gw: httpx.Client, alice: User, store: Store
) -> None:
    conversation = create_conversation(gw, alice)
    before = store.keys()
    small = text_file()
    too_big = ("big.txt", b"a" * (MAX_FILE + 1), "text/plain")
    body = assert_error(
        upload(gw, alice, conversation["id"], [("files", small), ("files", too_big)]),
        413,
        "payload_too_large",
    )
    assert body["error"]["details"]["file_name"] == "big.txt"
    assert store.keys() == before, "the refused upload left objects behind"
    assert store.pending_uploads() == 0
    assert list_messages(gw, alice, conversation["id"])["total"] == 0
    # Exactly the limit is fine.
    at_limit = ("limit.txt", b"b" * MAX_FILE, "text/plain")
    ok_data(upload(gw, alice, conversation["id"], [("files", at_limit)]), 201)


def test_the_per_user_quota_is_413_until_files_are_deleted(
    gw: httpx.Client, alice: User, bob: User, store: Store
) -> None:
    conversation = create_conversation(gw, alice)
    first = ok_data(
        upload(
            gw, alice, conversation["id"], [("files", ("a.txt", b"a" * (6 * MIB), "text/plain"))]
        ),
        201,
    )
    before = store.keys()
    second = ("b.txt", b"b" * (5 * MIB), "text/plain")  # within the file limit, over the quota
    body = assert_error(upload(gw, alice, conversation["id"], [("files", second)]), 413)
    assert body["error"]["details"]["quota"] == "user_bytes"
    assert store.keys() == before
    # The quota is alice's: bob's own is untouched.
    bob_conversation = create_conversation(gw, bob)
    ok_data(upload(gw, bob, bob_conversation["id"], [("files", second)]), 201)
    # Deleting alice's first message frees her bytes.
    ok_data(
        gw.delete(
            f"/chat/conversations/{conversation['id']}/messages/{first['message_id']}",
            headers=alice.headers,
        )
    )
    ok_data(upload(gw, alice, conversation["id"], [("files", second)]), 201)


@pytest.mark.parametrize(
    ("name", "body", "claimed"),
    [
        ("photo.png", b"just some text pretending\n", "image/png"),
        ("notes.txt", png_bytes(), "text/plain"),
        ("pixel.jpg", png_bytes(), "image/jpeg"),
        ("data.json", b"\x00\x01\x02binary\xff\xfe" * 100, "application/json"),
        ("notes.txt", b"valid start " * 1000 + b"\xff\xfe\x00 binary later", "text/plain"),
        ("archive.zip", b"PK\x03\x04" + b"\x00" * 200, "application/zip"),
        ("page.html", b"<html><script>alert(1)</script></html>", "text/html"),
        ("notes.txt", png_bytes(), "application/octet-stream"),
    ],
    ids=[
        "text-as-png", "png-as-text", "png-as-jpeg", "binary-as-json", "binary-after-8k-text",
        "zip-not-allowed", "html-not-allowed", "octet-stream-named-txt",
    ],
)  # fmt: skip
def test_a_file_whose_bytes_are_not_its_claimed_allowed_type_is_refused(
    gw: httpx.Client, alice: User, store: Store, name: str, body: bytes, claimed: str
) -> None:
    conversation = create_conversation(gw, alice)
    before = store.keys()
    refused = assert_error(
        upload(gw, alice, conversation["id"], [("files", (name, body, claimed))]),
        415,
        "unsupported_media_type",
    )
    assert refused["error"]["details"]["file_name"] == name
    assert store.keys() == before
    assert list_messages(gw, alice, conversation["id"])["total"] == 0


def test_types_are_read_from_the_bytes_when_the_client_does_not_say(
    gw: httpx.Client, alice: User
) -> None:
    conversation = create_conversation(gw, alice)
    files: Files = [
        ("files", ("README.md", b"# Title\n\nSome *markdown*.\n", "application/octet-stream")),
        ("files", ("table.csv", b"a,b\n1,2\n", "application/octet-stream")),
        ("files", ("data.json", b'{"k": [1, 2]}', "text/json")),
        ("files", ("img.jpeg", png_bytes(), "image/png")),
    ]
    created = ok_data(upload(gw, alice, conversation["id"], files), 201)
    assert [a["file_type"] for a in created["attachments"]] == [
        "text/markdown", "text/csv", "application/json", "image/png"
    ]  # fmt: skip


def test_file_names_are_sanitised_and_never_name_the_stored_object(
    gw: httpx.Client, alice: User, store: Store
) -> None:
    conversation = create_conversation(gw, alice)
    before = store.keys()
    names = ["../../etc/passwd.txt", "C:\\Windows\\evil\u202egnp.txt", "..hidden.txt", "a<b>|c.txt"]
    files: Files = [("files", (name, b"x\n", "text/plain")) for name in names]
    created = ok_data(upload(gw, alice, conversation["id"], files), 201)
    assert [a["file_name"] for a in created["attachments"]] == [
        "passwd.txt", "evilgnp.txt", "hidden.txt", "a_b__c.txt"
    ]  # fmt: skip
    added = store.keys() - before
    assert added == {f"attachments/{i}" for i in _attachment_ids(created)}
    response = gw.get(created["attachments"][0]["download_url"], headers=alice.headers)
    assert 'filename="passwd.txt"' in response.headers["content-disposition"]


def test_too_many_files_or_a_malformed_body_is_422_and_nothing_is_kept(
    gw: httpx.Client, alice: User, store: Store
) -> None:
    conversation = create_conversation(gw, alice)
    before = store.keys()
    five: Files = [("files", text_file(f"f{i}.txt")) for i in range(5)]
    assert_error(upload(gw, alice, conversation["id"], five), 422, "validation_error")
    truncated = gw.post(
        f"/chat/conversations/{conversation['id']}/messages/upload",
        content=b'--xyz\r\nContent-Disposition: form-data; name="files"; filename="a.txt"\r\n'
        b"Content-Type: text/plain\r\n\r\nhello",
        headers={**alice.headers, "Content-Type": "multipart/form-data; boundary=xyz"},
    )
    assert_error(truncated, 422, "validation_error")
    not_multipart = gw.post(
        f"/chat/conversations/{conversation['id']}/messages/upload",
        json={"content": "hi"},
        headers=alice.headers,
    )
    assert_error(not_multipart, 415)
    blank = gw.post(
        f"/chat/conversations/{conversation['id']}/messages/upload",
        files={"content": (None, " ")},  # a form field, no file: multipart all the same
        headers=alice.headers,
    )
    assert_error(blank, 422, "validation_error")
    assert store.keys() == before
    assert store.pending_uploads() == 0


def test_an_upload_over_the_gateway_limit_is_413(
    gw: httpx.Client, alice: User, store: Store
) -> None:
    conversation = create_conversation(gw, alice)
    before = store.keys()
    files: Files = [
        ("files", (f"part{i}.txt", b"z" * (4 * MIB), "text/plain")) for i in range(4)
    ]  # 16 MiB in one request: each file within its limit, the request over the gateway's
    body = assert_error(upload(gw, alice, conversation["id"], files), 413, "payload_too_large")
    assert "Upload exceeds" in body["message"]
    assert store.keys() == before


def test_idempotency_key_replays_the_upload_without_storing_twice(
    gw: httpx.Client, alice: User, store: Store
) -> None:
    conversation = create_conversation(gw, alice)
    before = store.keys()
    files: Files = [("files", text_file("same.txt", "same bytes\n"))]
    key = {"Idempotency-Key": f"upload-{secrets.token_hex(6)}"}
    first = upload(gw, alice, conversation["id"], files, headers=key)
    again = upload(gw, alice, conversation["id"], files, headers=key)
    assert first.status_code == again.status_code == 201
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.json()["data"] == first.json()["data"]
    assert store.keys() - before == {
        f"attachments/{i}" for i in _attachment_ids(first.json()["data"])
    }
    other: Files = [("files", text_file("same.txt", "other bytes\n"))]
    assert_error(upload(gw, alice, conversation["id"], other, headers=key), 422)
    assert list_messages(gw, alice, conversation["id"])["total"] == 1


def test_deleting_a_message_or_conversation_deletes_its_files(
    gw: httpx.Client, alice: User, store: Store
) -> None:
    conversation = create_conversation(gw, alice)
    add_message(gw, alice, conversation["id"], content="no files here")
    one = ok_data(upload(gw, alice, conversation["id"], [("files", text_file())]), 201)
    two = ok_data(
        upload(
            gw,
            alice,
            conversation["id"],
            [("files", text_file("b.txt")), ("files", ("p.png", png_bytes(), "image/png"))],
        ),
        201,
    )
    one_keys = {f"attachments/{i}" for i in _attachment_ids(one)}
    two_keys = {f"attachments/{i}" for i in _attachment_ids(two)}
    assert one_keys | two_keys <= store.keys()

    ok_data(
        gw.delete(
            f"/chat/conversations/{conversation['id']}/messages/{one['message_id']}",
            headers=alice.headers,
        )
    )
    assert not one_keys & store.keys() and two_keys <= store.keys()
    assert_error(gw.get(one["attachments"][0]["download_url"], headers=alice.headers), 404)
    after = list_messages(gw, alice, conversation["id"])
    assert after["total"] == 2 and one["message_id"] not in [m["id"] for m in after["messages"]]
    assert (
        ok_data(gw.get(f"/chat/conversations/{conversation['id']}", headers=alice.headers))[
            "total_messages"
        ]
        == 2
    )

    ok_data(gw.delete(f"/chat/conversations/{conversation['id']}", headers=alice.headers))
    assert not two_keys & store.keys()


def test_an_ai_reply_can_quote_a_text_file_and_other_types_are_only_named(
    gw: httpx.Client, alice: User, stack: Stack
) -> None:
    assert stack.llm is not None
    conversation = create_conversation(gw, alice)
    secret = f"zebra{secrets.token_hex(5)}"
    notes = ("secret.md", f"# Plan\n\nThe code word is {secret}.\n".encode(), "text/markdown")
    content = f"What is the code word? {secrets.token_hex(3)}"
    created = ok_data(
        upload(
            gw,
            alice,
            conversation["id"],
            [("files", notes), ("files", ("chart.png", png_bytes(), "image/png"))],
            content=content,
        ),
        201,
    )
    # The uploaded message is the latest one, so it is the message being answered.
    reply = ok_data(
        gw.post(
            f"/chat/conversations/{conversation['id']}/ai-response",
            json={"message": content, "include_context": True},
            headers=alice.headers,
            timeout=AI_TIMEOUT,
        )
    )
    assert secret in reply["ai_response"]  # the stand-in LLM echoes what it was given
    [request] = stack.llm.control.requests(contains=secret)
    prompt = request["messages"][-1]["content"]
    assert prompt.startswith(content)
    assert "[Attached file: secret.md (text/markdown" in prompt
    assert "[Attached file: chart.png (image/png" in prompt and "not a text file" in prompt
    assert "\x89PNG" not in prompt
    assert list_messages(gw, alice, conversation["id"])["total"] == 2
    job = ok_data(gw.get(f"/chat/jobs/{reply['job_id']}", headers=alice.headers))
    assert job["prompt_message_id"] == created["message_id"]

    # Without context the files are named, never sent.
    marker = f"q{secrets.token_hex(5)}"
    ok_data(
        gw.post(
            f"/chat/conversations/{conversation['id']}/ai-response",
            json={"message": f"again {marker}", "include_context": False},
            headers=alice.headers,
            timeout=AI_TIMEOUT,
        )
    )
    [bare] = stack.llm.control.requests(contains=marker)
    assert all(secret not in m["content"] for m in bare["messages"])


def test_a_text_file_in_the_history_counts_against_the_context_budget(
    gw: httpx.Client, alice: User, stack: Stack
) -> None:
    """A file far larger than the prompt budget (3,000 tokens, ~12,000 characters) is named
    with the reason; a small one in the same history is sent."""
    assert stack.llm is not None
    conversation = create_conversation(gw, alice)
    small_word, big_word = f"small{secrets.token_hex(4)}", f"big{secrets.token_hex(4)}"
    ok_data(
        upload(
            gw,
            alice,
            conversation["id"],
            [
                ("files", text_file("small.txt", f"tiny note {small_word}\n")),
                ("files", text_file("big.txt", f"{big_word} " + "word " * 12_000)),
            ],
        ),
        201,
    )
    marker = f"ask{secrets.token_hex(5)}"
    ok_data(
        gw.post(
            f"/chat/conversations/{conversation['id']}/ai-response",
            json={"message": f"summarise {marker}"},
            headers=alice.headers,
            timeout=AI_TIMEOUT,
        )
    )
    [request] = stack.llm.control.requests(contains=marker)
    history = "\n".join(m["content"] for m in request["messages"])
    assert small_word in history
    assert big_word not in history
    assert (
        "[Attached file: big.txt (text/plain, 58.6 KiB): not included: over the context" in history
    )


def test_s3_redirect_mode_answers_a_short_lived_presigned_url(
    stack: Stack, s3_server: str, alice: User, bob: User
) -> None:
    """CHAT_S3_DOWNLOAD_MODE=redirect: the owner gets a 302 to a pre-signed URL that serves the
    bytes; anyone else still gets 404."""
    redirecting = _s3_store(
        stack, s3_server, CHAT_S3_DOWNLOAD_MODE="redirect", CHAT_S3_PRESIGN_SECONDS="30"
    )
    with contextlib.ExitStack() as cleanup, client(redirecting.gateway_url) as gw:
        cleanup.callback(redirecting.stop)
        conversation = create_conversation(gw, alice)
        body = png_bytes(5, 5)
        created = ok_data(
            upload(gw, alice, conversation["id"], [("files", ("r.png", body, "image/png"))]), 201
        )
        url = created["attachments"][0]["download_url"]
        response = gw.get(url, headers=alice.headers)
        assert response.status_code == 302, response.text
        location = response.headers["location"]
        assert location.startswith(s3_server) and "X-Amz-Expires=30" in location
        assert "X-Amz-Signature=" in location
        assert_error(gw.get(url, headers=bob.headers), 404)
    direct = httpx.get(location, trust_env=False)
    assert direct.status_code == 200 and direct.content == body
    assert direct.headers["content-type"] == "image/png"
