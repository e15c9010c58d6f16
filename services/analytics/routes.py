"""HTTP routes of the analytics service (`/chat/analytics/...`).

The dashboards are answered from rollups that the event aggregator maintains; until that
aggregator exists the routes say so plainly (501) instead of scanning the chat tables.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from shared.auth import AdminUser, CurrentUser
from shared.envelope import fail
from shared.schemas import error_responses

router = APIRouter(prefix="/chat/analytics", tags=["analytics"])

_PENDING = "Analytics rollups are not available yet: they come with the event aggregator"


@router.get("/dashboard", responses=error_responses(401, 429))
async def dashboard(user: CurrentUser) -> Response:
    """The caller's chat analytics (not available yet: 501)."""
    return fail(501, "not_implemented", _PENDING)


@router.get("/global", responses=error_responses(401, 403, 429))
async def global_analytics(admin: AdminUser) -> Response:
    """Analytics over all users, for administrators (not available yet: 501)."""
    return fail(501, "not_implemented", _PENDING)
