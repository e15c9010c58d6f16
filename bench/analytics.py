"""`python -m bench analytics`: the analytics aggregator's throughput and lag, and the dashboard's
latency with 10,000 and with 1,000,000 messages stored (issue 4).

    python -m bench analytics [--events 200000] [--aggregators 1,2] [--throughput-rounds 2]
                              [--rate 1000] [--steady-seconds 30]
                              [--users 1000] [--small 10000] [--large 1000000]
                              [--requests 3000] [--concurrency 8] [--rounds 3] [--keep] [--no-doc]

1. **Throughput.** The stream is filled with `--events` valid events (bench/analytics_events.py:
   conversations with user and agent messages, AI replies, a few failures, agent changes and
   deletions, interleaved in time), then `python -m services.analytics.aggregator` processes
   (1, then 2) drain it. Sustained events/s = events / (drain finished - first batch started);
   the rollups are checked against the counts the events imply.
2. **End-to-end lag.** Events are written to `chat.outbox` at a steady `--rate` for
   `--steady-seconds` (each write a committed transaction, as the chat service's are) while the
   relay and one aggregator run. Lag = the aggregator's `analytics_event_lag_seconds` (from the
   event's `occurred_at`, its commit-time clock, to the commit of its rollups), p50/p99
   interpolated in the histogram's buckets; cross-checked exactly per event with
   `processed_events.applied_at - occurred_at` (to the start of the applying transaction).
3. **Dashboard.** 1,000 users with 10 conversations each (bench/dataset.py), `--small` messages,
   rollups built by `python -m services.analytics.rebuild` from the chat tables (the same rows
   the aggregator writes: the tests prove the two agree); `GET /chat/analytics/dashboard?tz=
   Europe/Paris` (30 days and the 30 before) through the gateway for random users, `--requests`
   requests at `--concurrency`, best of `--rounds` by p95. Then messages are added up to
   `--large`, the rollups rebuilt, and the same measured again.

Targets: at least 5,000 events/s; lag p99 under 1 s; dashboard p95 at 1M within 1.5x its p95 at
10k. Writes `bench/results/<run>-analytics.json` and its section of `docs/benchmarks.md`.
Everything it started is stopped (and its database dropped) on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import secrets
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import psycopg
import redis

from bench import analytics_report, load
from bench.__main__ import commit, dirty, mint_tokens, service_env
from bench.analytics_events import Plan, conversation_stream, generate
from bench.cli import new_run, run_scenario, tear_down
from bench.dataset import ROOT, migrate, seed
from bench.infra import Servers, connect_servers
from bench.procs import Child, Children, cpu_seconds, free_port, http_get, wait_for_quiet
from services.analytics.rollups import TABLES

RESULTS = ROOT / "bench" / "results"
READY_SECONDS = 90.0
DRAIN_SECONDS = 900.0
TARGET_EVENTS_PER_SECOND = 5000.0
TARGET_LAG_P99_SECONDS = 1.0
TARGET_DASHBOARD_RATIO = 1.5
AGENTS = (1, 2, 3)
DASHBOARD_QUERY = "tz=Europe/Paris"
_OVERRIDES = ("ANALYTICS_AGGREGATOR_", "CHAT_RELAY_")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench analytics", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--events", type=int, default=200_000, help="events to drain per round")
    parser.add_argument(
        "--aggregators", default="1,2", help="aggregator processes per throughput run (list)"
    )
    parser.add_argument("--throughput-rounds", type=int, default=2, help="runs per process count")
    parser.add_argument("--rate", type=int, default=1000, help="events/s written for the lag")
    parser.add_argument("--steady-seconds", type=int, default=30)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--small", type=int, default=10_000, help="messages, first dashboard run")
    parser.add_argument("--large", type=int, default=1_000_000, help="messages, second run")
    parser.add_argument("--requests", type=int, default=3000, help="dashboard requests per round")
    parser.add_argument("--warmup", type=int, default=300, help="dashboard warm-up requests")
    parser.add_argument("--concurrency", type=int, default=8, help="dashboard clients")
    parser.add_argument("--rounds", type=int, default=3, help="dashboard rounds per size")
    parser.add_argument(
        "--quiet-threshold", type=float, default=0.15,
        help="before each measurement, wait until other work keeps the machine at most this busy",
    )  # fmt: skip
    parser.add_argument(
        "--quiet-wait", type=float, default=120.0,
        help="seconds to wait for a quiet machine before measuring anyway (0: do not wait)",
    )  # fmt: skip
    parser.add_argument(
        "--skip", default="", help="phases to skip: throughput,lag,dashboard (comma-separated)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = parser.parse_args(argv)
    args.aggregator_counts = [int(n) for n in str(args.aggregators).split(",") if n.strip()]
    args.skipped = {name.strip() for name in str(args.skip).split(",") if name.strip()}
    if args.events < 1000 or args.rate < 1 or args.small < 1 or args.large < args.small:
        parser.error("--events >= 1000, --rate >= 1, 1 <= --small <= --large")
    if args.users < 1 or args.requests < 1 or args.rounds < 1 or not args.aggregator_counts:
        parser.error("counts must be positive")
    return args


def quiet(args: argparse.Namespace) -> float:
    """Waits (bounded) for the machine to be quiet; the busy share measured last."""
    if args.quiet_wait <= 0:
        return 0.0
    calm, busy = wait_for_quiet(args.quiet_threshold, args.quiet_wait)
    if not calm:
        print(
            f"bench:   the machine is still {busy:.0%} busy with other work after "
            f"{args.quiet_wait:.0f}s; measuring anyway",
            file=sys.stderr,
        )
    return busy


# --- the processes ------------------------------------------------------------------------


class Run:
    """The run's servers, database, processes and their environment."""

    def __init__(self, servers: Servers, database_url: str, run_dir: Path, prefix: str) -> None:
        self.servers = servers
        self.database_url = database_url
        self.run_dir = run_dir
        self.prefix = prefix
        self.secret = secrets.token_urlsafe(48)
        env = service_env(servers, database_url, prefix, self.secret)
        self.env = {k: v for k, v in env.items() if not k.startswith(_OVERRIDES)}
        self.children = Children()
        self.redis = redis.Redis.from_url(servers.redis_url, socket_timeout=30)
        self.stream = f"{prefix}chat.events"
        self._started = 0

    def start(self, name: str, module: str, **env: str) -> tuple[Child, dict[str, str]]:
        self._started += 1
        label = f"{name}-{self._started}"
        full = {**self.env, **env}
        child = self.children.start(
            label, [sys.executable, "-m", module], log_path=self.run_dir / f"{label}.log",
            env=full, cwd=ROOT,
        )  # fmt: skip
        return child, full

    def start_metrics_process(self, name: str, module: str, port_env: str) -> tuple[Child, str]:
        port = free_port()
        child, _ = self.start(name, module, **{port_env: str(port)})
        url = f"http://127.0.0.1:{port}"
        child.wait_http_ok(url + "/metrics", READY_SECONDS)
        return child, url

    def stop(self, child: Child) -> None:
        child.stop()

    def db(self) -> psycopg.Connection[Any]:
        """A connection; retried for a while when a shared server is out of connections."""
        deadline = time.monotonic() + 60
        while True:
            try:
                return psycopg.connect(self.database_url, autocommit=True)
            except psycopg.OperationalError as exc:
                if "too many clients" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)  # a retry interval

    def reset_analytics(self) -> None:
        """Empty rollups and no stream: each measurement starts from the same state."""
        names = ", ".join(f"analytics.{t.name}" for t in TABLES if t.name != "totals")
        with self.db() as conn:
            conn.execute(f"TRUNCATE analytics.processed_events, analytics.conversations, {names}")
            conn.execute("DELETE FROM analytics.totals")
            conn.execute("INSERT INTO analytics.totals (id) VALUES (1)")
            conn.execute("TRUNCATE chat.outbox")
        self.redis.delete(self.stream, f"{self.stream}:relay-marker", f"{self.stream}.dead")


