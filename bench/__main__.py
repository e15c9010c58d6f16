"""`make bench`: GET /chat/conversations through the gateway next to a bare FastAPI + asyncpg app.

    python -m bench [--duration 15] [--warmup 3] [--connections 64] [--threads 2] [--rounds 3]
                    [--users 1000] [--per-user 100] [--keep] [--profile] [--no-doc]

Creates and seeds a fresh database, starts chat, analytics and gateway as production processes and
the bare app, loads each path with wrk (rotating through every user), prints a table, writes
`bench/results/<run>.json` and rewrites the section of `docs/benchmarks.md`. Everything it started
(processes, database, throwaway servers) is stopped or dropped on exit, Ctrl-C included.

    python -m bench ai [...]    the AI reply pipeline's own overhead (issue 3, target (a)):
                                see bench/ai.py
    python -m bench floor [...] issue 3's hops with nothing of the platform in them, next to the
                                same bare Celery round trip: see bench/floor.py
    python -m bench regen [...] batch regeneration's throughput against the limit its
                                concurrency sets (issue 3, target (b)): see bench/regen.py
    python -m bench export [...] exporting 10,000 messages in memory that does not grow with
                                the history, and the import round trip (issue 5):
                                see bench/export.py
    python -m bench analytics [...]  the analytics aggregator's throughput and end-to-end lag,
                                the dashboard at 10k and 1M messages (issue 4): bench/analytics.py
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import psycopg
import redis

from bench import load, pyspy, report
from bench.cli import new_run, run_scenario, tear_down
from bench.dataset import ROOT, migrate, seed
from bench.infra import Servers, connect_servers
from bench.procs import (
    Child,
    Children,
    cpu_seconds,
    free_port,
    http_get,
    machine_cpu,
    machine_shares,
    wait_for_quiet,
)

RESULTS = ROOT / "bench" / "results"
TARGET_RATIO = 0.5
READY_SECONDS = 90.0
PAGE = "limit=20&offset=0"
# The processes whose CPU time one request of each path costs (the load generator aside).
_PATH_PROCESSES = {
    "bare": frozenset({"bare", "postgres"}),
    "gateway": frozenset({"gateway", "chat", "analytics", "postgres", "redis"}),
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--per-user", type=int, default=100, help="conversations per user")
    parser.add_argument("--duration", type=int, default=15, help="seconds of measured load")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up load")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--connections", type=int, default=64, help="concurrent connections")
    parser.add_argument(
        "--rounds", type=int, default=3, help="measured runs per path, alternating the order"
    )
    parser.add_argument(
        "--pick", choices=("best", "median"), default="best",
        help="which round stands for a path: best (other work on the machine only ever slows a "
        "run down) or median",
    )  # fmt: skip
    parser.add_argument(
        "--load-tool", choices=("auto", "wrk", "python"), default="auto",
        help="auto: wrk (installed with apt-get if missing), else a Python load generator",
    )  # fmt: skip
    parser.add_argument("--profile", action="store_true", help="py-spy the gateway path after")
    parser.add_argument("--profile-native", action="store_true", help="py-spy --native frames")
    parser.add_argument(
        "--quiet-threshold", type=float, default=0.15,
        help="before each run, wait until other work keeps the machine at most this busy",
    )  # fmt: skip
    parser.add_argument(
        "--quiet-wait", type=float, default=180.0,
        help="seconds to wait for a quiet machine before measuring anyway (0: do not wait)",
    )  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = parser.parse_args(argv)
    if args.users < 1 or args.per_user < 1 or args.duration < 1 or args.rounds < 1:
        parser.error("--users, --per-user, --duration and --rounds must be positive")
    return args


def service_env(
    servers: Servers, database_url: str, redis_prefix: str, secret: str
) -> dict[str, str]:
    # The production defaults of every service: no inherited GATEWAY_/CHAT_/... overrides.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GATEWAY_", "CHAT_", "ANALYTICS_", "JWT_", "ADMIN_"))
    }
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=servers.redis_url,
        REDIS_PREFIX=redis_prefix,
        JWT_SECRET=secret,
        LOG_LEVEL="INFO",
    )
    return env


def mint_tokens(secret: str, user_ids: Sequence[int], role: str = "user") -> list[str]:
    from services.gateway.security import issue_access_token
    from shared.settings import JWTSettings

    settings = JWTSettings(secret=secret)
    return [issue_access_token(settings, user_id=uid, role=role)[0] for uid in user_ids]


def check_same_answers(
    bare_url: str, gateway_url: str, user_id: int, token: str, per_user: int
) -> None:
    """Both paths must answer the same page for the same user before their speed means anything."""
    status_b, body_b = http_get(f"{bare_url}/conversations?user_id={user_id}&{PAGE}")
    status_g, body_g = http_get(
        f"{gateway_url}/chat/conversations?{PAGE}", {"Authorization": f"Bearer {token}"}
    )
    if status_b != 200 or status_g != 200:
        raise RuntimeError(
            f"pre-check: bare answered {status_b}, gateway {status_g}: {body_b[:300]!r} "
            f"{body_g[:300]!r}"
        )
    bare, gateway = orjson.loads(body_b), orjson.loads(body_g)
    if bare["data"] != gateway["data"] or bare["message"] != gateway["message"]:
        raise RuntimeError(f"pre-check: the two paths answer differently:\n{bare}\n{gateway}")
    data = gateway["data"]
    if len(data["conversations"]) != min(20, per_user) or data["total"] != per_user:
        raise RuntimeError(f"pre-check: unexpected page: total {data['total']}")


class CpuMeter:
    """CPU seconds used by each process of interest between two snapshots."""

    def __init__(
        self, children: dict[str, Child], database_url: str, database: str, redis_pid: int | None
    ) -> None:
        self._children = children
        self._pg = psycopg.connect(database_url, autocommit=True)
        self._database = database
        self._redis_pid = redis_pid

    def close(self) -> None:
        self._pg.close()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """A query on the meter's own connection (safe from other threads), whose backend the
        figures leave out: a sampler that opens no connection of its own."""
        return self._pg.execute(sql, params).fetchall()

    def _backends(self) -> list[int]:
        rows = self._pg.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (self._database,),
        ).fetchall()
        return [int(row[0]) for row in rows]

    def snapshot(self) -> dict[str, dict[int, float]]:
        groups: dict[str, list[int]] = {name: [c.pid] for name, c in self._children.items()}
        groups["postgres"] = self._backends()
        if self._redis_pid is not None:
            groups["redis"] = [self._redis_pid]
        snap: dict[str, dict[int, float]] = {}
        for name, pids in groups.items():
            snap[name] = {}
            for pid in pids:
                used = cpu_seconds(pid)
                if used is not None:
                    snap[name][pid] = used
        return snap

    @staticmethod
    def delta(
        before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]
    ) -> dict[str, float]:
        used: dict[str, float] = {}
        for name, pids in after.items():
            old = before.get(name, {})
            used[name] = sum(value - old.get(pid, 0.0) for pid, value in pids.items())
        return used


def open_meter(
    procs: dict[str, Child], servers: Servers, database_url: str, database: str
) -> tuple[CpuMeter, dict[str, Any]]:
    """A CpuMeter over the run's processes, its database's backends and the Redis server; and
    that server's INFO (its version and PID)."""
    client = redis.Redis.from_url(servers.redis_url, socket_timeout=5)
    try:
        info: dict[str, Any] = client.info("server")
    finally:
        client.close()
    pid = int(info.get("process_id", 0)) or None
    return CpuMeter(procs, database_url, database, pid), info


