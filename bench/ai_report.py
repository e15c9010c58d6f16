"""Outputs of `python -m bench ai`: a table on the terminal and its section of docs/benchmarks.md
(the JSON file is written with `report.write_json`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.report import DOC, rewrite_section

SECTION = "AI reply pipeline overhead (issue 3, target (a))"
# A hand-written analysis below the figures, kept when a run rewrites them.
FINDINGS = "### Findings"
_PHASES = ("baseline", "sequential", "concurrent")


def _cpu_line(cpu: dict[str, float]) -> str:
    return ", ".join(f"{name} {ms:.2f}" for name, ms in cpu.items() if ms >= 0.005)


def _verdict(result: dict[str, Any], markdown: bool = False) -> str:
    if result["met"]:
        return "met"
    return "**not met**" if markdown else "NOT met"


def print_table(result: dict[str, Any]) -> None:
    cfg = result["config"]
    phases = result["phases"]
    m = result["machine"]
    print()
    print(
        f"AI reply pipeline overhead — stand-in LLM answering at once; {cfg['users']} users; "
        f"{cfg['pick']} of {cfg['rounds']} round(s); {m['nproc']} CPUs ({m['cpu_model']})"
    )
    header = f"{'phase':<58}{'n':>6}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}"
    print(header)
    print("-" * len(header))
    for problem in result.get("problems", []):
        print(f"WARNING: {problem}")
    for key in _PHASES:
        row = phases[key]
        print(
            f"{row['label']:<58}{row['requests']:>6}{row['rps']:>9,.1f}{row['p50_ms']:>9.2f}"
            f"{row['p99_ms']:>9.2f}{row['non_2xx']:>9}"
        )
    print(
        f"p50 ai-response (1 client) / p50 bare Celery round trip = {result['ratio']:.1f}x "
        f"(target <= {result['target_factor']:g}x: {_verdict(result)}; by round: "
        + ", ".join(f"{r:.1f}x" for r in result.get("round_ratios", []))
        + "); "
        f"429s from the gateway: {result['rate_limited']}"
    )
    print("CPU per request, ms, by process:")
    for key in _PHASES:
        row = phases[key]
        print(
            f"  {key:<11} path {row['path_cpu_ms_per_request']:.2f}: "
            f"{_cpu_line(row['cpu_ms_per_request'])} (machine busy {row['machine_busy']:.0%}, "
            f"other work {row['other_load']:.0%})"
        )
    idle = result.get("idle_cpu_ms_per_second")
    if idle:
        print(f"  idle (no load), CPU ms per second: {_cpu_line(idle)}")
    for key, data in result["breakdown"].items():
        print(
            f"Where a request's time goes ({key}, {data['requests']} requests; median / mean ms; "
            f"total {data['total_median_ms']} / {data['total_mean_ms']}):"
        )
        for seg in data["segments"]:
            print(f"  {seg['median_ms']:8.2f} {seg['mean_ms']:8.2f}  {seg['label']}")
    profile = result.get("profile")
    if profile:
        for process, summary in profile.items():
            cpu_ms = summary.get("cpu_ms_per_request", 0.0)
            print(
                f"profile of {process} ({summary['samples']} samples; share of its CPU, and ms "
                f"per request at {cpu_ms:.2f} ms/request):"
            )
            for name, share in summary["self_time_by_library_share_of_busy"][:10]:
                print(f"  {share:6.1%} {share * cpu_ms:6.3f}  {name}")
            print("  top self-time functions:")
            for name, share in summary["top_self_share_of_busy"][:12]:
                print(f"  {share:6.1%} {share * cpu_ms:6.3f}  {name}")
    print()


def section(result: dict[str, Any]) -> str:
    cfg = result["config"]
    m = result["machine"]
    phases = result["phases"]
    srv = result["servers"]
    lines = [
        f"## {SECTION}",
        "",
        f"Run `{result['run_id']}` (`python -m bench ai`), commit `{result['commit']}`"
        + (" plus uncommitted changes to services/shared" if result.get("dirty") else "")
        + ".",
        "",
        "| phase | requests | req/s | p50 (ms) | p99 (ms) | non-2xx |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key in _PHASES:
        row = phases[key]
        lines.append(
            f"| {row['label']} | {row['requests']} | {row['rps']:,.1f} | {row['p50_ms']:.2f} | "
            f"{row['p99_ms']:.2f} | {row['non_2xx']} |"
        )
    lines += [f"\n**Warning: {problem}**" for problem in result.get("problems", [])]
    jobs = result["jobs"]
    lines += [
        "",
        f"**p50 of `ai-response` (1 client) / p50 of the bare Celery round trip = "
        f"{result['ratio']:.1f}×** (target: within {result['target_factor']:g}×, "
        f"{_verdict(result, markdown=True)}; within each round: "
        + ", ".join(f"{r:.1f}×" for r in result.get("round_ratios", []))
        + f"). The gateway rate-limited {result['rate_limited']} "
        f"requests (its production limits were in force); the run's {jobs['jobs']:,} jobs "
        f"ended {jobs['completed']:,} completed, {jobs['retried']} retried, with "
        f"{jobs['agent_messages']:,} agent messages and {jobs['usage_records']:,} usage records.",
        "",
        "CPU time per request by process, in milliseconds (from `/proc/<pid>/stat` over the "
        "measured window; `postgres` is the sum of the run's backends, `load generator` the "
        "bench process itself):",
        "",
        "| phase | process | ms/request |",
        "| --- | --- | ---: |",
    ]
    for key in _PHASES:
        row = phases[key]
        for name, ms in row["cpu_ms_per_request"].items():
            if ms >= 0.005:
                lines.append(f"| {key} | {name} | {ms:.2f} |")
        lines.append(f"| {key} | *path total* | {row['path_cpu_ms_per_request']:.2f} |")
        lines.append(f"| {key} | *machine busy* | {row['machine_busy']:.0%} |")
        lines.append(f"| {key} | *other work on the machine* | {row['other_load']:.0%} |")
    idle = result.get("idle_cpu_ms_per_second")
    if idle:
        lines += [
            "",
            "With no load at all the processes use, in CPU milliseconds per second: "
            + ", ".join(f"{name} {ms:.1f}" for name, ms in idle.items() if ms >= 0.05)
            + " (included in the figures above, spread over the requests of each window).",
        ]
    lines += [
        "",
        "Where one request's wall time goes, from the client's clock, the job row's timestamps "
        "(Postgres `now()`, the start of the transaction that set them) and the stand-in LLM's "
        "own records of each request (same machine, same clock):",
        "",
        "| segment | 1 client: median (ms) | mean (ms) | "
        f"{cfg['concurrency']} clients: median (ms) | mean (ms) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    seq, conc = result["breakdown"]["sequential"], result["breakdown"]["concurrent"]
    for a, b in zip(seq["segments"], conc["segments"], strict=True):
        lines.append(
            f"| {a['label']} | {a['median_ms']:.2f} | {a['mean_ms']:.2f} | "
            f"{b['median_ms']:.2f} | {b['mean_ms']:.2f} |"
        )
    lines.append(
        f"| *whole request* | {seq['total_median_ms']:.2f} | {seq['total_mean_ms']:.2f} | "
        f"{conc['total_median_ms']:.2f} | {conc['total_mean_ms']:.2f} |"
    )
    lines += [
        "",
        "Every measured round:",
        "",
        "| round | phase | req/s | p50 (ms) | p99 (ms) | non-2xx | other work |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key in _PHASES:
        for run in result["rounds"][key]:
            lines.append(
                f"| {run['round']} | {key} | {run['rps']:,.1f} | {run['p50_ms']:.2f} | "
                f"{run['p99_ms']:.2f} | {run['non_2xx']} | {run['other_load']:.0%} |"
            )
    lines += [
        "",
        "**Machine.** "
        f"{m['nproc']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, Linux {m['kernel']}, "
        f"Python {m['python']}, PostgreSQL {srv['postgres_version']}, Redis "
        f"{srv['redis_version']}, Celery {srv['celery_version']}, openai {srv['openai_version']}. "
        "The load generator, the stand-in LLM, Postgres, Redis, both workers and every service "
        "share these CPUs.",
        "",
        "**Method.** "
        "A fresh database (`chat_bench_<random>`, migrated with `python -m shared.db.migrate`, "
        f"dropped afterwards) seeded by `bench/dataset.py` with {cfg['users']} users and "
        f"{cfg['conversations_per_user']} conversations each: every round and phase uses its own "
        "conversation per user, so each starts from the same short history. Processes, each "
        "started as in production with its defaults, `LOG_LEVEL=INFO` and logs to files: "
        "gateway, chat and analytics (`python -m services.<name>`), the AI worker (`python -m "
        "services.ai_worker`: Celery threads pool, its default concurrency) with `LLM_BASE_URL` "
        "at the stand-in LLM (`python -m tests.support.llm_stub`, answering at once: "
        '`"Echo: " + message` with usage, word by word when asked to stream), and the run\'s own '
        "`REDIS_PREFIX`. "
        "*ai-response*: `POST /chat/conversations/{id}/ai-response "
        '{"message": "<a question, numbered>", "include_context": true}` to the gateway with a '
        "bearer token (minted with the gateway's `issue_access_token`), rotating through the "
        "users (consecutive and concurrent requests are different users and conversations; "
        "each user stays far below the gateway's per-user limit), from an async Python client "
        "(aiohttp on uvloop, keep-alive); latency is from sending the request to having read "
        f"the whole answer. 1 client: {cfg['warmup']} warm-up requests, then "
        f"{cfg['requests']} measured; {cfg['concurrency']} clients: the same warm-up, then "
        f"{cfg['concurrent_requests']} measured. "
        "*Bare Celery round trip*: `bench/celery_noop.py`, a Celery app with one task "
        "`return x`, Redis as broker and result backend (same server, its own key prefix), "
        f"worker `celery -A bench.celery_noop worker --pool threads --concurrency "
        f"{cfg['noop_worker'].rsplit(' ', 1)[-1]} --without-gossip --without-mingle "
        "--without-heartbeat` (the flags the AI worker uses), INFO logging to a file; "
        f"{cfg['warmup']} warm-up round trips, then {cfg['baseline_requests']} sequential "
        "`noop.delay(i).get()` measured in the bench process. "
        f"{cfg['rounds']} round(s), the three phases alternating order; each phase is shown by "
        f"its {'best' if cfg['pick'] == 'best' else 'median'} round (by p50) and the ratio "
        "compares those. Before each phase the bench waits for the machine to be quiet.",
        "",
    ]
    profile = result.get("profile")
    if profile:
        lines += [
            "**Profile** (py-spy `--gil`: samples of the thread holding the GIL, i.e. Python "
            "work, under 1-client load after the measured rounds; share of the process's "
            "samples, with the ms of its CPU per request that share stands for):",
            "",
        ]
        for process, summary in profile.items():
            cpu_ms = summary.get("cpu_ms_per_request", 0.0)
            libs = ", ".join(
                f"{name} {share:.0%} ({share * cpu_ms:.2f} ms)"
                for name, share in summary["self_time_by_library_share_of_busy"][:8]
            )
            lines.append(f"- *{process}* ({cpu_ms:.2f} ms CPU per request). By library: {libs}.")
        lines.append("")
    return "\n".join(lines)


def update_doc(result: dict[str, Any], path: Path = DOC) -> None:
    """Replaces this benchmark's section, keeping its hand-written `### Findings` subsection, or
    appends it; the other sections are left as they are."""
    rewrite_section(SECTION, section(result), path, keep=FINDINGS)
