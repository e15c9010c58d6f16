"""One OpenAPI document for the whole public API: the gateway's own routes plus each service's.

The services publish their documents on their private ports; the gateway fetches them, points
every operation at its OAuth2 password flow (so the docs page's Authorize button works for all),
and serves the merge at /openapi.json (and /docs).
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import aiohttp
import structlog
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from services.gateway.proxy import UpstreamProxy

log = structlog.get_logger(component="openapi")

OAUTH2_SCHEME = "OAuth2PasswordBearer"


class MergedOpenAPI:
    def __init__(self, app: FastAPI, proxy: UpstreamProxy) -> None:
        self._app = app
        self._proxy = proxy
        self._upstream_docs: dict[str, dict[str, Any]] = {}
        self._merged: dict[str, Any] | None = None
        self._lock = asyncio.Lock()

    @property
    def complete(self) -> bool:
        return len(self._upstream_docs) == len(self._proxy.upstreams)

    async def refresh(self) -> None:
        """Fetches the documents not fetched yet; a service that is down is tried next time."""
        async with self._lock:
            for upstream in self._proxy.upstreams:
                if upstream.name in self._upstream_docs:
                    continue
                try:
                    async with self._proxy.session.get(
                        upstream.base_url + "/openapi.json", timeout=aiohttp.ClientTimeout(total=3)
                    ) as response:
                        if response.status == 200:
                            self._upstream_docs[upstream.name] = await response.json()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    log.info(
                        "openapi_fetch_failed", upstream=upstream.name, error=type(exc).__name__
                    )
            self._merged = None
            self._proxy.templates.load(self._public_paths())

    async def refresh_until_complete(self, deadline_seconds: float = 120.0) -> None:
        loop = asyncio.get_running_loop()
        until = loop.time() + deadline_seconds
        delay = 0.2
        while not self.complete and loop.time() < until:
            await self.refresh()
            if not self.complete:
                await asyncio.sleep(delay)  # retry backoff while a service is starting
                delay = min(delay * 2, 5.0)

    def _public_paths(self) -> list[str]:
        paths: list[str] = []
        for upstream in self._proxy.upstreams:
            doc = self._upstream_docs.get(upstream.name, {})
            paths.extend(
                p
                for p in doc.get("paths", {})
                if p == upstream.prefix
                or p.startswith(upstream.prefix + "/")
                and self._proxy._upstream_for(p) is upstream  # noqa: SLF001
            )
        return paths

    async def document(self) -> dict[str, Any]:
        if not self.complete:
            await self.refresh()
        if self._merged is None:
            self._merged = self._merge()
        return self._merged

    def _merge(self) -> dict[str, Any]:
        app = self._app
        doc = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        paths = doc.setdefault("paths", {})
        components = doc.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        schemes = components.setdefault("securitySchemes", {})
        schemes.setdefault(
            OAUTH2_SCHEME,
            {"type": "oauth2", "flows": {"password": {"tokenUrl": "/auth/token", "scopes": {}}}},
        )
        allowed = set(self._public_paths())
        for upstream in self._proxy.upstreams:
            upstream_doc = copy.deepcopy(self._upstream_docs.get(upstream.name, {}))
            for path, operations in upstream_doc.get("paths", {}).items():
                if path not in allowed:
                    continue
                for operation in operations.values():
                    if isinstance(operation, dict) and operation.get("security"):
                        operation["security"] = [{OAUTH2_SCHEME: []}]
                    if isinstance(operation, dict):
                        operation.setdefault("tags", [upstream.name])
                paths[path] = operations
            schemas.update(upstream_doc.get("components", {}).get("schemas", {}))
        if not self.complete:
            missing = [u.name for u in self._proxy.upstreams if u.name not in self._upstream_docs]
            doc["info"]["description"] += f"\n\n(Not yet available: {', '.join(missing)}.)"
        return doc
