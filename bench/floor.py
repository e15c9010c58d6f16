"""`python -m bench floor`: what issue 3's design costs with nothing of the platform in it.

    python -m bench floor [--requests 300] [--warmup 30] [--rounds 3] [--keep]

Next to the same bare Celery `.delay().get()` round trip as `python -m bench ai`, in the same
run, one client sends sequential requests through `bench/floor_apps.py`: front -> back -> a
Celery task on Redis -> a threads-pool worker calling the stand-in LLM through the `openai` SDK ->
a Redis notification -> back -> front. Phase *floor*: those hops alone; phase *floor + db*: with
the job inserted by the back and the reply by the worker (one autocommit statement each), the
least the issue's "written back to Postgres" takes; phase *floor + db in a transaction*: the
job's insert after a read in a transaction, three round trips more (BEGIN, the read, COMMIT), to
show what one round trip on the path costs. The ratio of each p50 to the bare round
trip's is the part of `bench ai`'s ratio that no tuning of the platform's own code can remove.
Prints a table and writes `bench/results/<run>-floor.json`; it does not touch the docs.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import secrets
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
import psycopg

from bench.__main__ import CpuMeter, commit, open_meter
from bench.ai import (
    NOOP_CONCURRENCY,
    QUESTION,
    READY_SECONDS,
    Post,
    celery_round_trips,
    measure,
    noop_ready,
    pick,
    post_load,
    start_noop_worker,
)
from bench.celery_noop import make_app as make_noop_app
from bench.cli import new_run, run_scenario, tear_down
from bench.dataset import ROOT
from bench.floor_apps import SCHEMA
from bench.infra import Servers, connect_servers
from bench.procs import Children, free_port, http_post

PHASES = ("baseline", "floor", "floor_db", "floor_db_tx")
DB_MODE: dict[str, bool | str] = {"floor": False, "floor_db": True, "floor_db_tx": "transaction"}
UVICORN = ("--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench floor", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--requests", type=int, default=300, help="sequential requests per phase")
    parser.add_argument("--warmup", type=int, default=30, help="warm-up requests per phase")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, alternating the order")
    parser.add_argument("--quiet-threshold", type=float, default=0.15)
    parser.add_argument("--quiet-wait", type=float, default=180.0)
    parser.add_argument("--keep", action="store_true", help="keep the database")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("counts must be positive (--warmup may be 0)")
    return args


def requests(db: bool | str, label: str) -> Iterator[Post]:
    for index in itertools.count():
        message = f"{QUESTION} ({label} #{index})"
        yield Post(
            "/ai",
            {"Content-Type": "application/json"},
            orjson.dumps({"message": message, "db": db}),
            message,
        )


def run(args: argparse.Namespace) -> dict[str, Any]:
    run_id, run_dir = new_run("floor")
    children = Children()
    servers: Servers | None = None
    database: str | None = None
    token = secrets.token_hex(4)
    prefix, noop_prefix = f"benchfloor{token}:", f"benchnoop{token}:"
    meter: CpuMeter | None = None
    noop_app: Any = None
    try:
        servers = connect_servers(run_dir)
        database = f"floor_bench_{token}"
        servers.create_database(database)
        database_url = servers.database_url(database)
        with psycopg.connect(database_url, autocommit=True) as conn:
            for statement in SCHEMA.split(";"):
                conn.execute(statement.encode())
        ports = {name: free_port() for name in ("stub", "back", "front")}
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        env = {
            **os.environ,
            "FLOOR_REDIS_URL": servers.redis_url,
            "FLOOR_PREFIX": prefix,
            "FLOOR_DATABASE_URL": database_url,
            "FLOOR_LLM_URL": urls["stub"] + "/v1",
            "FLOOR_BACK_URL": urls["back"],
        }
        python = sys.executable
        procs = {
            "stub": children.start(
                "stub",
                [python, "-m", "tests.support.llm_stub", "--port", str(ports["stub"]),
                 "--max-records", "100000"],
                log_path=run_dir / "stub.log", env=env, cwd=ROOT,
            ),
            "floor_worker": children.start(
                "floor_worker",
                [python, "-m", "celery", "-A", "bench.floor_apps:celery_app", "worker",
                 "--pool", "threads", "--concurrency", str(NOOP_CONCURRENCY), "--loglevel",
                 "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"],
                log_path=run_dir / "floor_worker.log", env=env, cwd=ROOT,
            ),
            "celery_noop": start_noop_worker(
                children, env, servers.redis_url, noop_prefix, run_dir
            ),
        }  # fmt: skip
        for name in ("back", "front"):
            procs[name] = children.start(
                name,
                [python, "-m", "uvicorn", f"bench.floor_apps:{name}", "--port", str(ports[name]),
                 *UVICORN],
                log_path=run_dir / f"{name}.log", env=env, cwd=ROOT,
            )  # fmt: skip
        for name in ("stub", "back", "front"):
            procs[name].wait_http_ok(urls[name] + "/health", READY_SECONDS)
        for db in (False, True):
            check = next(requests(db, "check"))
            status, body = http_post(urls["front"] + "/ai", check.body, check.headers, 60)
            if status != 200 or not orjson.loads(body)["data"]["ai_response"]:
                raise RuntimeError(f"the floor pipeline answered {status}: {body[:300]!r}")
        noop_app = make_noop_app(servers.redis_url, noop_prefix)
        noop_task = noop_ready(noop_app)
        print("bench: floor pipeline and no-op worker ready", file=sys.stderr)
        meter, _ = open_meter(procs, servers, database_url, database)

        rounds: dict[str, list[dict[str, Any]]] = {phase: [] for phase in PHASES}
        for index in range(args.rounds):
            order = PHASES if index % 2 == 0 else PHASES[::-1]
            for phase in order:
                print(f"bench: round {index + 1}: {phase}", file=sys.stderr)
                if phase == "baseline":
                    if args.warmup:
                        celery_round_trips(noop_task, args.warmup)
                    entry = measure(
                        meter, phase, args.quiet_threshold, args.quiet_wait,
                        lambda: celery_round_trips(noop_task, args.requests),
                    )  # fmt: skip
                else:
                    stream = requests(DB_MODE[phase], f"r{index + 1}-{phase}")
                    if args.warmup:
                        post_load(urls["front"], stream, concurrency=1, count=args.warmup)
                    entry = measure(
                        meter, phase, args.quiet_threshold, args.quiet_wait,
                        lambda stream=stream: post_load(
                            urls["front"], stream, concurrency=1, count=args.requests
                        )[0],
                    )  # fmt: skip
                entry["round"] = index + 1
                rounds[phase].append(entry)
        with psycopg.connect(database_url) as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM floor_jobs), (SELECT count(*) FROM floor_replies)"
            ).fetchone()
        jobs, replies = (int(row[0]), int(row[1])) if row else (0, 0)
        best = {phase: pick(entries, "best") for phase, entries in rounds.items()}
        base = best["baseline"]["p50_ms"]
        problems = [
            f"{phase}: {e['non_2xx']} non-2xx"
            for phase, entries in rounds.items()
            for e in entries
            if e["non_2xx"]
        ]
        if jobs != replies:
            problems.append(f"{jobs} jobs but {replies} replies in the floor's tables")
        return {
            "run_id": run_id,
            "commit": commit(),
            "phases": best,
            "rounds": rounds,
            "ratios": {phase: round(best[phase]["p50_ms"] / base, 2) for phase in PHASES[1:]},
            "rows": {"jobs": jobs, "replies": replies},
            "problems": problems,
        }
    finally:
        if noop_app is not None:
            with contextlib.suppress(Exception):
                noop_app.close()
        if meter is not None:
            meter.close()
        tear_down(
            servers,
            children=children,
            redis_prefixes=[prefix, noop_prefix],
            database=database,
            keep=args.keep,
        )


def print_table(result: dict[str, Any]) -> None:
    print(f"\nFloor of issue 3's design (run {result['run_id']}, commit {result['commit']})")
    print(f"{'phase':<12}{'p50 ms':>9}{'p99 ms':>9}{'x bare':>8}  CPU ms per request by process")
    base = result["phases"]["baseline"]["p50_ms"]
    for phase, entry in result["phases"].items():
        cpu = ", ".join(f"{n} {v:.2f}" for n, v in entry["cpu_ms_per_request"].items() if v >= 0.01)
        print(
            f"{phase:<12}{entry['p50_ms']:>9.2f}{entry['p99_ms']:>9.2f}"
            f"{entry['p50_ms'] / base:>7.1f}x  {cpu}"
        )
    print("p50 by round:", {p: e["rounds_p50_ms"] for p, e in result["phases"].items()})


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_scenario(
        lambda: run(args), print_table=print_table, update_doc=None, doc=ROOT / "docs"
    )
