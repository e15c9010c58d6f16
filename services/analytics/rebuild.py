"""`python -m services.analytics.rebuild [--verify-only]`: recomputes the rollups from the chat
tables and reports every difference from the live ones.

    --verify-only   compare only (nothing is written); exit 1 when anything differs
    (default)       compare, then replace the live rollups with the recomputed ones

Both read the chat tables and the rollups in one snapshot (REPEATABLE READ), so a difference is
real at that instant: either an event not applied yet (the aggregators' lag) or a defect.
Rebuilding first waits for the batches being applied and holds the aggregators back until it
commits; the events the snapshot already reflects are marked as applied, so nothing counts
twice when they resume. Run it while the aggregators' lag is below the relay's retention
(CHAT_RELAY_RETENTION_SECONDS): events older than that are no longer in chat.outbox to be marked.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from services.analytics import rebuild_repository as repo
from shared.db.pool import plain_dsn
from shared.settings import ServiceSettings


@dataclass(frozen=True)
class Difference:
    table: str
    key: dict[str, Any]
    live: dict[str, Any] | None  # None: no live row (or an all-zero one)
    expected: dict[str, Any] | None  # None: the chat tables imply no row

    def __str__(self) -> str:
        key = ", ".join(f"{name}={_show(value)}" for name, value in self.key.items())
        names = list((self.live or self.expected or {}).keys())
        parts = []
        for name in names:
            live = None if self.live is None else self.live[name]
            expected = None if self.expected is None else self.expected[name]
            if live != expected:
                parts.append(f"{name}: live {_show(live)}, chat tables {_show(expected)}")
        if self.live is None:
            parts.insert(0, "no live row")
        elif self.expected is None:
            parts.insert(0, "no row expected")
        return f"{self.table}({key}): {'; '.join(parts)}"


@dataclass(frozen=True)
class Report:
    differing: int  # keys that differ, over all tables
    differences: list[Difference]  # up to the limit per table
    seconds: float

    @property
    def consistent(self) -> bool:
        return self.differing == 0


def _show(value: Any) -> str:
    return (
        "-" if value is None else value.isoformat() if hasattr(value, "isoformat") else str(value)
    )


def _row(names: Sequence[str], values: Sequence[Any]) -> dict[str, Any] | None:
    """A side's values, None when it has no row (a row always has non-NULL counters or user)."""
    if all(value is None for value in values):
        return None
    return dict(zip(names, values, strict=True))


def _compare(conn: psycopg.Connection[Any], limit: int) -> tuple[int, list[Difference]]:
    total = 0
    found: list[Difference] = []
    for table in repo.COMPARED:
        count, rows = repo.differences(conn, table, limit=limit)
        total += count
        width, values = len(table.keys), len(table.values)
        for row in rows:
            found.append(
                Difference(
                    table.name,
                    dict(zip(table.key_names, row[:width], strict=True)),
                    _row(table.value_names, row[width : width + values]),
                    _row(table.value_names, row[width + values :]),
                )
            )
    return total, found


def _connect(database_url: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(plain_dsn(database_url), application_name="analytics-rebuild")
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    return conn


def verify(database_url: str, *, limit: int = 1000) -> Report:
    """The differences between the live rollups and the chat tables (nothing is written)."""
    started = time.perf_counter()
    with _connect(database_url) as conn:
        try:
            repo.compute_expected(conn)
            total, found = _compare(conn, limit)
        finally:
            conn.rollback()
    return Report(total, found, time.perf_counter() - started)


def rebuild(database_url: str, *, limit: int = 1000) -> Report:
    """Replaces the live rollups with the recomputed ones; reports what differed before."""
    started = time.perf_counter()
    with _connect(database_url) as conn, conn.transaction():
        repo.lock_out_aggregators(conn)
        repo.compute_expected(conn)
        total, found = _compare(conn, limit)
        repo.replace_rollups(conn)
    # Every row was replaced: vacuum (the dashboards' index-only scans need the visibility map)
    # and fresh statistics, now rather than when autovacuum gets to it.
    with psycopg.connect(plain_dsn(database_url), autocommit=True) as conn:
        repo.vacuum_rollups(conn)
    return Report(total, found, time.perf_counter() - started)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.analytics.rebuild", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument(
        "--verify-only", action="store_true", help="compare only; exit 1 if anything differs"
    )
    parser.add_argument(
        "--limit", type=int, default=1000, help="differences listed per table (all are counted)"
    )
    args = parser.parse_args(argv)
    url = ServiceSettings().database_url
    report = (verify if args.verify_only else rebuild)(url, limit=max(1, args.limit))
    for difference in report.differences:
        print(difference)
    shown = len(report.differences)
    more = f" ({report.differing - shown} more not listed)" if report.differing > shown else ""
    if args.verify_only:
        verdict = "consistent" if report.consistent else f"{report.differing} differences{more}"
        print(f"verify: {verdict} ({report.seconds:.2f}s)", file=sys.stderr)
        return 0 if report.consistent else 1
    print(
        f"rebuild: rollups replaced; {report.differing} differences before{more} "
        f"({report.seconds:.2f}s)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
