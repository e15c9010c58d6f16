"""`python -m bench ai`: the AI reply pipeline's own overhead (issue 3, target (a)).

    python -m bench ai [--users 200] [--requests 300] [--warmup 30] [--concurrency 8]
                       [--concurrent-requests 600] [--baseline-requests 300] [--rounds 3]
                       [--pick best|median] [--profile] [--keep] [--no-doc]

With a stand-in LLM that answers at once (`tests/support/llm_stub.py`), `POST
/chat/conversations/{id}/ai-response` (`include_context: true`) through the gateway: gateway ->
chat (job row, Celery task on Redis) -> ai_worker (job, history, the `openai` SDK -> stub, the
reply stored, a Redis notification) -> chat -> gateway. Measured sequentially (one client) and at a
small concurrency, next to a bare Celery `.delay().get()` round trip (`bench/celery_noop.py`, a
no-op task on a threads-pool worker, results on Redis) on the same Redis in the same run.
Target: the pipeline's p50 within 3x the bare round trip's. Prints a table, writes
`bench/results/<run>-ai.json` and rewrites its own section of `docs/benchmarks.md`.
Everything it started is stopped (and its database dropped) on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import secrets
import statistics
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson
import psycopg

from bench import ai_report, load, pyspy, report
from bench.__main__ import (
    CpuMeter,
    commit,
    dirty,
    gateway_rate_limited,
    mint_tokens,
    open_meter,
)
from bench.celery_noop import TASK as NOOP_TASK
from bench.celery_noop import make_app as make_noop_app
from bench.cli import new_run, run_scenario, tear_down
from bench.dataset import ROOT, migrate, seed
from bench.infra import Servers, connect_servers
from bench.procs import (
    Child,
    Children,
    http_get,
    http_post,
    machine_cpu,
    machine_shares,
    wait_for_quiet,
)
from bench.stack import READY_SECONDS, start_ai_stack

RESULTS = ROOT / "bench" / "results"
TARGET_FACTOR = 3.0
REQUEST_TIMEOUT = 30.0
NOOP_CONCURRENCY = 8
QUESTION = "What should I pack for three days of hiking in the Alps in late September?"
# The processes whose CPU time one request of each phase costs (the load generator aside).
_PHASE_PROCESSES = {
    "baseline": frozenset({"celery_noop", "redis"}),
    "sequential": frozenset({"gateway", "chat", "ai_worker", "stub", "postgres", "redis"}),
    "concurrent": frozenset({"gateway", "chat", "ai_worker", "stub", "postgres", "redis"}),
    # `python -m bench floor`'s phases (bench/floor.py)
    "floor": frozenset({"front", "back", "floor_worker", "stub", "redis"}),
    "floor_db": frozenset({"front", "back", "floor_worker", "stub", "postgres", "redis"}),
    "floor_db_tx": frozenset({"front", "back", "floor_worker", "stub", "postgres", "redis"}),
}
PHASES = ("baseline", "sequential", "concurrent")
# Environment prefixes that would override the services' production defaults.
_OVERRIDES = ("GATEWAY_", "CHAT_", "ANALYTICS_", "JWT_", "ADMIN_", "AI_WORKER_", "LLM_")

T = TypeVar("T")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench ai", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--users", type=int, default=200, help="users, each with its own chats")
    parser.add_argument("--requests", type=int, default=300, help="sequential requests per round")
    parser.add_argument("--warmup", type=int, default=30, help="warm-up requests per phase")
    parser.add_argument("--concurrency", type=int, default=8, help="clients of the second phase")
    parser.add_argument(
        "--concurrent-requests", type=int, default=600, help="requests per concurrent round"
    )
    parser.add_argument(
        "--baseline-requests", type=int, default=300, help="bare Celery round trips per round"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="measured rounds, alternating the phases' order"
    )
    parser.add_argument(
        "--pick", choices=("best", "median"), default="best",
        help="which round stands for a phase: best (lowest p50: other work on the machine only "
        "ever slows a run down) or median",
    )  # fmt: skip
    parser.add_argument(
        "--profile", action="store_true",
        help="after the rounds, py-spy gateway, chat and ai_worker under sequential load",
    )  # fmt: skip
    parser.add_argument("--profile-seconds", type=float, default=20.0)
    parser.add_argument("--profile-native", action="store_true", help="py-spy --native frames")
    parser.add_argument(
        "--quiet-threshold", type=float, default=0.15,
        help="before each phase, wait until other work keeps the machine at most this busy",
    )  # fmt: skip
    parser.add_argument(
        "--quiet-wait", type=float, default=180.0,
        help="seconds to wait for a quiet machine before measuring anyway (0: do not wait)",
    )  # fmt: skip
    parser.add_argument(
        "--idle-seconds", type=float, default=5.0,
        help="seconds over which each process's CPU use without load is measured (0: skip)",
    )  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = parser.parse_args(argv)
    positive = ("users", "requests", "concurrency", "concurrent_requests", "baseline_requests")
    if any(getattr(args, name) < 1 for name in positive) or args.rounds < 1 or args.warmup < 0:
        parser.error("counts must be positive (--warmup may be 0)")
    return args


# --- load: POSTs from an async loop (aiohttp on uvloop) ------------------------------------------


@dataclass(frozen=True)
class Post:
    path: str
    headers: dict[str, str]
    body: bytes
    message: str


@dataclass(frozen=True)
class Sample:
    message: str
    sent_at: float  # wall clock (comparable with Postgres' and the stub's timestamps)
    done_at: float
    latency_ms: float
    status: int
    job_id: int | None


def posts(
    conversations: Sequence[Sequence[int]], tokens: Sequence[str], slot: int, label: str
) -> Iterator[Post]:
    """Endless requests rotating through the users, each to that user's conversation `slot`
    (so consecutive requests, and the concurrent ones, are different users and conversations)."""
    for index in itertools.count():
        user = index % len(tokens)
        message = f"{QUESTION} ({label} #{index})"
        yield Post(
            f"/chat/conversations/{conversations[user][slot]}/ai-response",
            {"Authorization": f"Bearer {tokens[user]}", "Content-Type": "application/json"},
            orjson.dumps({"message": message, "include_context": True}),
            message,
        )


def _job_id(body: bytes) -> int | None:
    try:
        value = orjson.loads(body)["data"]["job_id"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return int(value) if isinstance(value, int) else None


async def _post_load(
    base_url: str,
    requests: Iterator[Post],
    *,
    concurrency: int,
    count: int | None,
    seconds: float | None,
) -> tuple[list[Sample], float, int]:
    import aiohttp

    samples: list[Sample] = []
    errors = 0
    remaining = count
    started = time.perf_counter()
    end = started + seconds if seconds is not None else float("inf")
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client() -> None:
            nonlocal errors, remaining
            while time.perf_counter() < end:
                if remaining is not None:
                    if remaining <= 0:
                        return
                    remaining -= 1
                post = next(requests)
                sent_at = time.time()
                sent = time.perf_counter()
                try:
                    async with session.post(
                        base_url + post.path, data=post.body, headers=post.headers
                    ) as response:
                        body = await response.read()
                        status = response.status
                except (aiohttp.ClientError, TimeoutError):
                    errors += 1
                    continue
                latency_ms = (time.perf_counter() - sent) * 1000
                samples.append(
                    Sample(
                        post.message, sent_at, time.time(), latency_ms, status,
                        _job_id(body) if 200 <= status < 300 else None,
                    )
                )  # fmt: skip

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return samples, time.perf_counter() - started, errors


def _run_async(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def _result(
    tool: str, latencies: list[float], elapsed: float, non_2xx: int, errors: int, cpu: float
) -> load.LoadResult:
    latencies = sorted(latencies)
    return load.LoadResult(
        tool=tool,
        requests=len(latencies),
        seconds=elapsed,
        rps=len(latencies) / elapsed if elapsed else 0.0,
        p50_ms=load._percentile(latencies, 0.50),
        p75_ms=load._percentile(latencies, 0.75),
        p90_ms=load._percentile(latencies, 0.90),
        p99_ms=load._percentile(latencies, 0.99),
        max_ms=latencies[-1] if latencies else 0.0,
        non_2xx=non_2xx,
        socket_errors={"client": errors},
        loadgen_cpu_seconds=cpu,
    )


def post_load(
    base_url: str,
    requests: Iterator[Post],
    *,
    concurrency: int,
    count: int | None = None,
    seconds: float | None = None,
) -> tuple[load.LoadResult, list[Sample]]:
    cpu_before = time.process_time()
    samples, elapsed, errors = _run_async(
        _post_load(base_url, requests, concurrency=concurrency, count=count, seconds=seconds)
    )
    non_2xx = sum(1 for s in samples if not 200 <= s.status < 300)
    result = _result(
        "python-aiohttp", [s.latency_ms for s in samples], elapsed, non_2xx, errors,
        time.process_time() - cpu_before,
    )  # fmt: skip
    return result, samples


def celery_round_trips(task: Any, count: int) -> load.LoadResult:
    """`count` sequential `task.delay(i).get()` round trips."""
    cpu_before = time.process_time()
    latencies: list[float] = []
    started = time.perf_counter()
    for index in range(count):
        sent = time.perf_counter()
        value = task.delay(index).get(timeout=REQUEST_TIMEOUT)
        latencies.append((time.perf_counter() - sent) * 1000)
        if value != index:
            raise RuntimeError(f"the no-op task answered {value!r} to {index}")
    elapsed = time.perf_counter() - started
    return _result(
        "celery .delay().get()", latencies, elapsed, 0, 0, time.process_time() - cpu_before
    )


# --- the run ------------------------------------------------------------------------------


def start_noop_worker(
    children: Children, env: dict[str, str], redis_url: str, prefix: str, run_dir: Path
) -> Child:
    """The baseline's worker: `bench/celery_noop.py` with the AI worker's pool and flags."""
    return children.start(
        "celery_noop",
        [sys.executable, "-m", "celery", "-A", "bench.celery_noop", "worker",
         "--pool", "threads", "--concurrency", str(NOOP_CONCURRENCY), "--loglevel", "INFO",
         "--without-gossip", "--without-mingle", "--without-heartbeat"],
        log_path=run_dir / "celery_noop.log",
        env={**env, "BENCH_CELERY_REDIS_URL": redis_url, "BENCH_CELERY_PREFIX": prefix},
        cwd=ROOT,
    )  # fmt: skip


def noop_ready(app: Any) -> Any:
    """The no-op task, once one round trip through its worker came back right."""
    task = app.tasks[NOOP_TASK]
    if task.delay(-1).get(timeout=READY_SECONDS) != -1:
        raise RuntimeError("the no-op Celery task answered something else")
    return task


def check_reply(gateway_url: str, post: Post) -> dict[str, Any]:
    """One request end to end (the first also waits for the worker to start consuming): the
    answer must have the seed's shape with a non-empty reply and token counts."""
    status, body = http_post(gateway_url + post.path, post.body, post.headers, READY_SECONDS)
    if status != 200:
        raise RuntimeError(f"pre-check: ai-response answered {status}: {body[:500]!r}")
    data = orjson.loads(body)["data"]
    missing = {
        "message_id", "ai_response", "tokens_used", "processing_time", "cost", "created_at"
    } - set(data)  # fmt: skip
    if missing or not data["ai_response"] or not data["tokens_used"]:
        raise RuntimeError(f"pre-check: unexpected reply (missing {sorted(missing)}): {data}")
    return dict(data)