LoadRunner = Callable[[str, Sequence[load.Request], float], load.LoadResult]


def make_runner(args: argparse.Namespace, run_dir: Path) -> tuple[str, LoadRunner]:
    wrk = load.ensure_wrk() if args.load_tool in ("auto", "wrk") else None
    if args.load_tool == "wrk" and wrk is None:
        raise RuntimeError("wrk is not installed and could not be installed (apt-get install wrk)")
    if wrk is None:
        print("bench: using the Python load generator (wrk unavailable)", file=sys.stderr)

        def run_python(
            base: str, requests: Sequence[load.Request], seconds: float
        ) -> load.LoadResult:
            return load.run_python(base, requests, connections=args.connections, seconds=seconds)

        return "python-aiohttp", run_python
    scripts: dict[int, Path] = {}

    def run_wrk(base: str, requests: Sequence[load.Request], seconds: float) -> load.LoadResult:
        key = id(requests)
        if key not in scripts:
            scripts[key] = run_dir / f"rotate-{len(scripts)}.lua"
            load.write_lua(scripts[key], requests)
        return load.run_wrk(
            wrk, base, scripts[key], threads=args.threads, connections=args.connections,
            seconds=seconds,
        )  # fmt: skip

    return "wrk", run_wrk


def gateway_rate_limited(gateway_url: str) -> int:
    status, body = http_get(f"{gateway_url}/metrics")
    if status != 200:
        return -1
    match = re.search(
        rb'^gateway_rate_limit_decisions_total\{[^}]*limit="user"[^}]*outcome="limited"[^}]*\}'
        rb"\s+([\d.e+]+)",
        body,
        re.MULTILINE,
    )
    return int(float(match.group(1))) if match else 0


