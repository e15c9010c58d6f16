"""The one place a request's transaction is committed, with Idempotency-Key replay built in.

A POST carrying `Idempotency-Key` claims the key inside the same transaction as its writes, and
stores its answer there too: the key, the rows and the answer commit or roll back together.
A retry of a committed request replays the stored answer; a retry racing the first one waits on
the key's row lock and then replays; a failed first attempt leaves nothing, so a retry runs anew.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

import asyncpg
import orjson
from fastapi import Depends, Header, Request
from starlette.responses import Response

from services.chat import repository as repo
from shared.auth import CurrentUser
from shared.db.pool import Conn
from shared.envelope import EnvelopeResponse, dumps, success_body
from shared.errors import ValidationFailed
from shared.tokens import Principal

_KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,255}$")

Work = Callable[[Conn], Awaitable[Any]]


async def connection(request: Request) -> Any:
    """One pooled connection for the request (a dependency; released when the request ends)."""
    pool: asyncpg.Pool = request.app.state.pool
    async with pool.acquire() as conn:
        yield conn


Connection = Annotated[asyncpg.Connection, Depends(connection)]


async def database(request: Request) -> asyncpg.Pool:
    """The pool itself, for read routes that take a connection for just their queries (cheaper
    than the `Connection` dependency's per-request exit stack on the hottest routes)."""
    pool: asyncpg.Pool = request.app.state.pool
    return pool


Database = Annotated[asyncpg.Pool, Depends(database)]


async def idempotency_key(
    key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="A retry with the same key gets the first answer; nothing is written twice",
        ),
    ] = None,
) -> str | None:
    if key is not None and not _KEY_PATTERN.match(key):
        raise ValidationFailed(
            "Idempotency-Key: 1 to 255 visible ASCII characters",
            details=[
                {"loc": ["header", "Idempotency-Key"], "msg": "invalid", "type": "value_error"}
            ],
        )
    return key


IdempotencyKey = Annotated[str | None, Depends(idempotency_key)]


async def run_write(
    conn: Conn,
    work: Work,
    *,
    message: str,
    status_code: int = 200,
) -> Response:
    """Runs `work` in a transaction and answers its result in the envelope."""
    async with conn.transaction():
        data = await work(conn)
    return EnvelopeResponse(success_body(data, message), status_code=status_code)


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a write produced: its envelope's data and status, or a replay of an earlier one."""

    data: Any
    status_code: int
    body: bytes
    replayed: bool

    def response(self) -> Response:
        headers = {"Idempotent-Replayed": "true"} if self.replayed else None
        return Response(
            self.body, status_code=self.status_code, media_type="application/json", headers=headers
        )


@dataclass(frozen=True, slots=True)
class IdempotentWriter:
    """Runs a POST's work once per `Idempotency-Key` (see the module doc); without a key it is a
    plain transactional write. It holds a pooled connection only while it runs: a request that
    then waits (for an AI reply, say) must not keep one, or enough waiting requests would take
    the whole pool and starve the very reads they wait on."""

    pool: asyncpg.Pool
    request: Request
    user: Principal
    key: str | None
    ttl_seconds: int

    async def __call__(self, work: Work, *, message: str, status_code: int = 200) -> Response:
        result = await self.run(work, message=message, status_code=status_code)
        return result.response()

    async def run(
        self,
        work: Work,
        *,
        message: str,
        status_code: int = 200,
        fingerprint: str | None = None,
        one_statement: bool = False,
    ) -> WriteResult:
        """`fingerprint` identifies a request whose body was streamed rather than kept (an
        upload); by default it is a hash of the method, path and body. `one_statement`: the
        work is one statement, atomic alone, so without a key it runs outside a transaction
        block (no BEGIN and COMMIT round trips); with a key it joins the key's transaction."""
        async with self.pool.acquire() as conn:
            return await self._run(
                conn,
                work,
                message=message,
                status_code=status_code,
                fingerprint=fingerprint,
                one_statement=one_statement,
            )

    async def _run(
        self,
        conn: Conn,
        work: Work,
        *,
        message: str,
        status_code: int,
        fingerprint: str | None,
        one_statement: bool,
    ) -> WriteResult:
        user, key = self.user, self.key
        if key is None:
            if one_statement:
                data = await work(conn)
            else:
                async with conn.transaction():
                    data = await work(conn)
            return WriteResult(data, status_code, dumps(success_body(data, message)), False)
        request = self.request
        if fingerprint is None:
            fingerprint = hashlib.sha256(
                b"%s %s\n%s"
                % (request.method.encode(), request.url.path.encode(), await request.body())
            ).hexdigest()
        async with conn.transaction():
            claimed = await repo.claim_idempotency_key(
                conn,
                user_id=user.user_id,
                key=key,
                fingerprint=fingerprint,
                ttl_seconds=self.ttl_seconds,
            )
            if not claimed:
                return await _replay(conn, user, key, fingerprint)
            data = await work(conn)
            body = dumps(success_body(data, message))
            await repo.store_idempotent_response(
                conn, user_id=user.user_id, key=key, status=status_code, body=body
            )
        return WriteResult(data, status_code, body, False)


async def idempotent_writer(
    request: Request, user: CurrentUser, key: IdempotencyKey
) -> IdempotentWriter:
    return IdempotentWriter(
        pool=request.app.state.pool,
        request=request,
        user=user,
        key=key,
        ttl_seconds=request.app.state.settings.idempotency_ttl_seconds,
    )


Idempotent = Annotated[IdempotentWriter, Depends(idempotent_writer)]


async def _replay(conn: Conn, user: Principal, key: str, fingerprint: str) -> WriteResult:
    stored = await repo.get_idempotency_key(conn, user_id=user.user_id, key=key)
    if stored is None or stored["response_status"] is None:  # pragma: no cover - see module doc
        raise ValidationFailed("Idempotency-Key: the first request with this key did not finish")
    if stored["request_fingerprint"] != fingerprint:
        raise ValidationFailed(
            "Idempotency-Key was already used for a different request",
            details=[
                {
                    "loc": ["header", "Idempotency-Key"],
                    "msg": "reused with another request",
                    "type": "idempotency_mismatch",
                }
            ],
        )
    # Re-encode through orjson: jsonb normalised the stored text but kept its content exactly.
    envelope = orjson.loads(stored["response_body"])
    return WriteResult(envelope.get("data"), stored["response_status"], dumps(envelope), True)
