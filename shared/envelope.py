"""The response envelope every JSON answer uses: {"success", "message", "data"} plus "error"
on failure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.responses import Response

# Naive datetimes never leave the database layer (all columns are timestamptz), but if one does it
# is UTC; OPT_UTC_Z renders "2024-06-29T10:00:00Z" like the seed.
_ORJSON_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC | orjson.OPT_NON_STR_KEYS


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=_ORJSON_OPTIONS)


def success_body(data: Any, message: str) -> dict[str, Any]:
    return {"success": True, "message": message, "data": data}


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {
        "success": False,
        "message": message,
        "data": None,
        "error": {"code": code, "details": details},
    }


class EnvelopeResponse(Response):
    """A JSON response serialised with orjson; FastAPI's default encoder is several times slower."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)


def ok(
    data: Any,
    message: str,
    *,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
) -> EnvelopeResponse:
    return EnvelopeResponse(success_body(data, message), status_code=status_code, headers=headers)


def fail(
    status_code: int,
    code: str,
    message: str,
    details: Any = None,
    headers: Mapping[str, str] | None = None,
) -> EnvelopeResponse:
    return EnvelopeResponse(
        error_body(code, message, details), status_code=status_code, headers=headers
    )
