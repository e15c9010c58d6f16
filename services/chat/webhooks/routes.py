"""HTTP routes of the webhook admin API (`/chat/admin/webhooks`, administrators only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from starlette.responses import Response

from services.chat.schemas import Envelope, error_responses
from services.chat.unit_of_work import Connection, Idempotent, run_write
from services.chat.webhooks.schemas import (
    DeliveryStatus,
    SecretRotation,
    WebhookCreate,
    WebhookDelivery,
    WebhookDeliveryDetail,
    WebhookDeliveryList,
    WebhookList,
    WebhookPublic,
    WebhookRef,
    WebhookUpdate,
    WebhookWithSecret,
)
from services.chat.webhooks.service import webhook_service
from shared.auth import AdminUser
from shared.envelope import ok

router = APIRouter(prefix="/chat/admin/webhooks", tags=["webhooks"])

WebhookId = Annotated[int, Path(ge=1, lt=2**63)]
DeliveryId = Annotated[int, Path(ge=1, lt=2**63)]
Limit = Annotated[int, Query(ge=1, le=100, description="Page size, at most 100")]
Offset = Annotated[int, Query(ge=0, le=1_000_000, description="Rows to skip")]


@router.post(
    "",
    status_code=201,
    response_model=Envelope[WebhookWithSecret],
    responses=error_responses(401, 403, 422),
)
async def create_webhook(body: WebhookCreate, admin: AdminUser, write: Idempotent) -> Response:
    """Register an endpoint for event types; the answer shows its signing secret (only now)."""
    return await write(
        lambda c: webhook_service.create(c, admin, body),
        message="Webhook created; keep its secret, it is not shown again",
        status_code=201,
    )


@router.get("", response_model=Envelope[WebhookList], responses=error_responses(401, 403, 422))
async def list_webhooks(
    admin: AdminUser, conn: Connection, limit: Limit = 20, offset: Offset = 0
) -> Response:
    """Registered endpoints, newest first (without their secrets)."""
    data = await webhook_service.list(conn, limit=limit, offset=offset)
    return ok(data, f"Found {data['total']} webhooks")


@router.get(
    "/{webhook_id}",
    response_model=Envelope[WebhookPublic],
    responses=error_responses(401, 403, 404, 422),
)
async def get_webhook(webhook_id: WebhookId, admin: AdminUser, conn: Connection) -> Response:
    """One endpoint (without its secret)."""
    return ok(await webhook_service.get(conn, webhook_id), "Webhook found")


@router.put(
    "/{webhook_id}",
    response_model=Envelope[WebhookPublic],
    responses=error_responses(401, 403, 404, 422),
)
async def update_webhook(
    webhook_id: WebhookId, body: WebhookUpdate, admin: AdminUser, conn: Connection
) -> Response:
    """Change an endpoint's URL, event types, description or active flag. Inactive: nothing is
    sent and no deliveries are created; its unfinished ones resume when it is active again."""
    return await run_write(
        conn, lambda c: webhook_service.update(c, webhook_id, body), message="Webhook updated"
    )


@router.delete(
    "/{webhook_id}",
    response_model=Envelope[WebhookRef],
    responses=error_responses(401, 403, 404, 422),
)
async def delete_webhook(webhook_id: WebhookId, admin: AdminUser, conn: Connection) -> Response:
    """Delete an endpoint with its delivery log; nothing more is sent to it."""
    return await run_write(
        conn, lambda c: webhook_service.delete(c, webhook_id), message="Webhook deleted"
    )


@router.post(
    "/{webhook_id}/rotate-secret",
    response_model=Envelope[WebhookWithSecret],
    responses=error_responses(401, 403, 404, 422),
)
async def rotate_webhook_secret(
    webhook_id: WebhookId,
    admin: AdminUser,
    conn: Connection,
    body: SecretRotation | None = None,
) -> Response:
    """A new signing secret (shown only now); deliveries are signed with the previous one too
    for `previous_secret_valid_seconds` [24 h], so the receiver can switch without a gap."""
    return await run_write(
        conn,
        lambda c: webhook_service.rotate_secret(c, webhook_id, body or SecretRotation()),
        message="Secret rotated; keep the new secret, it is not shown again",
    )


@router.get(
    "/{webhook_id}/deliveries",
    response_model=Envelope[WebhookDeliveryList],
    responses=error_responses(401, 403, 404, 422),
)
async def list_webhook_deliveries(
    webhook_id: WebhookId,
    admin: AdminUser,
    conn: Connection,
    limit: Limit = 20,
    offset: Offset = 0,
    status: Annotated[DeliveryStatus | None, Query(description="Only deliveries in it")] = None,
    event_type: Annotated[str | None, Query(max_length=64, description="Only this type")] = None,
) -> Response:
    """The endpoint's delivery log, newest first: status, attempts, last HTTP status and error,
    when the next attempt is due."""
    data = await webhook_service.list_deliveries(
        conn, webhook_id, status=status, event_type=event_type, limit=limit, offset=offset
    )
    return ok(data, f"Found {data['total']} deliveries")


@router.get(
    "/{webhook_id}/deliveries/{delivery_id}",
    response_model=Envelope[WebhookDeliveryDetail],
    responses=error_responses(401, 403, 404, 422),
)
async def get_webhook_delivery(
    webhook_id: WebhookId, delivery_id: DeliveryId, admin: AdminUser, conn: Connection
) -> Response:
    """One delivery with the body sent and every attempt (status, error, answer, duration)."""
    return ok(await webhook_service.get_delivery(conn, webhook_id, delivery_id), "Delivery found")


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/retry",
    response_model=Envelope[WebhookDelivery],
    responses=error_responses(401, 403, 404, 409, 422),
)
async def retry_webhook_delivery(
    webhook_id: WebhookId, delivery_id: DeliveryId, admin: AdminUser, conn: Connection
) -> Response:
    """Send a dead (or failed) delivery again now: one more attempt."""
    return await run_write(
        conn,
        lambda c: webhook_service.retry_delivery(c, webhook_id, delivery_id),
        message="Delivery scheduled",
    )