def _conversations(database_url: str) -> tuple[list[int], list[list[int]]]:
    """Users in id order and each one's conversation ids (the slots), oldest id first."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT user_id, array_agg(id ORDER BY id) FROM chat.conversations "
            "GROUP BY user_id ORDER BY user_id"
        ).fetchall()
    return [int(r[0]) for r in rows], [list(r[1]) for r in rows]


def measure(
    meter: CpuMeter, phase: str, quiet_threshold: float, quiet_wait: float,
    work: Callable[[], load.LoadResult],
) -> dict[str, Any]:  # fmt: skip
    """Runs `work` once the machine is quiet, with the CPU each process used meanwhile."""
    quiet, busy = wait_for_quiet(quiet_threshold, quiet_wait) if quiet_wait > 0 else (True, 0.0)
    if not quiet:
        print(
            f"bench:   the machine is still {busy:.0%} busy with other work after "
            f"{quiet_wait:.0f}s; measuring anyway",
            file=sys.stderr,
        )
    before, busy_before = meter.snapshot(), machine_cpu()
    result = work()
    after, busy_after = meter.snapshot(), machine_cpu()
    used = CpuMeter.delta(before, after)
    used["load generator"] = result.loadgen_cpu_seconds
    entry: dict[str, Any] = result.as_dict()
    per_request = max(1, result.requests)
    entry["cpu_ms_per_request"] = {
        name: round(seconds * 1000 / per_request, 3)
        for name, seconds in sorted(used.items(), key=lambda kv: -kv[1])
    }
    entry["path_cpu_ms_per_request"] = round(
        sum(s for n, s in used.items() if n in _PHASE_PROCESSES[phase]) * 1000 / per_request, 3
    )
    entry["machine_busy"], entry["other_load"] = machine_shares(
        busy_before, busy_after, sum(used.values())
    )
    entry["quiet_before"] = round(busy, 3)
    print(
        f"bench:   {result.rps:,.1f} req/s, p50 {result.p50_ms:.2f} ms, p99 "
        f"{result.p99_ms:.2f} ms, non-2xx {result.non_2xx}, other load {entry['other_load']:.0%}",
        file=sys.stderr,
    )
    return entry


def idle_cpu(meter: CpuMeter, seconds: float) -> dict[str, float]:
    """CPU milliseconds per second each process uses with no load at all (background loops,
    pollers), to judge the per-request figures by."""
    before = meter.snapshot()
    started = time.perf_counter()
    threading.Event().wait(seconds)  # the sampling window itself
    used = CpuMeter.delta(before, meter.snapshot())
    elapsed = time.perf_counter() - started
    return {
        name: round(value * 1000 / elapsed, 2)
        for name, value in sorted(used.items(), key=lambda kv: -kv[1])
    }


def _last_user_text(messages: Any) -> str:
    for message in reversed(messages or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else ""
    return ""


_SEGMENTS = (
    ("to_job", "client -> chat's job transaction begins (gateway: JWT, rate limit, proxy; "
     "chat: auth, dependencies, connection)"),
    ("to_worker", "job transaction -> worker starts the job (chat: the job's statements, "
     "commit, send_task on a thread; broker; worker: pick-up, pool checkout)"),
    ("to_llm", "worker start -> LLM request arrives (the start statement with the agent and "
     "history, its commit, prompt, openai SDK request)"),
    ("llm", "stand-in LLM from request to its last byte sent (HTTP handling, validation, "
     "recording, streaming)"),
    ("to_store", "LLM done -> store statement begins (reading the answer's chunks, per-token "
     "work such as the job's event stream, pricing, pool checkout)"),
    ("to_client", "store statement -> client has the reply (the reply's writes, commit, the "
     "stream's end and the notification with the reply; chat wakes and answers; gateway)"),
)  # fmt: skip


def breakdown(
    samples: Sequence[Sample], database_url: str, stub_records: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Where one request's wall time goes, from the client's clock, the job row's timestamps
    (Postgres `now()`: the start of the transaction that wrote them) and the stub's records."""
    ids = [s.job_id for s in samples if s.job_id is not None]
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            """
            SELECT id, extract(epoch FROM created_at), extract(epoch FROM started_at),
                   extract(epoch FROM finished_at), attempts, status
            FROM chat.ai_jobs WHERE id = ANY(%s)
            """,
            (ids,),
        ).fetchall()
    jobs = {int(r[0]): r for r in rows}
    segments: dict[str, list[float]] = {name: [] for name, _ in _SEGMENTS}
    totals: list[float] = []
    for sample in samples:
        job = jobs.get(sample.job_id) if sample.job_id is not None else None
        stub = stub_records.get(sample.message)
        if job is None or stub is None or None in (job[1], job[2], job[3]):
            continue
        if stub.get("finished_at") is None:
            continue
        created, started, finished = float(job[1]), float(job[2]), float(job[3])
        received, answered = float(stub["received_at"]), float(stub["finished_at"])
        points = (sample.sent_at, created, started, received, answered, finished, sample.done_at)
        for (name, _), (a, b) in zip(_SEGMENTS, itertools.pairwise(points), strict=True):
            segments[name].append((b - a) * 1000)
        totals.append((sample.done_at - sample.sent_at) * 1000)
    return {
        "requests": len(totals),
        "not_completed": sum(1 for r in rows if r[5] != "completed"),
        "retried": sum(1 for r in rows if int(r[4]) > 1),
        "total_median_ms": round(statistics.median(totals), 3) if totals else None,
        "total_mean_ms": round(statistics.fmean(totals), 3) if totals else None,
        "segments": [
            {
                "name": name,
                "label": label,
                "median_ms": round(statistics.median(values), 3) if values else None,
                "mean_ms": round(statistics.fmean(values), 3) if values else None,
            }
            for (name, label), values in ((seg, segments[seg[0]]) for seg in _SEGMENTS)
        ],
    }