def group_drained(client: redis.Redis, stream: str) -> bool:
    """The analytics group has read every entry and acknowledged them all."""
    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError:
        return False
    for group in groups:
        name = group["name"].decode() if isinstance(group["name"], bytes) else group["name"]
        if name == "analytics":
            return int(group["pending"]) == 0 and group.get("lag") == 0
    return False


def wait_drained(run: Run, what: str, *, outbox: bool = False) -> None:
    deadline = time.monotonic() + DRAIN_SECONDS
    while True:
        if group_drained(run.redis, run.stream):
            if not outbox:
                return
            with run.db() as conn:
                row = conn.execute(
                    "SELECT count(*) FROM chat.outbox WHERE published_at IS NULL"
                ).fetchone()
            if row is not None and row[0] == 0 and group_drained(run.redis, run.stream):
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not drained after {DRAIN_SECONDS:.0f}s")
        time.sleep(0.02)  # a polling interval; the condition above is what is waited on


def backend_pids(run: Run, application: str) -> list[int]:
    with run.db() as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (application,)
        ).fetchall()
    return [int(row[0]) for row in rows]


# --- 1. throughput ------------------------------------------------------------------------


def expected_totals(events: Sequence[bytes]) -> tuple[int, int]:
    """(conversations, messages) the events leave once applied: deleted ones excluded."""
    deleted: set[int] = set()
    conversations: set[int] = set()
    messages: dict[int, int] = {}
    for raw in events:
        event = orjson.loads(raw)
        cid = event["data"]["conversation_id"]
        if event["type"] == "conversation.deleted":
            deleted.add(cid)
        elif event["type"] == "conversation.created":
            conversations.add(cid)
        elif event["type"] == "message.created":
            messages[cid] = messages.get(cid, 0) + 1
    live = conversations - deleted
    return len(live), sum(n for cid, n in messages.items() if cid in live)


