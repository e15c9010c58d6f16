"""The run's outputs: a table on the terminal, a JSON file, and a section of docs/benchmarks.md."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "GET /chat/conversations through the gateway vs bare"
_DOC_INTRO = """# Benchmarks

Figures measured on this repository's code with `make bench` (`python -m bench`). Each section
is rewritten by the run that produced it; the JSON of every run is kept in `bench/results/`
(not committed).
"""


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
                break
    except OSError:
        pass
    wrk_version = ""
    wrk = shutil.which("wrk")
    if wrk:
        done = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
        lines = (done.stdout or done.stderr).splitlines()
        # "wrk debian/4.1.0-3+b2 [epoll] Copyright (C) 2012 Will Glozer" -> "wrk debian/4.1.0-3+b2"
        wrk_version = lines[0].split(" [", 1)[0].strip() if lines else ""
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model or platform.processor() or "unknown",
        "memory_gib": memory_gib,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": wrk_version,
    }


def _fmt_int(value: float) -> str:
    return f"{value:,.0f}"


def _cpu_line(cpu: dict[str, float]) -> str:
    parts = [f"{name} {ms:.2f}" for name, ms in cpu.items() if ms >= 0.005]
    return ", ".join(parts)


def print_table(result: dict[str, Any]) -> None:
    cfg = result["config"]
    bare = result["paths"]["bare"]
    gateway = result["paths"]["gateway"]
    print()
    print(
        f"GET /chat/conversations?limit=20 — {cfg['users']:,} users x {cfg['per_user']} "
        f"conversations ({result['dataset']['conversations']:,} rows); {cfg['load_tool']} "
        + (f"-t{cfg['threads']} " if cfg["load_tool"] == "wrk" else "")
        + f"-c{cfg['connections']} -d{cfg['duration']}s after a "
        f"{cfg['warmup']}s warm-up, {cfg.get('pick', 'median')} of {cfg['rounds']} round(s); "
        f"{result['machine']['nproc']} CPUs "
        f"({result['machine']['cpu_model']})"
    )
    header = f"{'path':<44}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'non-2xx':>10}"
    print(header)
    print("-" * len(header))
    for problem in result.get("problems", []):
        print(f"WARNING: {problem}")
    for key, label in (("bare", bare["label"]), ("gateway", gateway["label"])):
        row = result["paths"][key]
        print(
            f"{label:<44}{row['rps']:>10,.0f}{row['p50_ms']:>10.2f}{row['p99_ms']:>10.2f}"
            f"{row['non_2xx']:>10}"
        )
    ratio = result["ratio"]
    verdict = "met" if ratio >= result["target_ratio"] else "NOT met"
    print(
        f"gateway / bare = {ratio:.1%} (target >= {result['target_ratio']:.0%}: {verdict}); "
        f"429s from the gateway's rate limit: {gateway.get('rate_limited', 0)}"
    )
    print(
        f"CPU per request: bare path {bare['path_cpu_ms_per_request']:.2f} ms, gateway path "
        f"{gateway['path_cpu_ms_per_request']:.2f} ms (bare / gateway = "
        f"{result['cpu_cost_ratio']:.1%}); by process, ms:"
    )
    for key in ("bare", "gateway"):
        row = result["paths"][key]
        print(
            f"  {key:<8} {_cpu_line(row['cpu_ms_per_request'])} "
            f"(machine busy {row['machine_busy']:.0%}, of which other work "
            f"{row.get('other_load', 0.0):.0%})"
        )
    profile = result.get("profile")
    if profile:
        for process, summary in profile.items():
            cpu_ms = gateway["cpu_ms_per_request"].get(process, 0.0)
            print(
                f"profile of {process} ({summary['samples']} samples; share of its CPU, and ms "
                f"per request at {cpu_ms:.2f} ms/request):"
            )
            for name, share in summary["self_time_by_library_share_of_busy"][:12]:
                print(f"  {share:6.1%} {share * cpu_ms:6.3f}  {name}")
            print("  top self-time functions:")
            for name, share in summary["top_self_share_of_busy"][:15]:
                print(f"  {share:6.1%} {share * cpu_ms:6.3f}  {name}")
    print()


def write_json(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")


def _section(result: dict[str, Any]) -> str:
    cfg = result["config"]
    m = result["machine"]
    bare = result["paths"]["bare"]
    gateway = result["paths"]["gateway"]
    ratio = result["ratio"]
    verdict = "met" if ratio >= result["target_ratio"] else "**not met**"
    ds = result["dataset"]
    lines = [
        f"## {SECTION}",
        "",
        f"Run `{result['run_id']}` (`python -m bench`), commit `{result['commit']}`"
        + (" plus uncommitted changes to services/shared" if result.get("dirty") else "")
        + ".",
        "",
        "| path | req/s | p50 (ms) | p99 (ms) | non-2xx |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in (bare, gateway):
        lines.append(
            f"| {row['label']} | {_fmt_int(row['rps'])} | {row['p50_ms']:.2f} | "
            f"{row['p99_ms']:.2f} | {row['non_2xx']} |"
        )
    lines += [f"\n**Warning: {problem}**" for problem in result.get("problems", [])]
    lines += [
        "",
        f"**Gateway path / bare = {ratio:.1%}** (target: at least "
        f"{result['target_ratio']:.0%}, {verdict}). The gateway answered "
        f"{gateway.get('rate_limited', 0)} requests with 429 (its production limits, "
        f"{cfg['rate_limit']}, were in force).",
        "",
        f"CPU time per request: bare path {bare['path_cpu_ms_per_request']:.2f} ms, gateway "
        f"path {gateway['path_cpu_ms_per_request']:.2f} ms; their ratio "
        f"({result['cpu_cost_ratio']:.1%}) is the throughput ratio the two paths would have if "
        "each were limited by CPU time alone (the bare path is also capped by its single "
        "process, one core at most). By process, in milliseconds (from "
        "`/proc/<pid>/stat` over the measured window; `postgres` is the sum of the run's "
        "backends):",
        "",
        "| path | " + " | ".join(["process", "ms/request"]) + " |",
        "| --- | --- | ---: |",
    ]
    for key, row in (("bare", bare), ("gateway", gateway)):
        for name, ms in row["cpu_ms_per_request"].items():
            if ms >= 0.005:
                lines.append(f"| {key} | {name} | {ms:.2f} |")
        lines.append(f"| {key} | *machine busy* | {row['machine_busy']:.0%} |")
        lines.append(f"| {key} | *other work on the machine* | {row.get('other_load', 0.0):.0%} |")
    lines += [
        "",
        'Every measured run ("other work": CPU used by processes outside the benchmark, as a '
        "share of the machine; runs with much of it favour the path with more processes, which "
        "the scheduler then gives a larger share of the CPUs):",
        "",
        "| round | path | req/s | p50 (ms) | p99 (ms) | non-2xx | other work |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key in ("bare", "gateway"):
        for index, run in enumerate(result["rounds"][key], start=1):
            lines.append(
                f"| {index} | {key} | {_fmt_int(run['rps'])} | {run['p50_ms']:.2f} | "
                f"{run['p99_ms']:.2f} | {run['non_2xx']} | {run.get('other_load', 0.0):.0%} |"
            )
    lines += [
        "",
        "**Machine.** "
        f"{m['nproc']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, Linux {m['kernel']}, "
        f"Python {m['python']}, PostgreSQL {result['servers']['postgres_version']}, "
        f"Redis {result['servers']['redis_version']}, {m['wrk'] or cfg['load_tool']}. The load "
        "generator, Postgres, Redis and every service share these CPUs.",
        "",
        "**Method.** "
        f"A fresh database (`chat_bench_<random>`, migrated with `python -m shared.db.migrate`, "
        f"dropped afterwards) seeded with {cfg['users']:,} users and {ds['conversations']:,} "
        f"conversations ({cfg['per_user']} per user, interleaved in time; {ds['pinned']:,} "
        f"pinned, {ds['archived']:,} archived, {ds['without_messages']:,} never messaged), "
        "then VACUUM ANALYZE. "
        "*Gateway path*: `GET /chat/conversations?limit=20&offset=0` sent to the gateway with a "
        "bearer token (HS256, minted with the gateway's own `issue_access_token`); the gateway "
        "checks the token, applies the per-user GCRA rate limit in Redis and forwards to the chat "
        "service, which checks the token again and runs the list query (page and total) on "
        "asyncpg. "
        "Gateway, chat and analytics each run as one uvicorn process (uvloop, httptools) "
        "exactly as `python -m services.<name>` starts them in production, with `LOG_LEVEL=INFO` "
        "(access log lines written to files). "
        "*Bare*: `bench/bare_app.py`, one uvicorn process (uvloop, httptools, no access log) with "
        "a bare FastAPI app whose endpoint calls the chat service's own "
        "`conversation_service.list` (so the same SQL and row shaping, whatever they become) on "
        "an asyncpg pool made like chat's (`shared.db.pool.create_pool`, chat's pool size) and "
        "answers the same envelope with orjson; the user comes from a query parameter (no "
        "authentication, middleware, logging, metrics, rate limit or second hop). "
        "Before the load both paths are checked to return identical `data` for the same user. "
        f"Load: `wrk -t{cfg['threads']} -c{cfg['connections']} -d{cfg['duration']}s --latency` "
        f"after a {cfg['warmup']} s warm-up run, a Lua script rotating through all "
        f"{cfg['users']:,} users (each request a different user's token or `user_id`); "
        f"{cfg['rounds']} round(s), alternating which path goes first; the table shows each "
        f"path's {'best' if cfg.get('pick') == 'best' else 'median'} round (by req/s) with its "
        "own latencies. Latency percentiles are wrk's.",
        "",
    ]
    profile = result.get("profile")
    if profile:
        lines += [
            "**Profile** (py-spy, gateway path under the same load; share of the process's CPU "
            "samples, with the ms per request it stands for):",
            "",
        ]
        for process, summary in profile.items():
            cpu_ms = gateway["cpu_ms_per_request"].get(process, 0.0)
            libs = ", ".join(
                f"{name} {share:.0%} ({share * cpu_ms:.2f} ms)"
                for name, share in summary["self_time_by_library_share_of_busy"][:8]
            )
            funcs = "; ".join(
                f"`{name}` {share:.0%}" for name, share in summary["top_self_share_of_busy"][:8]
            )
            lines += [
                f"- *{process}* ({cpu_ms:.2f} ms CPU per request). By library: {libs}. "
                f"Top self time: {funcs}.",
            ]
        lines.append("")
    return "\n".join(lines)


def rewrite_section(title: str, new: str, path: Path = DOC, *, keep: str | None = None) -> None:
    """Replaces the section `## title` of the document (up to the next `## ` heading, or up to
    its own hand-written subsection headed `keep`, which is kept), or appends it; the other
    sections are left as they are."""
    text = path.read_text() if path.exists() else _DOC_INTRO
    stop = rf"^{re.escape(keep)}|^## |\Z" if keep else r"^## |\Z"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?={stop})", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: new + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + new
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n")


def update_doc(result: dict[str, Any], path: Path = DOC) -> None:
    """Replaces this benchmark's section (up to the next `## ` heading), or appends it."""
    rewrite_section(SECTION, _section(result), path)
