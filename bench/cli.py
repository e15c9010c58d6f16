"""What every bench scenario does around its run: signals, interrupts, the report, the exit code."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import redis

from bench import report
from bench.dataset import ROOT
from bench.procs import Children

RESULTS = ROOT / "bench" / "results"


def new_run(kind: str) -> tuple[str, Path]:
    """A run's id (its UTC start time, then `-kind` when there is one) and its log folder."""
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + (f"-{kind}" if kind else "")
    run_dir = RESULTS / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"bench: run {run_id}; logs in {run_dir}", file=sys.stderr)
    return run_id, run_dir


def _raise_exit(signum: int, _: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def run_scenario(
    run: Callable[[], dict[str, Any]],
    *,
    print_table: Callable[[dict[str, Any]], None],
    update_doc: Callable[[dict[str, Any]], None] | None,
    doc: Path,
) -> int:
    """Runs one scenario, then prints and records its result; 2 when its figures are invalid."""
    signal.signal(signal.SIGTERM, _raise_exit)
    signal.signal(signal.SIGHUP, _raise_exit)
    try:
        result = run()
    except KeyboardInterrupt:
        print("bench: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    except SystemExit as exc:
        if exc.code not in (None, 0):
            print(f"bench: stopped ({exc.code}); everything it started is stopped", file=sys.stderr)
        raise
    print_table(result)
    path = RESULTS / f"{result['run_id']}.json"
    report.write_json(result, path)
    print(f"bench: results in {path}", file=sys.stderr)
    if update_doc is not None:
        update_doc(result)
        print(f"bench: updated {doc.relative_to(ROOT)}", file=sys.stderr)
    if result["problems"]:
        print(
            "bench: the figures are not valid (errors during the load); see above", file=sys.stderr
        )
        return 2
    return 0


def cleanup_redis(url: str, prefix: str) -> None:
    """Deletes every key the run wrote under `prefix`."""
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP wait until the block is done (a second Ctrl-C while the run
    stops must not leave processes, its database or its Redis keys behind), then the first of
    them that came is acted on."""
    received: list[int] = []

    def note(signum: int, _: FrameType | None) -> None:
        received.append(signum)

    previous = {
        signum: signal.signal(signum, note)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        if received[0] == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + received[0])


def tear_down(
    servers: Any,
    *,
    children: Children | None = None,
    redis_prefixes: list[str],
    database: str | None,
    keep: bool,
) -> None:
    """Leaves the machine as the run found them, signals notwithstanding: the processes it
    started stopped, its Redis keys and database gone (unless `keep`), and any server it
    started stopped."""
    with _signals_deferred():
        if children is not None:
            children.stop_all()
        if servers is None:
            return
        with contextlib.suppress(Exception):
            for prefix in redis_prefixes:
                cleanup_redis(servers.redis_url, prefix)
        if database is not None:
            if keep:
                print(f"bench: kept database {database}", file=sys.stderr)
            else:
                with contextlib.suppress(Exception):
                    servers.drop_database(database)
        servers.stop()
