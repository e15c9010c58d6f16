"""Documentation models of the envelope, so every route's OpenAPI entry shows its real shape."""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel

T = TypeVar("T")


class Envelope(BaseModel, Generic[T]):
    success: Literal[True] = True
    message: str
    data: T


class ErrorDetail(BaseModel):
    code: str
    details: Any = None


class ErrorEnvelope(BaseModel):
    success: Literal[False] = False
    message: str
    data: None = None
    error: ErrorDetail


_DESCRIPTIONS = {
    401: "Missing, expired or invalid token",
    403: "Not allowed for this role",
    404: "Not found, or not yours",
    409: "Conflicts with the current state",
    413: "Request body too large",
    422: "Invalid input",
    429: "Rate limited (see Retry-After)",
    503: "A dependency is unavailable",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route: each expected failure status answers the error envelope."""
    return {
        status: {"model": ErrorEnvelope, "description": _DESCRIPTIONS.get(status, "Error")}
        for status in statuses
    }
