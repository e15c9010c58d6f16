"""The analytics schema's tables (filled by the event aggregator; none yet)."""

from __future__ import annotations

from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

SCHEMA = "analytics"


class Base(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)
