"""HTTP routes of the analytics service (`/chat/analytics/...`): parse, authorise, call one
service function, answer. Every figure comes from the rollups the event aggregator maintains."""

from __future__ import annotations

from datetime import date
from typing import Annotated

import asyncpg
from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from services.analytics.agents import AgentDirectory
from services.analytics.schemas import Dashboard, Envelope, GlobalAnalytics, error_responses
from services.analytics.service import analytics_service
from shared.auth import AdminUser, CurrentUser
from shared.envelope import ok

router = APIRouter(prefix="/chat/analytics", tags=["analytics"])

TimeZone = Annotated[
    str,
    Query(
        alias="tz",
        max_length=64,
        description="IANA time zone the days are counted in (e.g. Europe/Paris); default UTC",
    ),
]
From = Annotated[
    date | None,
    Query(alias="from", description="First day of the range (inclusive); not with `days`"),
]
To = Annotated[
    date | None,
    Query(alias="to", description="Last day of the range (inclusive); default today"),
]
Days = Annotated[
    int | None, Query(description="Days in the range, ending at `to` (1-366); default 30")
]


async def database(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


async def agent_directory(request: Request) -> AgentDirectory:
    directory: AgentDirectory = request.app.state.agents
    return directory


Database = Annotated[asyncpg.Pool, Depends(database)]
Agents = Annotated[AgentDirectory, Depends(agent_directory)]


@router.get(
    "/dashboard",
    response_model=Envelope[Dashboard],
    responses=error_responses(401, 422, 429, 503),
)
async def dashboard(
    user: CurrentUser,
    db: Database,
    agents: Agents,
    request: Request,
    time_zone: TimeZone = "UTC",
    first: From = None,
    last: To = None,
    days: Days = None,
) -> Response:
    """The caller's analytics: totals, AI response time, most active agent, daily stats in their
    time zone for a range, and the same figures for the period before it."""
    data = await analytics_service.dashboard(
        db,
        agents,
        user,
        request.headers.get("authorization", ""),
        time_zone=time_zone,
        first=first,
        last=last,
        days=days,
    )
    return ok(data, "Analytics retrieved")


@router.get(
    "/dashboard/daily.csv",
    response_class=Response,
    responses={
        200: {"content": {"text/csv": {}}, "description": "date,conversations,messages,..."},
        **error_responses(401, 422, 429, 503),
    },
)
async def daily_csv(
    user: CurrentUser,
    db: Database,
    time_zone: TimeZone = "UTC",
    first: From = None,
    last: To = None,
    days: Days = None,
) -> Response:
    """The caller's daily stats for a range as CSV (one row per local day, zeros included)."""
    name, body = await analytics_service.daily_csv(
        db, user, time_zone=time_zone, first=first, last=last, days=days
    )
    return Response(
        body,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get(
    "/global",
    response_model=Envelope[GlobalAnalytics],
    responses=error_responses(401, 403, 422, 429, 503),
)
async def global_analytics(
    admin: AdminUser,
    db: Database,
    agents: Agents,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=100, description="Agents listed, at most 100")] = 10,
) -> Response:
    """Analytics over all users, for administrators: totals, conversations per user, top agents."""
    data = await analytics_service.global_view(
        db, agents, request.headers.get("authorization", ""), limit=limit
    )
    return ok(data, "Global analytics retrieved")
