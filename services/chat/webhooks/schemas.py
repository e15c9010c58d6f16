"""Request bodies and response shapes of the webhook admin API (`/chat/admin/webhooks`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    BaseModel,
    Field,
    HttpUrl,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from services.chat.schemas import StrictBody
from shared.events import EVENT_TYPES

MAX_URL_CHARS = 2000
ALL_EVENTS = "*"
DeliveryStatus = Literal["pending", "failed", "delivered", "dead"]
Description = Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)]


def _check_url(value: str) -> str:
    """An absolute http(s) URL with a host; anything else is a 422 naming the field."""
    if len(value) > MAX_URL_CHARS:
        raise ValueError(f"at most {MAX_URL_CHARS} characters")
    if value != value.strip() or any(ch.isspace() for ch in value):
        raise ValueError("must not contain whitespace")
    scheme = value.split(":", 1)[0].lower() if ":" in value else ""
    if scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    try:
        parsed = HttpUrl(value)
    except ValidationError as exc:
        raise ValueError(f"not a valid URL: {exc.errors()[0]['msg']}") from None
    if not parsed.host:
        raise ValueError("must name a host")
    if parsed.fragment:
        raise ValueError("must not have a #fragment")
    return str(parsed)


def _check_event_types(value: list[str]) -> list[str]:
    """Event types of shared/events.py, or ["*"] for all of them (also future ones)."""
    types = sorted(set(value))
    if ALL_EVENTS in types:
        if len(types) > 1:
            raise ValueError('"*" (all events) cannot be combined with other types')
        return types
    unknown = [t for t in types if t not in EVENT_TYPES]
    if unknown:
        raise ValueError(f"unknown event types {unknown}; known: {sorted(EVENT_TYPES)} or ['*']")
    return types


EventTypes = Annotated[
    list[Annotated[str, StringConstraints(max_length=64)]],
    Field(min_length=1, max_length=len(EVENT_TYPES) + 1, examples=[["message.created"], ["*"]]),
]


class WebhookCreate(StrictBody):
    url: str = Field(description="http:// or https:// URL the events are POSTed to")
    event_types: EventTypes = Field(
        description=f'Any of {sorted(EVENT_TYPES)}, or ["*"] for every type'
    )
    description: Description = ""
    is_active: bool = True

    _url = field_validator("url")(_check_url)
    _types = field_validator("event_types")(_check_event_types)


class WebhookUpdate(StrictBody):
    url: str | None = None
    event_types: EventTypes | None = None
    description: Description | None = None
    is_active: bool | None = Field(
        default=None, description="Inactive: nothing is sent and no new deliveries are created"
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _check_url(value)

    @field_validator("event_types")
    @classmethod
    def _types(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _check_event_types(value)

    @model_validator(mode="after")
    def _something_to_change(self) -> WebhookUpdate:
        if not self.model_fields_set:
            raise ValueError("give at least one of url, event_types, description, is_active")
        for name in self.model_fields_set:
            if getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self


class SecretRotation(StrictBody):
    previous_secret_valid_seconds: int = Field(
        default=24 * 3600,
        ge=0,
        le=7 * 24 * 3600,
        description="Deliveries are also signed with the old secret this long (0: not at all)",
    )


class WebhookPublic(BaseModel):
    id: int
    url: str
    description: str
    event_types: list[str]
    is_active: bool
    created_by: int | None
    created_at: datetime
    updated_at: datetime
    previous_secret_expires_at: datetime | None = Field(
        description="Until then deliveries carry a second signature, with the previous secret"
    )


class WebhookWithSecret(WebhookPublic):
    secret: str = Field(
        description="`whsec_<base64>`: the signing secret, shown only at creation and rotation"
    )


class WebhookList(BaseModel):
    webhooks: list[WebhookPublic]
    total: int
    limit: int
    offset: int


class WebhookRef(BaseModel):
    webhook_id: int


class WebhookDelivery(BaseModel):
    id: int
    webhook_id: int
    event_id: UUID = Field(description="Also the `webhook-id` header of every attempt")
    event_type: str
    occurred_at: datetime
    status: DeliveryStatus = Field(
        description="pending (not tried yet), failed (will be retried), delivered, dead "
        "(given up after the last attempt)"
    )
    attempts: int
    last_status_code: int | None = Field(description="HTTP status of the last attempt")
    last_error: str | None
    next_attempt_at: datetime | None = Field(
        description="When the next attempt is due; null when finished or the endpoint is inactive"
    )
    last_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime
    updated_at: datetime


class WebhookAttempt(BaseModel):
    attempt: int
    outcome: Literal["delivered", "failed", "dead"]
    status_code: int | None
    error: str | None
    response_excerpt: str | None = Field(description="The start of the receiver's answer")
    duration_seconds: float
    attempted_at: datetime


class WebhookDeliveryDetail(WebhookDelivery):
    payload: dict[str, Any] = Field(description="The body sent: the event (shared/events.py)")
    attempt_log: list[WebhookAttempt]


class WebhookDeliveryList(BaseModel):
    deliveries: list[WebhookDelivery]
    total: int
    limit: int
    offset: int
