"""The analytics benchmark's outputs: a table on the terminal and its section of
docs/benchmarks.md (bench/analytics.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.report import DOC, rewrite_section

SECTION = "Analytics: aggregator throughput, end-to-end lag, dashboard at 10k and 1M messages"
FINDINGS = "### Findings"
TARGETS = {"events_per_second": 5000.0, "lag_p99_seconds": 1.0, "dashboard_ratio": 1.5}


def _met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def verdicts(result: dict[str, Any]) -> list[str]:
    lines = []
    if "throughput" in result:
        best = max(e["events_per_second"] for e in result["throughput"].values())
        one = result["throughput"].get("1", {}).get("events_per_second")
        lines.append(
            f"Sustained throughput: {best:,.0f} events/s at best"
            + (f" ({one:,.0f} with one aggregator)" if one else "")
            + f" (target: at least {TARGETS['events_per_second']:,.0f}; "
            f"{_met(best >= TARGETS['events_per_second'])})."
        )
    if "lag" in result:
        lag = result["lag"]
        lines.append(
            f"End-to-end lag at {lag['rate']:,.0f} events/s: p50 "
            f"{lag['p50_seconds'] * 1000:.0f} ms, p99 {lag['p99_seconds'] * 1000:.0f} ms "
            "(target: p99 under 1 s; "
            f"{_met(lag['p99_bucket_bound'] <= TARGETS['lag_p99_seconds'])})."
        )
    if "dashboard" in result:
        board = result["dashboard"]
        small, large = board["sizes"]["small"], board["sizes"]["large"]
        lines.append(
            f"Dashboard p95: {small['best']['p95_ms']:.2f} ms with {small['messages']:,} messages, "
            f"{large['best']['p95_ms']:.2f} ms with {large['messages']:,}: "
            f"{board['p95_ratio']:.2f}x (target: at most 1.5x; "
            f"{_met(board['p95_ratio'] <= TARGETS['dashboard_ratio'])})."
        )
    return lines


def print_table(result: dict[str, Any]) -> None:
    print()
    for line in verdicts(result):
        print(line.replace("**", ""))
    for processes, entry in result.get("throughput", {}).items():
        print(
            f"  throughput, {processes} aggregator(s): rounds {entry['rounds_events_per_second']} "
            f"events/s; CPU per event {entry['cpu_us_per_event']} µs"
        )
    if "lag" in result:
        exact = result["lag"]["to_batch_start"]
        print(
            f"  lag to the start of the applying transaction (exact): p50 "
            f"{exact['p50_seconds'] * 1000:.0f} ms, p99 {exact['p99_seconds'] * 1000:.0f} ms, "
            f"max {exact['max_seconds'] * 1000:.0f} ms"
        )
    for label, size in result.get("dashboard", {}).get("sizes", {}).items():
        best = size["best"]
        print(
            f"  dashboard {label}: {size['messages']:,} messages, rollup rows "
            f"{size['rollup_rows']}; p50 {best['p50_ms']} ms, p95 {best['p95_ms']} ms, p99 "
            f"{best['p99_ms']} ms, {best['rps']:,.0f} req/s; rounds p95 {best['rounds_p95_ms']}"
        )
    print()


def section(result: dict[str, Any]) -> str:
    config = result["config"]
    lines = [
        f"## {SECTION}",
        "",
        f"Run `{result['run_id']}` (`python -m bench analytics`), commit `{result['commit']}`"
        + (" (with uncommitted changes)" if result.get("dirty") else "")
        + ".",
        "",
        *[f"- {line}" for line in verdicts(result)],
        "",
    ]
    if "throughput" in result:
        lines += [
            "| aggregators | events | best events/s | every round | CPU µs/event (aggregator, "
            "its Postgres backend) | rollups checked |",
            "| ---: | ---: | ---: | --- | --- | --- |",
        ]
        for processes, e in result["throughput"].items():
            cpu = e["cpu_us_per_event"]
            lines.append(
                f"| {processes} | {e['events']:,} | {e['events_per_second']:,.0f} | "
                f"{', '.join(f'{v:,.0f}' for v in e['rounds_events_per_second'])} | "
                f"{cpu['aggregator']}, {cpu['postgres']} | {'yes' if e['totals_ok'] else 'NO'} |"
            )
        lines.append("")
    if "lag" in result:
        lag, exact = result["lag"], result["lag"]["to_batch_start"]
        lines += [
            "| steady load | events | lag p50 | lag p99 (bucket) "
            "| to batch start p50 / p99 / max |",
            "| ---: | ---: | ---: | ---: | --- |",
            f"| {lag['rate']:,.0f} events/s for {lag['seconds']:.0f} s | {lag['written']:,} | "
            f"{lag['p50_seconds'] * 1000:.0f} ms | {lag['p99_seconds'] * 1000:.0f} ms "
            f"(<= {lag['p99_bucket_bound'] * 1000:.0f} ms) | "
            f"{exact['p50_seconds'] * 1000:.0f} / {exact['p99_seconds'] * 1000:.0f} / "
            f"{exact['max_seconds'] * 1000:.0f} ms |",
            "",
        ]
    if "dashboard" in result:
        board = result["dashboard"]
        lines += [
            "| messages stored | rollup rows (user_activity, user_agent_activity) | rebuild | "
            "req/s | p50 | p95 | p99 | p95 of every round |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for size in board["sizes"].values():
            best, rows = size["best"], size["rollup_rows"]
            lines.append(
                f"| {size['messages']:,} | {rows['user_activity']:,}, "
                f"{rows['user_agent_activity']:,} | {size['rebuild_seconds']} s | "
                f"{best['rps']:,.0f} | {best['p50_ms']} ms | {best['p95_ms']} ms | "
                f"{best['p99_ms']} ms | {', '.join(str(v) for v in best['rounds_p95_ms'])} |"
            )
        lines.append("")
    machine = result.get("machine", {})
    query = result["dashboard"]["query"] if "dashboard" in result else ""
    lines += [
        f"**Machine.** {machine.get('nproc')} CPUs ({machine.get('cpu_model')}), Python "
        f"{machine.get('python')}, PostgreSQL {result.get('postgres')}, Redis "
        f"{result.get('redis')}; the load generator, Postgres, Redis and every process share "
        "these CPUs, and other work ran on the machine too (each measurement first waits up to "
        f"{config['quiet_wait']:.0f} s for it to be under {config['quiet_threshold']:.0%} busy).",
        "",
        "**Method.** *Throughput*: the stream is filled with "
        f"{config['events']:,} valid events (about 13 per conversation: created, 8 messages, "
        "4 AI replies of which 1 in 20 fails, 1 in 25 agent changes, 1 in 20 deletions; "
        f"{config['users']:,} users, interleaved in time), then the aggregator processes "
        "(`python -m services.analytics.aggregator`, default settings: batches of 1,000) drain "
        "it; events/s = events / (drain observed finished - first batch started), best of "
        f"{config['throughput_rounds']} rounds; the rollups' totals are checked against what "
        "the events imply. *Lag*: events committed to `chat.outbox` at a steady rate (a "
        "transaction every 10 ms) while the relay and one aggregator run; the lag is the "
        "aggregator's `analytics_event_lag_seconds` histogram (event `occurred_at`, the change's "
        "commit-time clock, to the commit of its rollups), quantiles interpolated within buckets "
        "as Prometheus does, the bucket bound shown; the exact per-event time to the start of "
        "the applying transaction (`processed_events.applied_at - occurred_at`) cross-checks it. "
        f"*Dashboard*: {config['users']:,} users x 10 conversations, messages spread between "
        "each conversation's creation (up to 180 days ago) and now, 1 AI job per 20 messages; "
        "rollups built by `python -m services.analytics.rebuild` from those chat tables (the "
        "rows the aggregator would have written: the tests prove the two agree); "
        f"`GET /chat/analytics/dashboard?{query}` "
        "(the caller's totals, most active agent, 30 local days and the 30 before) through the "
        "gateway with a minted token per user, random users, "
        f"{config['requests']:,} requests at concurrency {config['concurrency']} after "
        f"{config['warmup']} warm-up ones, best of {config['rounds']} rounds by p95.",
        "",
    ]
    return "\n".join(lines)


def update_doc(result: dict[str, Any], path: Path = DOC) -> None:
    rewrite_section(SECTION, section(result), path, keep=FINDINGS)
