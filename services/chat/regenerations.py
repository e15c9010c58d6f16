"""Batch regeneration (administrators): select agent replies, estimate, start, follow, stop.

The chat service owns a batch's definition: it snapshots the selected replies into
`chat.ai_batch_items` when the batch is created, so the batch is a fixed set however many
replies are written meanwhile (its own new replies included). Dispatching is the AI worker's
(services/ai_worker/batches.py): it keeps `concurrency` jobs in flight within the budget.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import orjson

from services.chat import repository as repo
from services.chat.schemas import RegenerationCreate, RegenerationResume
from services.chat.service import add_cancelled_event
from shared.db.pool import Conn
from shared.errors import Conflict, NotFound
from shared.tokens import Principal


def default_key(selection: dict[str, Any]) -> str:
    """The same selection is the same batch unless the caller names another key."""
    digest = hashlib.sha256(orjson.dumps(selection, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"sel-{digest[:24]}"


def _within_budget(body: RegenerationCreate, tokens: int, cost: float) -> bool:
    if body.max_tokens is not None and tokens > body.max_tokens:
        return False
    return body.max_cost is None or cost <= float(body.max_cost)


def batch_view(row: Any) -> dict[str, Any]:
    """A batch as the API shows it, with its progress (counts, rate and ETA)."""
    total, pending, in_flight = int(row["total"]), int(row["pending"]), int(row["in_flight"])
    done, failed, cancelled = int(row["done"]), int(row["failed"]), int(row["cancelled"])
    finished = done + failed + cancelled
    started: datetime | None = row["first_dispatched_at"]
    until: datetime = row["finished_at"] or row["now"]
    elapsed = max(0.0, (until - started).total_seconds()) if started else 0.0
    rate = finished / elapsed if elapsed > 0 else 0.0
    remaining = pending + in_flight
    eta: float | None = None
    if row["status"] != "running" or remaining == 0:
        eta = 0.0
    elif rate > 0:
        eta = round(remaining / rate, 1)
    selection = row["selection"]
    return {
        "id": row["id"],
        "key": row["key"],
        "status": row["status"],
        "selection": orjson.loads(selection) if isinstance(selection, str) else selection,
        "concurrency": row["concurrency"],
        "max_tokens": row["max_tokens"],
        "max_cost": row["max_cost"],
        "estimated_tokens": row["estimated_tokens"],
        "estimated_cost": row["estimated_cost"],
        "created_by": row["created_by"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "finished_at": row["finished_at"],
        "progress": {
            "total": total,
            "done": done,
            "failed": failed,
            "cancelled": cancelled,
            "in_flight": in_flight,
            "pending": pending,
            "remaining": remaining,
            "percent": round(100.0 * finished / total, 1) if total else 100.0,
            "tokens_used": int(row["tokens_used"]),
            "cost_used": float(row["cost_used"]),
            "elapsed_seconds": round(elapsed, 3),
            "replies_per_second": round(rate, 2),
            "eta_seconds": eta,
        },
    }


class RegenerationService:
    async def estimate(self, conn: Conn, body: RegenerationCreate) -> dict[str, Any]:
        selection = body.canonical()
        row = await repo.estimate_selection(conn, selection=selection)
        tokens, cost = int(row["estimated_tokens"]), round(float(row["estimated_cost"]), 6)
        return {
            "dry_run": True,
            "key": body.key or default_key(selection),
            "selection": selection,
            "replies": row["replies"],
            "conversations": row["conversations"],
            "users": row["users"],
            "estimated_tokens": tokens,
            "estimated_cost": cost,
            "within_budget": _within_budget(body, tokens, cost),
        }

    async def create(
        self, conn: Conn, admin: Principal, body: RegenerationCreate, *, job_deadline_seconds: int
    ) -> tuple[dict[str, Any], bool]:
        """The new batch (True), or the one that already has this key (False): running the
        same command twice starts nothing new."""
        selection = body.canonical()
        key = body.key or default_key(selection)
        batch_id = await repo.insert_batch(
            conn,
            key=key,
            created_by=admin.user_id,
            selection=selection,
            concurrency=body.concurrency,
            max_tokens=body.max_tokens,
            max_cost=body.max_cost,
            job_deadline_seconds=job_deadline_seconds,
        )
        if batch_id is not None:
            return await self.get(conn, batch_id), True
        existing = await repo.get_batch_by_key(conn, key=key)
        assert existing is not None  # keys are never deleted
        view = batch_view(existing)
        if view["selection"] != selection:
            raise Conflict(
                f"Key {key!r} already names batch {view['id']}, with another selection",
                details={"batch_id": view["id"], "selection": view["selection"]},
            )
        return view, False

    async def get(self, conn: Conn, batch_id: int) -> dict[str, Any]:
        row = await repo.get_batch(conn, batch_id=batch_id)
        if row is None:
            raise NotFound(f"Batch {batch_id} not found")
        return batch_view(row)

    async def list_batches(self, conn: Conn, *, limit: int, offset: int) -> dict[str, Any]:
        rows = await repo.list_batches(conn, limit=limit, offset=offset)
        return {
            "batches": [batch_view(row) for row in rows],
            "total": await repo.count_batches(conn),
            "limit": limit,
            "offset": offset,
        }

    async def cancel(self, conn: Conn, batch_id: int) -> tuple[dict[str, Any], list[int]]:
        """Stops dispatching and cancels the batch's queued jobs; running ones finish (a
        half-written reply would otherwise replace a whole one)."""
        batch = await self.get(conn, batch_id)
        if batch["status"] != "running":
            raise Conflict(f"Batch {batch_id} is already {batch['status']}")
        cancelled = await repo.stop_batch(conn, batch_id=batch_id)
        for job in cancelled:
            await add_cancelled_event(conn, job)
        return await self.get(conn, batch_id), [int(job["id"]) for job in cancelled]

    async def resume(self, conn: Conn, batch_id: int, body: RegenerationResume) -> dict[str, Any]:
        found = await repo.restart_batch(
            conn,
            batch_id=batch_id,
            concurrency=body.concurrency,
            max_tokens=body.max_tokens,
            max_cost=body.max_cost,
            retry_failed=body.retry_failed,
        )
        if not found:
            raise NotFound(f"Batch {batch_id} not found")
        return await self.get(conn, batch_id)


regeneration_service = RegenerationService()
