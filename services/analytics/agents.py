"""Agent names for the dashboards, from the chat service that owns agents.

Events carry agent ids only and analytics reads no other schema, so names are asked of chat's
API (`GET /chat/agents/{id}`) with the caller's own token, and kept for
ANALYTICS_AGENT_NAME_TTL_SECONDS [60] (a name is the same for every caller). A name that cannot
be had (a retired agent, which only administrators may read; chat unavailable) is `null`: the
figures never wait on it for more than a second or two.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

import httpx
import structlog

log = structlog.get_logger(component="agent_names")

LOOKUP_TIMEOUT_SECONDS = 2.0
# After a failed lookup, the same agent is not asked for again for this long.
MISS_TTL_SECONDS = 5.0


class AgentDirectory:
    def __init__(self, chat_url: str, *, ttl_seconds: float) -> None:
        self._client = httpx.AsyncClient(
            base_url=chat_url.rstrip("/"), timeout=LOOKUP_TIMEOUT_SECONDS, trust_env=False
        )
        self._ttl = ttl_seconds
        self._names: dict[int, tuple[str | None, float]] = {}

    async def close(self) -> None:
        await self._client.aclose()

    async def names(self, agent_ids: Iterable[int], authorization: str) -> dict[int, str | None]:
        wanted = sorted(set(agent_ids))
        now = time.monotonic()
        missing = [aid for aid in wanted if self._names.get(aid, (None, 0.0))[1] <= now]
        if missing:
            found = await asyncio.gather(*(self._lookup(aid, authorization) for aid in missing))
            for agent_id, name in zip(missing, found, strict=True):
                ttl = self._ttl if name is not None else min(self._ttl, MISS_TTL_SECONDS)
                self._names[agent_id] = (name, now + ttl)
        return {aid: self._names[aid][0] for aid in wanted}

    async def _lookup(self, agent_id: int, authorization: str) -> str | None:
        try:
            response = await self._client.get(
                f"/chat/agents/{agent_id}", headers={"Authorization": authorization}
            )
        except httpx.HTTPError as exc:
            log.warning("agent_name_unavailable", agent_id=agent_id, error=type(exc).__name__)
            return None
        if response.status_code != 200:
            return None
        try:
            name = response.json()["data"]["name"]
        except (ValueError, KeyError, TypeError):
            return None
        return name if isinstance(name, str) else None