def throughput_round(
    run: Run, args: argparse.Namespace, processes: int, seed_: int
) -> dict[str, Any]:
    run.reset_analytics()
    conversations = max(1, round(args.events / 12.9))
    events = generate(
        Plan(users=args.users, conversations=conversations, messages=8, agents=AGENTS, seed=seed_)
    )
    for start in range(0, len(events), 5000):
        pipe = run.redis.pipeline(transaction=False)
        for raw in events[start : start + 5000]:
            pipe.xadd(run.stream, {"event": raw})
        pipe.execute()
    busy = quiet(args)
    children = [
        run.start_metrics_process(
            "aggregator", "services.analytics.aggregator", "ANALYTICS_AGGREGATOR_METRICS_PORT"
        )[0]
        for _ in range(processes)
    ]
    wait_drained(run, "throughput")
    with run.db() as conn:
        row = conn.execute(
            "SELECT count(*), min(applied_at), clock_timestamp() FROM analytics.processed_events"
        ).fetchone()
        totals = conn.execute(
            "SELECT conversations, messages FROM analytics.totals WHERE id = 1"
        ).fetchone()
    assert row is not None and totals is not None
    applied, first, finished = int(row[0]), row[1], row[2]
    cpu = {
        "aggregator": sum(cpu_seconds(child.pid) or 0.0 for child in children),
        "postgres": sum(
            cpu_seconds(pid) or 0.0 for pid in backend_pids(run, "analytics-aggregator")
        ),
    }
    for child in children:
        run.stop(child)
    seconds = (finished - first).total_seconds()
    want = expected_totals(events)
    entry = {
        "processes": processes,
        "events": len(events),
        "applied": applied,
        "seconds": round(seconds, 3),
        "events_per_second": round(applied / seconds, 1) if seconds > 0 else 0.0,
        "cpu_us_per_event": {k: round(v * 1e6 / max(1, applied), 1) for k, v in cpu.items()},
        "totals_ok": (int(totals[0]), int(totals[1])) == want,
        "quiet_before": round(busy, 3),
    }
    print(
        f"bench:   {processes} aggregator(s): {entry['events_per_second']:,.0f} events/s "
        f"({applied:,} events in {seconds:.1f}s), totals {'ok' if entry['totals_ok'] else 'WRONG'}",
        file=sys.stderr,
    )
    return entry


# --- 2. lag -------------------------------------------------------------------------------


def write_steady(run: Run, rate: int, seconds: float, stop: threading.Event) -> dict[str, Any]:
    """Commits `rate` outbox events per second (every 10 ms a transaction with the ones due),
    from 500 conversations in progress at once."""
    plan = Plan(
        users=1000, conversations=10**7, messages=8, agents=AGENTS, seed=99,
        first_conversation_id=50_000_000,
    )  # fmt: skip
    source = conversation_stream(plan)
    pending: list[tuple[str, int, dict[str, Any]]] = []
    written = 0
    lag_behind = 0.0
    with run.db() as conn:
        started = time.perf_counter()
        while not stop.is_set():
            elapsed = time.perf_counter() - started
            if elapsed >= seconds:
                break
            due = int(elapsed * rate) - written
            if due > 0:
                rows: list[tuple[str, int, dict[str, Any]]] = []
                while len(rows) < due:
                    if len(pending) < 500:
                        pending.append(next(source))
                        continue
                    rows.append(pending.pop(random.randrange(len(pending))))
                conn.execute(
                    "INSERT INTO chat.outbox (type, user_id, data) "
                    "SELECT * FROM unnest(%s::text[], %s::int[], %s::jsonb[])",
                    (
                        [r[0] for r in rows],
                        [r[1] for r in rows],
                        [orjson.dumps(r[2], option=orjson.OPT_UTC_Z).decode() for r in rows],
                    ),
                )
                written += len(rows)
            behind = elapsed - written / rate
            lag_behind = max(lag_behind, behind)
            stop.wait(0.01)
        total = time.perf_counter() - started
    return {"written": written, "seconds": round(total, 3), "rate": round(written / total, 1)}