def stub_records(stub_url: str) -> dict[str, dict[str, Any]]:
    status, body = http_get(f"{stub_url}/control/requests", timeout=30.0)
    if status != 200:
        return {}
    return {
        _last_user_text(record.get("messages")): record for record in orjson.loads(body)["requests"]
    }


def job_counts(database_url: str) -> dict[str, int]:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            """
            SELECT count(*), count(*) FILTER (WHERE status = 'completed'),
                   count(*) FILTER (WHERE attempts > 1),
                   (SELECT count(*) FROM chat.messages WHERE ai_job_id IS NOT NULL),
                   (SELECT count(*) FROM chat.ai_usage)
            FROM chat.ai_jobs
            """
        ).fetchone()
    assert row is not None
    return dict(
        zip(
            ("jobs", "completed", "retried", "agent_messages", "usage_records"),
            map(int, row),
            strict=True,
        )
    )


def pick(entries: list[dict[str, Any]], how: str) -> dict[str, Any]:
    ranked = sorted(entries, key=lambda e: e["p50_ms"])
    chosen = dict(ranked[0] if how == "best" else ranked[(len(ranked) - 1) // 2])
    chosen["rounds_p50_ms"] = [round(e["p50_ms"], 3) for e in entries]
    chosen["p50_ms_median_of_rounds"] = statistics.median(e["p50_ms"] for e in entries)
    return chosen


def run(args: argparse.Namespace) -> dict[str, Any]:
    run_id, run_dir = new_run("ai")
    children = Children()
    servers: Servers | None = None
    database: str | None = None
    token = secrets.token_hex(4)
    redis_prefix, noop_prefix = f"benchai{token}:", f"benchnoop{token}:"
    meter: CpuMeter | None = None
    noop_app: Any = None
    # One conversation per user for each (round, AI phase), one for the checks and the profile:
    # every round starts from the same short histories.
    slots = args.rounds * 2 + 1
    try:
        servers = connect_servers(run_dir)
        database = f"chat_bench_{token}"
        servers.create_database(database)
        database_url = servers.database_url(database)
        migrate(database_url, run_dir / "migrate.log")
        seed(database_url, users=args.users, per_user=slots)
        user_ids, conversations = _conversations(database_url)
        print(
            f"bench: database {database}: {len(user_ids)} users, {slots} conversations each",
            file=sys.stderr,
        )

        stack = start_ai_stack(children, servers, database_url, redis_prefix, run_dir)
        procs, urls, secret = dict(stack.procs), stack.urls, stack.secret
        procs["celery_noop"] = start_noop_worker(
            children, stack.env, servers.redis_url, noop_prefix, run_dir
        )

        tokens = mint_tokens(secret, user_ids)
        check_slot = posts(conversations, tokens, slots - 1, "check")
        sample_reply = check_reply(urls["gateway"], next(check_slot))
        print("bench: the pipeline answers; stub, services and both workers ready", file=sys.stderr)
        noop_app = make_noop_app(servers.redis_url, noop_prefix)
        noop_task = noop_ready(noop_app)

        meter, redis_info = open_meter(procs, servers, database_url, database)

        if args.warmup:  # the idle figures are taken with every process warmed up
            celery_round_trips(noop_task, args.warmup)
            post_load(urls["gateway"], check_slot, concurrency=1, count=args.warmup)
        idle = idle_cpu(meter, args.idle_seconds) if args.idle_seconds > 0 else {}

        rounds: dict[str, list[dict[str, Any]]] = {phase: [] for phase in PHASES}
        samples: dict[str, list[list[Sample]]] = {"sequential": [], "concurrent": []}
        for index in range(args.rounds):
            order = PHASES if index % 2 == 0 else PHASES[::-1]
            for phase in order:
                print(f"bench: round {index + 1}: {phase}", file=sys.stderr)
                if phase == "baseline":
                    if args.warmup:
                        celery_round_trips(noop_task, args.warmup)
                    entry = measure(
                        meter, phase, args.quiet_threshold, args.quiet_wait,
                        lambda: celery_round_trips(noop_task, args.baseline_requests),
                    )  # fmt: skip
                else:
                    sequential = phase == "sequential"
                    slot = index * 2 + (0 if sequential else 1)
                    stream = posts(conversations, tokens, slot, f"r{index + 1}-{phase}")
                    clients = 1 if sequential else args.concurrency
                    count = args.requests if sequential else args.concurrent_requests
                    if args.warmup:
                        post_load(urls["gateway"], stream, concurrency=clients, count=args.warmup)
                    kept: list[Sample] = []

                    def work(
                        stream: Iterator[Post] = stream,
                        clients: int = clients,
                        count: int = count,
                        kept: list[Sample] = kept,
                    ) -> load.LoadResult:
                        result, got = post_load(
                            urls["gateway"], stream, concurrency=clients, count=count
                        )
                        kept.extend(got)
                        return result

                    entry = measure(meter, phase, args.quiet_threshold, args.quiet_wait, work)
                    samples[phase].append(kept)
                entry["round"] = index + 1
                rounds[phase].append(entry)

        phases = {phase: pick(entries, args.pick) for phase, entries in rounds.items()}
        phases["baseline"]["label"] = "bare Celery .delay().get() (no-op task, threads pool)"
        phases["sequential"]["label"] = "ai-response through the gateway, 1 client"
        phases["concurrent"]["label"] = (
            f"ai-response through the gateway, {args.concurrency} clients"
        )
        rate_limited = gateway_rate_limited(urls["gateway"])
        records = stub_records(urls["stub"])
        breakdowns = {
            phase: breakdown(samples[phase][phases[phase]["round"] - 1], database_url, records)
            for phase in ("sequential", "concurrent")
        }
        counts = job_counts(database_url)

        profile: dict[str, Any] | None = None
        if args.profile or args.profile_native:
            profile = profile_pipeline(
                args, urls["gateway"], posts(conversations, tokens, slots - 1, "profile"),
                procs, run_dir, phases["sequential"]["cpu_ms_per_request"],
            )  # fmt: skip

        with psycopg.connect(database_url) as conn:
            version_row = conn.execute("SHOW server_version").fetchone()
        import celery
        import openai

        ratio = phases["sequential"]["p50_ms"] / max(phases["baseline"]["p50_ms"], 1e-9)
        # The same ratio within each round (the phases of a round ran minutes apart at most).
        round_ratios = [
            round(seq["p50_ms"] / max(base["p50_ms"], 1e-9), 2)
            for seq, base in zip(rounds["sequential"], rounds["baseline"], strict=True)
        ]
        result_doc: dict[str, Any] = {
            "run_id": run_id,
            "commit": commit(),
            "dirty": dirty(),
            "benchmark": "AI reply pipeline overhead (issue 3, target (a))",
            "config": {
                "users": len(user_ids),
                "conversations_per_user": slots,
                "requests": args.requests,
                "concurrent_requests": args.concurrent_requests,
                "baseline_requests": args.baseline_requests,
                "warmup": args.warmup,
                "concurrency": args.concurrency,
                "rounds": args.rounds,
                "pick": args.pick,
                "noop_worker": f"--pool threads --concurrency {NOOP_CONCURRENCY}",
                "log_level": "INFO",
                "message": QUESTION + " (<phase> #<n>)",
                "include_context": True,
            },
            "machine": report.machine(),
            "servers": {
                "postgres_version": version_row[0] if version_row else "?",
                "redis_version": redis_info.get("redis_version", "?"),
                "throwaway": servers.started,
                "celery_version": celery.__version__,
                "openai_version": openai.__version__,
            },
            "sample_reply": sample_reply,
            "phases": phases,
            "rounds": rounds,
            "ratio": ratio,
            "round_ratios": round_ratios,
            "target_factor": TARGET_FACTOR,
            "met": ratio <= TARGET_FACTOR,
            "rate_limited": rate_limited,
            "idle_cpu_ms_per_second": idle,
            "jobs": counts,
            "breakdown": breakdowns,
            "logs": str(run_dir),
        }
        if profile is not None:
            result_doc["profile"] = profile
        problems = [
            f"{phase}: {run['non_2xx']} non-2xx responses in round {run['round']}"
            for phase, entries in rounds.items()
            for run in entries
            if run["non_2xx"]
        ] + [
            f"{phase}: {run['socket_errors']['client']} client errors in round {run['round']}"
            for phase, entries in rounds.items()
            for run in entries
            if run["socket_errors"].get("client")
        ]
        if rate_limited:
            problems.append(f"the gateway rate-limited {rate_limited} requests")
        if counts["completed"] != counts["jobs"] or counts["agent_messages"] != counts["jobs"]:
            problems.append(f"not every job completed exactly once: {counts}")
        result_doc["problems"] = problems
        return result_doc
    finally:
        if noop_app is not None:
            with contextlib.suppress(Exception):
                noop_app.close()
        if meter is not None:
            meter.close()
        tear_down(
            servers,
            children=children,
            redis_prefixes=[redis_prefix, noop_prefix],
            database=database,
            keep=args.keep,
        )


def profile_pipeline(
    args: argparse.Namespace,
    gateway_url: str,
    requests: Iterator[Post],
    procs: dict[str, Child],
    run_dir: Path,
    cpu_ms: dict[str, float],
) -> dict[str, Any]:
    """py-spy (on-CPU samples) of gateway, chat and ai_worker under sequential load."""
    seconds = args.profile_seconds
    summaries, loaded = pyspy.profile_during(
        {name: procs[name].pid for name in ("gateway", "chat", "ai_worker", "stub")},
        run_dir,
        seconds,
        lambda: post_load(gateway_url, requests, concurrency=1, seconds=seconds + 2)[0],
        native=args.profile_native,
        gil=True,
        top=25,
    )
    print(
        f"bench:   under profiling: p50 {loaded.p50_ms:.2f} ms (not a measurement)",
        file=sys.stderr,
    )
    for name, summary in summaries.items():
        summary["cpu_ms_per_request"] = cpu_ms.get(name, 0.0)
    return summaries


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_scenario(
        lambda: run(args),
        print_table=ai_report.print_table,
        update_doc=None if args.no_doc else ai_report.update_doc,
        doc=ai_report.DOC,
    )
