"""Brings every schema to its newest revision: `python -m shared.db.migrate`.

Each service owns one schema and one Alembic history (in `services/<name>/migrations/`, with
its version table inside its own schema), so a service can move to a database of its own by
changing one URL. They run in dependency order: auth (gateway) before chat before analytics.
"""

from __future__ import annotations

import sys
from pathlib import Path

from alembic import command
from alembic.config import Config

from shared.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
SERVICE_SCHEMAS = (("gateway", "auth"), ("chat", "chat"), ("analytics", "analytics"))


def alembic_config(service: str, schema: str, database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(ROOT / "services" / service / "migrations"))
    config.set_main_option("sqlalchemy.url", database_url)
    config.attributes["schema"] = schema
    return config


def upgrade_all(database_url: str, revision: str = "head") -> None:
    for service, schema in SERVICE_SCHEMAS:
        command.upgrade(alembic_config(service, schema, database_url), revision)


def main() -> int:
    url = ServiceSettings().database_url
    upgrade_all(url)
    print("migrations: all schemas at head", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
