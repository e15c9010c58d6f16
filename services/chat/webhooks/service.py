"""The webhook admin API's logic: endpoints (create, list, get, update, delete, rotate the
secret) and their delivery log (list, one delivery with its attempts, retry)."""

from __future__ import annotations

from typing import Any

import orjson

from services.chat.webhooks import repository as repo
from services.chat.webhooks.schemas import SecretRotation, WebhookCreate, WebhookUpdate
from services.chat.webhooks.signing import new_secret
from shared.db.pool import Conn
from shared.errors import Conflict, NotFound
from shared.tokens import Principal


def _not_found(endpoint_id: int) -> NotFound:
    return NotFound(f"Webhook {endpoint_id} not found")


class WebhookService:
    async def create(self, conn: Conn, admin: Principal, body: WebhookCreate) -> dict[str, Any]:
        row = await repo.insert_endpoint(
            conn,
            url=body.url,
            event_types=body.event_types,
            description=body.description,
            is_active=body.is_active,
            secret=new_secret(),
            created_by=admin.user_id,
        )
        return dict(row)

    async def list(self, conn: Conn, *, limit: int, offset: int) -> dict[str, Any]:
        rows, total = await repo.list_endpoints(conn, limit=limit, offset=offset)
        return {
            "webhooks": [dict(r) for r in rows],
            "total": total,
            "limit": limit,
            "offset": offset,
        }

    async def get(self, conn: Conn, endpoint_id: int) -> dict[str, Any]:
        row = await repo.get_endpoint(conn, endpoint_id=endpoint_id)
        if row is None:
            raise _not_found(endpoint_id)
        return dict(row)

    async def update(self, conn: Conn, endpoint_id: int, body: WebhookUpdate) -> dict[str, Any]:
        current = await repo.lock_endpoint(conn, endpoint_id=endpoint_id)
        if current is None:
            raise _not_found(endpoint_id)
        changes = body.model_dump(include=body.model_fields_set)
        row = await repo.update_endpoint(conn, endpoint_id=endpoint_id, changes=changes)
        if current["is_active"] and not row["is_active"]:
            await repo.pause_deliveries(conn, endpoint_id=endpoint_id)
        elif row["is_active"] and not current["is_active"]:
            await repo.resume_deliveries(conn, endpoint_id=endpoint_id)
        return dict(row)

    async def delete(self, conn: Conn, endpoint_id: int) -> dict[str, Any]:
        if not await repo.delete_endpoint(conn, endpoint_id=endpoint_id):
            raise _not_found(endpoint_id)
        return {"webhook_id": endpoint_id}

    async def rotate_secret(
        self, conn: Conn, endpoint_id: int, body: SecretRotation
    ) -> dict[str, Any]:
        row = await repo.rotate_secret(
            conn,
            endpoint_id=endpoint_id,
            secret=new_secret(),
            previous_valid_seconds=body.previous_secret_valid_seconds,
        )
        if row is None:
            raise _not_found(endpoint_id)
        return dict(row)

    # --- the delivery log ------------------------------------------------------------------------

    async def list_deliveries(
        self,
        conn: Conn,
        endpoint_id: int,
        *,
        status: str | None,
        event_type: str | None,
        limit: int,
        offset: int,
    ) -> dict[str, Any]:
        await self.get(conn, endpoint_id)
        rows, total = await repo.list_deliveries(
            conn,
            endpoint_id=endpoint_id,
            status=status,
            event_type=event_type,
            limit=limit,
            offset=offset,
        )
        return {
            "deliveries": [dict(r) for r in rows],
            "total": total,
            "limit": limit,
            "offset": offset,
        }

    async def get_delivery(self, conn: Conn, endpoint_id: int, delivery_id: int) -> dict[str, Any]:
        row = await repo.get_delivery(conn, endpoint_id=endpoint_id, delivery_id=delivery_id)
        if row is None:
            raise NotFound(f"Delivery {delivery_id} of webhook {endpoint_id} not found")
        delivery = dict(row)
        delivery["payload"] = orjson.loads(delivery.pop("body"))
        delivery["attempt_log"] = [
            dict(r) for r in await repo.list_attempts(conn, delivery_id=delivery_id)
        ]
        return delivery

    async def retry_delivery(
        self, conn: Conn, endpoint_id: int, delivery_id: int
    ) -> dict[str, Any]:
        row = await repo.retry_delivery(conn, endpoint_id=endpoint_id, delivery_id=delivery_id)
        if row is not None:
            return dict(row)
        current = await self.get_delivery(conn, endpoint_id, delivery_id)  # 404 when missing
        raise Conflict(
            f"Delivery {delivery_id} is {current['status']}: only dead or failed ones are retried",
            details={"status": current["status"]},
        )


webhook_service = WebhookService()
