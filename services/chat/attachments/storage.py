"""Where attachment bytes live: one small interface, on the local filesystem (`make run`) or on
any S3-compatible object store (deployments on several machines), chosen by CHAT_STORAGE_BACKEND.

Uploads and downloads stream: a writer takes the file chunk by chunk as the request body
arrives, a reader yields it chunk by chunk, so no file is ever held whole in memory (an S3
upload holds at most one part). Keys are chosen by the service (`attachments/<id>`), never by
a user. Backend failures are `StorageError` (a 503 for the caller), counted by operation.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import anyio
import structlog
from prometheus_client import Counter

from services.chat.settings import ChatSettings
from shared.errors import ServiceUnavailable

log = structlog.get_logger(component="storage")

STORAGE_ERRORS = Counter(
    "chat_storage_errors_total",
    "Object storage operations that failed, by backend and operation.",
    ["backend", "operation"],
)

CHUNK_BYTES = 256 * 1024
# Keys are made here, never from user input; anything else is a bug, refused before any I/O.
_KEY = re.compile(r"^[a-z]+/[0-9]+$")


class StorageError(ServiceUnavailable):
    """The object store failed (unreachable, refused, full): the request may succeed later."""

    default_message = "File storage is unavailable; try again shortly"


class ObjectWriter(Protocol):
    """One upload in progress: `write` chunks, then `commit` (visible) or `abort` (gone)."""

    async def write(self, data: bytes) -> None: ...

    async def commit(self) -> None: ...

    async def abort(self) -> None: ...


class ObjectStore(Protocol):
    backend: str

    async def writer(self, key: str, *, content_type: str) -> ObjectWriter: ...

    def read(self, key: str) -> AsyncIterator[bytes]: ...

    async def delete(self, keys: Sequence[str]) -> None: ...

    async def exists(self, key: str) -> bool: ...

    async def download_url(self, key: str, *, file_name: str, content_type: str) -> str | None:
        """A short-lived URL the client may fetch the object from directly, or None when
        downloads stream through the service."""
        ...

    async def check(self) -> str: ...

    def close(self) -> None: ...


def content_disposition(file_name: str) -> str:
    """`attachment` (never `inline`: a stored file must not render as a page of our origin),
    with an ASCII fallback name and the exact name in RFC 5987 form."""
    fallback = re.sub(r"[^A-Za-z0-9._ -]", "_", file_name).strip() or "file"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(file_name, safe='')}"


def _checked(key: str) -> str:
    if not _KEY.match(key):
        raise ValueError(f"not a storage key: {key!r}")
    return key


# --- the local filesystem ------------------------------------------------------------------------


class _LocalWriter:
    def __init__(self, store: LocalStore, key: str) -> None:
        self._final = store.path(key)
        # In the same directory tree as the final file, so the commit is an atomic rename.
        self._tmp = store.root / ".partial" / f"{uuid.uuid4().hex}"
        self._file = self._tmp.open("wb")

    async def write(self, data: bytes) -> None:
        try:
            await anyio.to_thread.run_sync(self._file.write, data)
        except OSError as exc:
            raise _failed("local", "write", exc) from exc

    async def commit(self) -> None:
        def finish() -> None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._tmp, self._final)

        try:
            await anyio.to_thread.run_sync(finish)
        except OSError as exc:
            await self.abort()
            raise _failed("local", "commit", exc) from exc

    async def abort(self) -> None:
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()


class LocalStore:
    """Files under one directory: `<root>/attachments/<id>`. For one machine (`make run`, tests):
    several chat processes share it only if they share the disk."""

    backend = "local"

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / ".partial").mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / _checked(key)

    async def writer(self, key: str, *, content_type: str) -> ObjectWriter:
        try:
            return _LocalWriter(self, _checked(key))
        except OSError as exc:
            raise _failed("local", "write", exc) from exc

    async def read(self, key: str) -> AsyncIterator[bytes]:
        try:
            file = await anyio.to_thread.run_sync(self.path(key).open, "rb")
        except OSError as exc:
            raise _failed("local", "read", exc) from exc
        try:
            while chunk := await anyio.to_thread.run_sync(file.read, CHUNK_BYTES):
                yield chunk
        except OSError as exc:
            raise _failed("local", "read", exc) from exc
        finally:
            file.close()

    async def delete(self, keys: Sequence[str]) -> None:
        def remove() -> None:
            for key in keys:
                with contextlib.suppress(FileNotFoundError):
                    self.path(key).unlink()

        try:
            await anyio.to_thread.run_sync(remove)
        except OSError as exc:
            raise _failed("local", "delete", exc) from exc

    async def exists(self, key: str) -> bool:
        return await anyio.to_thread.run_sync(self.path(key).is_file)

    async def download_url(self, key: str, *, file_name: str, content_type: str) -> str | None:
        return None

    async def check(self) -> str:
        return "ok" if os.access(self.root, os.W_OK) else f"error: {self.root} is not writable"

    def close(self) -> None:
        pass


# --- S3-compatible object stores -----------------------------------------------------------------


class _S3Writer:
    """A multipart upload started only once the file outgrows one part; a smaller file is one
    PUT. Either way at most one part is held in memory."""

    def __init__(self, store: S3Store, key: str, content_type: str) -> None:
        self._store = store
        self._key = key
        self._content_type = content_type
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []

    async def write(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= self._store.part_size:
            await self._send_part()

    async def _send_part(self) -> None:
        body = bytes(self._buffer)
        self._buffer.clear()
        client, bucket = self._store.client, self._store.bucket
        if self._upload_id is None:
            started = await self._store.call(
                "write",
                client.create_multipart_upload,
                Bucket=bucket,
                Key=self._key,
                ContentType=self._content_type,
            )
            self._upload_id = started["UploadId"]
        number = len(self._parts) + 1
        sent = await self._store.call(
            "write",
            client.upload_part,
            Bucket=bucket,
            Key=self._key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=body,
        )
        self._parts.append({"PartNumber": number, "ETag": sent["ETag"]})

    async def commit(self) -> None:
        client, bucket = self._store.client, self._store.bucket
        try:
            if self._upload_id is None:
                await self._store.call(
                    "write",
                    client.put_object,
                    Bucket=bucket,
                    Key=self._key,
                    Body=bytes(self._buffer),
                    ContentType=self._content_type,
                )
                self._buffer.clear()
                return
            if self._buffer:
                await self._send_part()
            await self._store.call(
                "commit",
                client.complete_multipart_upload,
                Bucket=bucket,
                Key=self._key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
        except StorageError:
            await self.abort()
            raise

    async def abort(self) -> None:
        self._buffer.clear()
        if self._upload_id is None:
            return
        upload_id, self._upload_id = self._upload_id, None
        # Best effort: a bucket lifecycle rule for incomplete uploads catches what this misses.
        with contextlib.suppress(StorageError):
            await self._store.call(
                "abort",
                self._store.client.abort_multipart_upload,
                Bucket=self._store.bucket,
                Key=self._key,
                UploadId=upload_id,
            )


class S3Store:
    """One bucket of an S3-compatible store (AWS S3, MinIO, Ceph, R2, ...) through boto3, whose
    blocking calls run in worker threads."""

    backend = "s3"

    def __init__(self, settings: ChatSettings) -> None:
        import boto3
        from botocore.config import Config

        assert settings.s3_bucket
        self.bucket = settings.s3_bucket
        self.part_size = settings.s3_part_size_bytes
        self.redirect = settings.s3_download_mode == "redirect"
        self.presign_seconds = settings.s3_presign_seconds
        self.client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=(
                settings.s3_access_key.get_secret_value() if settings.s3_access_key else None
            ),
            aws_secret_access_key=(
                settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else None
            ),
            config=Config(
                signature_version="s3v4",
                # Most S3-compatible servers want bucket names in the path, not the host name.
                s3={"addressing_style": "path" if settings.s3_endpoint_url else "auto"},
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
                max_pool_connections=32,
            ),
        )

    async def call(self, operation: str, method: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return await anyio.to_thread.run_sync(lambda: method(**kwargs))
        except (BotoCoreError, ClientError) as exc:
            raise _failed("s3", operation, exc) from exc

    async def writer(self, key: str, *, content_type: str) -> ObjectWriter:
        return _S3Writer(self, _checked(key), content_type)

    async def read(self, key: str) -> AsyncIterator[bytes]:
        from botocore.exceptions import BotoCoreError, ClientError

        got = await self.call("read", self.client.get_object, Bucket=self.bucket, Key=_checked(key))
        body = got["Body"]
        try:
            while chunk := await anyio.to_thread.run_sync(body.read, CHUNK_BYTES):
                yield chunk
        except (BotoCoreError, ClientError, OSError) as exc:
            raise _failed("s3", "read", exc) from exc
        finally:
            body.close()

    async def delete(self, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), 1000):  # the most one DeleteObjects call takes
            batch = [{"Key": _checked(key)} for key in keys[start : start + 1000]]
            done = await self.call(
                "delete",
                self.client.delete_objects,
                Bucket=self.bucket,
                Delete={"Objects": batch, "Quiet": True},
            )
            if done.get("Errors"):
                STORAGE_ERRORS.labels("s3", "delete").inc()
                raise StorageError(f"{len(done['Errors'])} objects could not be deleted")

    async def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            await anyio.to_thread.run_sync(
                lambda: self.client.head_object(Bucket=self.bucket, Key=_checked(key))
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise _failed("s3", "head", exc) from exc
        return True

    async def download_url(self, key: str, *, file_name: str, content_type: str) -> str | None:
        if not self.redirect:
            return None
        url: str = await self.call(
            "presign",
            self.client.generate_presigned_url,
            ClientMethod="get_object",
            Params={
                "Bucket": self.bucket,
                "Key": _checked(key),
                "ResponseContentDisposition": content_disposition(file_name),
                "ResponseContentType": content_type,
            },
            ExpiresIn=self.presign_seconds,
        )
        return url

    async def check(self) -> str:
        try:
            await self.call("check", self.client.head_bucket, Bucket=self.bucket)
        except StorageError as exc:
            return f"error: {exc.__cause__.__class__.__name__ if exc.__cause__ else 'storage'}"
        return "ok"

    def close(self) -> None:
        self.client.close()


def _failed(backend: str, operation: str, exc: BaseException) -> StorageError:
    STORAGE_ERRORS.labels(backend, operation).inc()
    log.warning("storage_failed", backend=backend, operation=operation, error=repr(exc)[:300])
    return StorageError()


def create_store(settings: ChatSettings) -> ObjectStore:
    if settings.storage_backend == "s3":
        return S3Store(settings)
    if settings.storage_dir:
        root = Path(settings.storage_dir)
    else:
        root = Path(tempfile.gettempdir()) / "chat-platform-attachments"
        log.warning("storage_in_temp_dir", path=str(root), hint="set CHAT_STORAGE_DIR")
    return LocalStore(root.resolve())
