"""Runs one ASGI service under uvicorn with the fast loop and parser: `python -m
services.<name>`.
"""

from __future__ import annotations

import argparse

import uvicorn

from shared.logs import configure_logging
from shared.settings import ServiceSettings


def serve(app_path: str, service: str, settings: ServiceSettings) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m services.{service}")
    parser.add_argument("--host", default=settings.host)
    parser.add_argument("--port", type=int, default=settings.port)
    args = parser.parse_args()
    configure_logging(service, settings.log_level)
    uvicorn.run(
        app_path,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        # Longer than the gateway's pooled client keeps idle connections, so the server never
        # closes one the client is about to reuse.
        timeout_keep_alive=75,
        timeout_graceful_shutdown=20,
        proxy_headers=False,
    )