_BUCKET = re.compile(rb'^analytics_event_lag_seconds_bucket\{le="([^"]+)"\} ([0-9.e+]+)$', re.M)


def lag_histogram(metrics_url: str) -> list[tuple[float, float]]:
    status, body = http_get(metrics_url + "/metrics", timeout=10)
    if status != 200:
        raise RuntimeError(f"aggregator metrics: HTTP {status}")
    return [(float(le), float(count)) for le, count in _BUCKET.findall(body)]


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Prometheus' histogram_quantile: linear within the bucket holding the q-th observation."""
    total = buckets[-1][1]
    if total <= 0:
        return 0.0
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= rank:
            if bound == float("inf"):
                return lower
            inside = cumulative - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, cumulative
    return lower


def bucket_bound(buckets: list[tuple[float, float]], q: float) -> float:
    """The upper bound of the bucket holding the q-th observation (the quantile is below it)."""
    rank = q * buckets[-1][1]
    return next(bound for bound, cumulative in buckets if cumulative >= rank)


def lag_phase(run: Run, args: argparse.Namespace) -> dict[str, Any]:
    run.reset_analytics()
    relay, _ = run.start_metrics_process("relay", "services.chat.relay", "CHAT_RELAY_METRICS_PORT")
    aggregator, url = run.start_metrics_process(
        "aggregator", "services.analytics.aggregator", "ANALYTICS_AGGREGATOR_METRICS_PORT"
    )
    busy = quiet(args)
    before = lag_histogram(url)
    stop = threading.Event()
    try:
        written = write_steady(run, args.rate, args.steady_seconds, stop)
    finally:
        stop.set()
    wait_drained(run, "lag", outbox=True)
    after = lag_histogram(url)
    buckets = [(b, c - c0) for (b, c), (_, c0) in zip(after, before, strict=True)]
    with run.db() as conn:
        exact = conn.execute(
            """
            SELECT count(*),
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY applied_at - occurred_at),
                   percentile_cont(0.99) WITHIN GROUP (ORDER BY applied_at - occurred_at),
                   max(applied_at - occurred_at)
            FROM analytics.processed_events
            """
        ).fetchone()
    assert exact is not None
    run.stop(aggregator)
    run.stop(relay)
    entry = {
        **written,
        "events_observed": int(buckets[-1][1]),
        "p50_seconds": round(histogram_quantile(buckets, 0.50), 4),
        "p99_seconds": round(histogram_quantile(buckets, 0.99), 4),
        "p99_bucket_bound": bucket_bound(buckets, 0.99),
        "to_batch_start": {
            "events": int(exact[0]),
            "p50_seconds": round(exact[1].total_seconds(), 4),
            "p99_seconds": round(exact[2].total_seconds(), 4),
            "max_seconds": round(exact[3].total_seconds(), 4),
        },
        "buckets": buckets,
        "quiet_before": round(busy, 3),
    }
    print(
        f"bench:   {entry['rate']:,.0f} events/s written: lag p50 "
        f"{entry['p50_seconds'] * 1000:.0f} ms, p99 {entry['p99_seconds'] * 1000:.0f} ms "
        f"(<= {entry['p99_bucket_bound']} s)",
        file=sys.stderr,
    )
    return entry


# --- 3. dashboard -------------------------------------------------------------------------

_MESSAGES = """
INSERT INTO chat.messages (conversation_id, content, sender, created_at, updated_at)
SELECT c.id, 'hello', CASE WHEN g %% 2 = 0 THEN 'user' ELSE 'agent' END, t.at, t.at
FROM chat.conversations c
CROSS JOIN generate_series(%(first)s::int, %(last)s::int) AS g
CROSS JOIN LATERAL (
    SELECT c.created_at + random() * (now() - c.created_at) + g * interval '0 s' AS at
) t
"""
_JOBS = """
INSERT INTO chat.ai_jobs (conversation_id, user_id, agent_id, model, status, processing_time,
                          deadline_at, created_at, finished_at)
SELECT c.id, c.user_id, c.agent_id, 'default',
       CASE WHEN random() < 0.05 THEN 'failed' ELSE 'completed' END,
       0.2 + random() * 3, now(), c.created_at, c.created_at
FROM chat.conversations c CROSS JOIN generate_series(1, %(jobs)s::int)
"""