def dirty() -> bool:
    """Whether the services' code differs from the commit (others may be editing it)."""
    done = subprocess.run(
        ["git", "status", "--porcelain", "--", "services", "shared"], cwd=ROOT,
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return bool(done.stdout.strip())


def commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    return done.stdout.strip() or "unknown"


def run(args: argparse.Namespace) -> dict[str, Any]:
    run_id, run_dir = new_run("")
    children = Children()
    servers: Servers | None = None
    database: str | None = None
    redis_prefix = f"bench{secrets.token_hex(4)}:"
    meter: CpuMeter | None = None
    try:
        servers = connect_servers(run_dir)
        database = f"chat_bench_{secrets.token_hex(4)}"
        servers.create_database(database)
        database_url = servers.database_url(database)
        started = time.monotonic()
        migrate(database_url, run_dir / "migrate.log")
        dataset = seed(database_url, users=args.users, per_user=args.per_user)
        print(
            f"bench: database {database}: {len(dataset.user_ids):,} users, "
            f"{dataset.conversations:,} conversations ({time.monotonic() - started:.1f}s)",
            file=sys.stderr,
        )

        secret = secrets.token_urlsafe(48)
        env = service_env(servers, database_url, redis_prefix, secret)
        ports = {name: free_port() for name in ("chat", "analytics", "gateway", "bare")}
        env["GATEWAY_CHAT_URL"] = f"http://127.0.0.1:{ports['chat']}"
        env["GATEWAY_ANALYTICS_URL"] = f"http://127.0.0.1:{ports['analytics']}"
        procs: dict[str, Child] = {}
        for name in ("chat", "analytics", "gateway"):
            procs[name] = children.start(
                name,
                [sys.executable, "-m", f"services.{name}", "--port", str(ports[name])],
                log_path=run_dir / f"{name}.log", env=env, cwd=ROOT,
            )  # fmt: skip
        procs["bare"] = children.start(
            "bare",
            [sys.executable, "-m", "bench.bare_app", "--port", str(ports["bare"])],
            log_path=run_dir / "bare.log", env=env, cwd=ROOT,
        )  # fmt: skip
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        for name, child in procs.items():
            child.wait_http_ok(
                urls[name] + ("/healthz" if name == "bare" else "/readyz"), READY_SECONDS
            )
        print("bench: chat, analytics, gateway and bare app ready", file=sys.stderr)

        tokens = mint_tokens(secret, dataset.user_ids)
        check_same_answers(
            urls["bare"], urls["gateway"], dataset.user_ids[0], tokens[0], args.per_user
        )
        requests: dict[str, list[load.Request]] = {
            "gateway": [
                (f"/chat/conversations?{PAGE}", {"Authorization": f"Bearer {token}"})
                for token in tokens
            ],
            "bare": [(f"/conversations?user_id={uid}&{PAGE}", {}) for uid in dataset.user_ids],
        }
        tool, runner = make_runner(args, run_dir)

        meter, redis_info = open_meter(procs, servers, database_url, database)

        rounds: dict[str, list[dict[str, Any]]] = {"bare": [], "gateway": []}
        for index in range(args.rounds):
            order = ("bare", "gateway") if index % 2 == 0 else ("gateway", "bare")
            for path in order:
                print(f"bench: round {index + 1}: {path} (warm-up {args.warmup}s)", file=sys.stderr)
                quiet, busy = (
                    wait_for_quiet(args.quiet_threshold, args.quiet_wait)
                    if args.quiet_wait > 0
                    else (True, 0.0)
                )
                if not quiet:
                    print(
                        f"bench:   the machine is still {busy:.0%} busy with other work after "
                        f"{args.quiet_wait:.0f}s; measuring anyway",
                        file=sys.stderr,
                    )
                if args.warmup > 0:
                    runner(urls[path], requests[path], args.warmup)
                before, busy_before = meter.snapshot(), machine_cpu()
                result = runner(urls[path], requests[path], args.duration)
                after, busy_after = meter.snapshot(), machine_cpu()
                used = CpuMeter.delta(before, after)
                used["load generator"] = result.loadgen_cpu_seconds
                entry = result.as_dict()
                entry["cpu_ms_per_request"] = {
                    name: round(seconds * 1000 / max(1, result.requests), 3)
                    for name, seconds in sorted(used.items(), key=lambda kv: -kv[1])
                }
                entry["path_cpu_ms_per_request"] = round(
                    sum(
                        seconds * 1000 / max(1, result.requests)
                        for name, seconds in used.items()
                        if name in _PATH_PROCESSES[path]
                    ),
                    3,
                )
                entry["machine_busy"], entry["other_load"] = machine_shares(
                    busy_before, busy_after, sum(used.values())
                )
                entry["quiet_before"] = round(busy, 3)
                rounds[path].append(entry)
                print(
                    f"bench:   {result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, "
                    f"p99 {result.p99_ms:.2f} ms, non-2xx {result.non_2xx}, "
                    f"other load {entry['other_load']:.0%}",
                    file=sys.stderr,
                )

        def pick(entries: list[dict[str, Any]]) -> dict[str, Any]:
            ranked = sorted(entries, key=lambda e: e["rps"])
            if args.pick == "best":
                chosen = dict(ranked[-1])
            else:
                chosen = dict(ranked[(len(ranked) - 1) // 2])  # the lower middle of an even count
            chosen["rounds_rps"] = [round(e["rps"], 1) for e in entries]
            chosen["rps_median"] = statistics.median(e["rps"] for e in entries)
            return chosen

        paths = {path: pick(entries) for path, entries in rounds.items()}
        paths["bare"]["label"] = "bare FastAPI + asyncpg + orjson (1 process)"
        paths["gateway"]["label"] = "gateway -> chat (JWT, Redis rate limit, proxy)"
        paths["gateway"]["rate_limited"] = gateway_rate_limited(urls["gateway"])

        from services.gateway.settings import GatewaySettings

        defaults = GatewaySettings.model_fields
        with psycopg.connect(database_url) as conn:
            version_row = conn.execute("SHOW server_version").fetchone()
        result_doc: dict[str, Any] = {
            "run_id": run_id,
            "commit": commit(),
            "dirty": dirty(),
            "benchmark": "GET /chat/conversations through the gateway vs bare",
            "config": {
                "users": args.users,
                "per_user": args.per_user,
                "duration": args.duration,
                "warmup": args.warmup,
                "threads": args.threads,
                "connections": args.connections,
                "rounds": args.rounds,
                "pick": args.pick,
                "load_tool": tool,
                "rate_limit": (
                    f"{defaults['rate_limit_per_minute'].default}/min, "
                    f"burst {defaults['rate_limit_burst'].default}"
                ),
                "log_level": "INFO",
            },
            "dataset": {
                "conversations": dataset.conversations,
                "users": len(dataset.user_ids),
                "pinned": dataset.pinned,
                "archived": dataset.archived,
                "without_messages": dataset.without_messages,
            },
            "machine": report.machine(),
            "servers": {
                "postgres_version": version_row[0] if version_row else "?",
                "redis_version": redis_info.get("redis_version", "?"),
                "throwaway": servers.started,
            },
            "paths": paths,
            "rounds": rounds,
            "ratio": paths["gateway"]["rps"] / max(paths["bare"]["rps"], 1e-9),
            "target_ratio": TARGET_RATIO,
            # Contention-proof companion of `ratio`: on a CPU-bound machine the throughput of a
            # path is about (CPUs / its CPU time per request).
            "cpu_cost_ratio": paths["bare"]["path_cpu_ms_per_request"]
            / max(paths["gateway"]["path_cpu_ms_per_request"], 1e-9),
            "logs": str(run_dir),
        }
        result_doc["problems"] = [
            f"{path}: {run['non_2xx']} non-2xx responses in round {index}; its figures count them"
            for path, entries in rounds.items()
            for index, run in enumerate(entries, start=1)
            if run["non_2xx"]
        ] + [
            f"{path}: socket errors {run['socket_errors']} in round {index}"
            for path, entries in rounds.items()
            for index, run in enumerate(entries, start=1)
            if any(run["socket_errors"].values())
        ]
        if args.profile or args.profile_native:
            result_doc["profile"] = profile_gateway(
                args, runner, urls["gateway"], requests["gateway"], procs, run_dir
            )
        return result_doc
    finally:
        if meter is not None:
            meter.close()
        tear_down(
            servers,
            children=children,
            redis_prefixes=[redis_prefix],
            database=database,
            keep=args.keep,
        )


def profile_gateway(
    args: argparse.Namespace,
    runner: LoadRunner,
    gateway_url: str,
    requests: Sequence[load.Request],
    procs: dict[str, Child],
    run_dir: Path,
) -> dict[str, Any]:
    seconds = float(args.duration)
    summaries, loaded = pyspy.profile_during(
        {name: procs[name].pid for name in ("gateway", "chat")},
        run_dir,
        seconds,
        lambda: runner(gateway_url, requests, seconds + 2),
        native=args.profile_native,
    )
    print(f"bench:   under profiling: {loaded.rps:,.0f} req/s (not a measurement)", file=sys.stderr)
    return summaries


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["ai"]:
        from bench import ai

        return ai.main(argv[1:])
    if argv[:1] == ["floor"]:
        from bench import floor

        return floor.main(argv[1:])
    if argv[:1] == ["regen"]:
        from bench import regen

        return regen.main(argv[1:])
    if argv[:1] == ["export"]:
        from bench import export

        return export.main(argv[1:])
    if argv[:1] == ["analytics"]:
        from bench import analytics

        return analytics.main(argv[1:])
    args = parse_args(argv)
    return run_scenario(
        lambda: run(args),
        print_table=report.print_table,
        update_doc=None if args.no_doc else report.update_doc,
        doc=report.DOC,
    )


if __name__ == "__main__":
    sys.exit(main())