def add_messages(run: Run, conversations: int, per_conversation_from: int, to: int) -> None:
    """Messages numbered `per_conversation_from`..`to` in every conversation (every other one
    an agent's), at random times between the conversation's creation and now; and one AI job
    per 20 messages."""
    with run.db() as conn:
        conn.execute("SELECT setseed(0.24)")
        conn.execute(_MESSAGES, {"first": per_conversation_from, "last": to})
        jobs = max(1, (to - per_conversation_from + 1) // 20)
        conn.execute(_JOBS, {"jobs": jobs})
        conn.execute("VACUUM (ANALYZE) chat.messages")
        conn.execute("VACUUM (ANALYZE) chat.ai_jobs")


def rollup_sizes(run: Run) -> dict[str, int]:
    with run.db() as conn:
        return {
            t.name: int(conn.execute(f"SELECT count(*) FROM analytics.{t.name}").fetchone()[0])  # type: ignore[index]
            for t in TABLES
            if t.name in ("user_activity", "user_agent_activity", "conversation_buckets")
        }


async def _dashboard_load(
    base: str, requests: Sequence[tuple[str, dict[str, str]]], count: int, concurrency: int
) -> tuple[list[float], int, float]:
    import aiohttp

    latencies: list[float] = []
    failures = 0
    remaining = count
    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            nonlocal remaining, failures
            while remaining > 0:
                remaining -= 1
                path, headers = requests[random.randrange(len(requests))]
                sent = time.perf_counter()
                async with session.get(base + path, headers=headers) as response:
                    await response.read()
                    status = response.status
                if status != 200:
                    failures += 1
                    continue
                latencies.append((time.perf_counter() - sent) * 1000)

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, failures, time.perf_counter() - started


def dashboard_round(
    gateway: str, requests: Sequence[tuple[str, dict[str, str]]], args: argparse.Namespace
) -> dict[str, Any]:
    asyncio.run(_dashboard_load(gateway, requests, args.warmup, args.concurrency))
    busy = quiet(args)
    cpu_before = time.process_time()
    latencies, failures, seconds = asyncio.run(
        _dashboard_load(gateway, requests, args.requests, args.concurrency)
    )
    ordered = sorted(latencies)
    return {
        "requests": len(ordered),
        "non_200": failures,
        "rps": round(len(ordered) / seconds, 1),
        "p50_ms": round(load._percentile(ordered, 0.50), 2),
        "p95_ms": round(load._percentile(ordered, 0.95), 2),
        "p99_ms": round(load._percentile(ordered, 0.99), 2),
        "max_ms": round(ordered[-1], 2) if ordered else 0.0,
        "loadgen_cpu_seconds": round(time.process_time() - cpu_before, 2),
        "quiet_before": round(busy, 3),
    }


def dashboard_phase(run: Run, args: argparse.Namespace) -> dict[str, Any]:
    from services.analytics.rebuild import rebuild

    run.reset_analytics()
    per_user = 10
    dataset = seed(run.database_url, users=args.users, per_user=per_user)
    conversations = dataset.conversations
    ports = {name: free_port() for name in ("chat", "analytics", "gateway")}
    env = {
        "GATEWAY_CHAT_URL": f"http://127.0.0.1:{ports['chat']}",
        "GATEWAY_ANALYTICS_URL": f"http://127.0.0.1:{ports['analytics']}",
        "ANALYTICS_CHAT_URL": f"http://127.0.0.1:{ports['chat']}",
    }
    for name in ("chat", "analytics", "gateway"):
        child, _ = run.start(
            name, f"services.{name}", **env, **{f"{name.upper()}_PORT": str(ports[name])}
        )
        child.wait_http_ok(f"http://127.0.0.1:{ports[name]}/readyz", READY_SECONDS)
    gateway = f"http://127.0.0.1:{ports['gateway']}"
    tokens = mint_tokens(run.secret, dataset.user_ids)
    requests = [
        (f"/chat/analytics/dashboard?{DASHBOARD_QUERY}", {"Authorization": f"Bearer {token}"})
        for token in tokens
    ]
    sizes: dict[str, Any] = {}
    done = 0
    for label, messages in (("small", args.small), ("large", args.large)):
        per_conversation = max(1, messages // conversations)
        started = time.perf_counter()
        add_messages(run, conversations, done + 1, per_conversation)
        done = per_conversation
        seeded = time.perf_counter() - started
        report = rebuild(run.database_url, limit=1)
        with run.db() as conn:
            stored = conn.execute("SELECT count(*) FROM chat.messages").fetchone()
        status, body = http_get(f"{gateway}{requests[0][0]}", requests[0][1], timeout=30)
        if status != 200:
            raise RuntimeError(f"dashboard pre-check: HTTP {status}: {body[:300]!r}")
        rounds = []
        for index in range(args.rounds):
            print(f"bench: dashboard, {label} ({stored[0] if stored else 0:,} messages), "
                  f"round {index + 1}", file=sys.stderr)  # fmt: skip
            entry = dashboard_round(gateway, requests, args)
            rounds.append(entry)
            print(
                f"bench:   {entry['rps']:,.0f} req/s, p50 {entry['p50_ms']:.2f} ms, "
                f"p95 {entry['p95_ms']:.2f} ms, p99 {entry['p99_ms']:.2f} ms",
                file=sys.stderr,
            )
        best = dict(min(rounds, key=lambda e: e["p95_ms"]))
        best["rounds_p95_ms"] = [e["p95_ms"] for e in rounds]
        best["p95_median_ms"] = statistics.median(e["p95_ms"] for e in rounds)
        sizes[label] = {
            "messages": int(stored[0]) if stored else 0,
            "seed_seconds": round(seeded, 1),
            "rebuild_seconds": round(report.seconds, 1),
            "rollup_rows": rollup_sizes(run),
            "best": best,
            "rounds": rounds,
        }
    ratio = sizes["large"]["best"]["p95_ms"] / max(0.001, sizes["small"]["best"]["p95_ms"])
    return {
        "users": args.users,
        "conversations": conversations,
        "query": DASHBOARD_QUERY,
        "sizes": sizes,
        "p95_ratio": round(ratio, 3),
    }


# --- the run ------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    run_id, run_dir = new_run("analytics")
    servers: Servers | None = None
    database: str | None = None
    state: Run | None = None
    token = secrets.token_hex(4)
    prefix = f"benchan{token}:"
    try:
        servers = connect_servers(run_dir)
        database = f"chat_bench_{token}"
        servers.create_database(database)
        database_url = servers.database_url(database)
        migrate(database_url, run_dir / "migrate.log")
        state = Run(servers, database_url, run_dir, prefix)
        result: dict[str, Any] = {
            "run_id": run_id,
            "commit": commit(),
            "dirty": dirty(),
            "benchmark": "analytics",
            "config": {k: v for k, v in vars(args).items() if k not in ("skipped",)},
            "problems": [],
        }
        if "throughput" not in args.skipped:
            throughput: dict[str, Any] = {}
            for processes in args.aggregator_counts:
                print(f"bench: throughput, {processes} aggregator(s)", file=sys.stderr)
                rounds = [
                    throughput_round(state, args, processes, seed_=1000 * processes + index)
                    for index in range(args.throughput_rounds)
                ]
                best = dict(max(rounds, key=lambda e: e["events_per_second"]))
                best["rounds_events_per_second"] = [e["events_per_second"] for e in rounds]
                throughput[str(processes)] = best
                if not all(e["totals_ok"] for e in rounds):
                    result["problems"].append(f"throughput ({processes}): wrong totals")
            result["throughput"] = throughput
        if "lag" not in args.skipped:
            print(f"bench: end-to-end lag at {args.rate:,} events/s", file=sys.stderr)
            result["lag"] = lag_phase(state, args)
        if "dashboard" not in args.skipped:
            result["dashboard"] = dashboard_phase(state, args)
            for size in result["dashboard"]["sizes"].values():
                if size["best"]["non_200"]:
                    result["problems"].append("dashboard: non-200 answers")
        with state.db() as conn:
            version = conn.execute("SHOW server_version").fetchone()
        result["postgres"] = version[0] if version else ""
        result["redis"] = str(state.redis.info("server").get("redis_version", ""))
        from bench.report import machine

        result["machine"] = machine()
        return result
    finally:
        if state is not None:
            state.children.stop_all()
            state.redis.close()
        tear_down(servers, redis_prefixes=[prefix], database=database, keep=args.keep)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_scenario(
        lambda: run(args),
        print_table=analytics_report.print_table,
        update_doc=None if args.no_doc else analytics_report.update_doc,
        doc=analytics_report.DOC,
    )
