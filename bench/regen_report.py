"""Outputs of `python -m bench regen`: a table on the terminal and its section of
docs/benchmarks.md (the JSON file is written with `report.write_json`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.report import DOC, rewrite_section

SECTION = "Batch regeneration throughput (issue 3, target (b))"
# A hand-written analysis below the figures, kept when a run rewrites them.
FINDINGS = "### Findings"
_CPU_SHOWN = 0.005
REST = (
    "store statement begins -> the slot's next job is created (the reply's writes, commit, "
    "announce, the top-up, done by this job's thread or by the one holding the batch), plus "
    "the batch's start and "
    "tail: the slot cycle minus the segments above (negative since jobs wait ready at the gate: "
    "a job's queue and prompt overlap the model calls of the jobs before it)"
)


def _ordered(result: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(result["results"].values(), key=lambda row: row["concurrency"])


def _verdict(result: dict[str, Any], markdown: bool = False) -> str:
    if result["met"]:
        return "met"
    return "**not met**" if markdown else "NOT met"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _idle(idle: dict[str, float]) -> str:
    return ", ".join(f"{name} {ms:.1f}" for name, ms in idle.items() if ms >= 0.05) or "none"


def _locks(row: dict[str, Any]) -> str:
    pg = row.get("postgres_backends")
    if not pg:
        return "-"
    return f"{pg['lock_waiters_mean']:.2f}, {pg['lock_waiters_max']} ({pg['with_lock_waiter']:.0%})"


def _cycle(row: dict[str, Any]) -> str:
    return _ms(row.get("cycle_ms"))


def _row_cells(row: dict[str, Any], configured: int) -> list[str]:
    mark = " (configured)" if row["concurrency"] == configured else ""
    return [
        f"{row['concurrency']}{mark}",
        f"{row['limit_rps']:.0f}",
        f"{row['rps']:.1f}",
        f"{row['share']:.1%}",
        f"{row['seconds']:.2f}",
        f"{row['ideal_seconds']:.2f}",
        f"{row['db_span_seconds']:.2f}",
        f"{row['wall_seconds']:.2f}",
        f"{row['max_in_flight_jobs']} / {row['max_running_jobs']} / {row['stub_max_in_flight']}",
        f"{row['failed']}",
        _cycle(row),
    ]


_HEADERS = (
    "C", "limit/s", "replies/s", "share", "POST->last s", "ideal s", "in-DB s", "until GET s",
    "in flight", "failed", "slot cycle ms",
)  # fmt: skip


def print_table(result: dict[str, Any]) -> None:
    cfg = result["config"]
    m = result["machine"]
    rows = _ordered(result)
    print()
    print(
        f"Batch regeneration — {cfg['replies']:,} agent replies, stand-in LLM answering in "
        f"{cfg['latency_seconds'] * 1000:.0f} ms; {cfg['pick']} of {cfg['rounds']} round(s); "
        f"{m['nproc']} CPUs ({m['cpu_model']})"
    )
    cells = [_row_cells(row, cfg["concurrency"]) for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(_HEADERS)]
    line = "  ".join(h.rjust(w) for h, w in zip(_HEADERS, widths, strict=True))
    print(line)
    print("-" * len(line))
    for problem in result.get("problems", []):
        print(f"WARNING: {problem}")
    for row in cells:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    headline = result["results"][str(cfg["concurrency"])]
    print(
        f"C={cfg['concurrency']} (configured): {headline['rps']:.1f} replies/s = "
        f"{result['share']:.1%} of the {headline['limit_rps']:.0f}/s limit (target >= "
        f"{result['target_share']:.0%}: {_verdict(result)}; by round: "
        + ", ".join(f"{s:.1%}" for s in headline["rounds_share"])
        + f"); 429s from the gateway: {result['rate_limited']}"
    )
    print("Where one job slot's time goes (mean ms; median in brackets):")
    for index, seg in enumerate(rows[0]["segments"]):
        values = "  ".join(
            f"C={row['concurrency']}: {row['segments'][index]['mean_ms']} "
            f"({row['segments'][index]['median_ms']})"
            for row in rows
        )
        print(f"  {seg['name']:<11} {values}")
    print("  rest        " + "  ".join(f"C={r['concurrency']}: {_ms(r['rest_ms'])}" for r in rows))
    print("  slot cycle  " + "  ".join(f"C={r['concurrency']}: {_cycle(r)}" for r in rows))
    print("CPU per reply, ms, by process (and cores busy on average):")
    for row in rows:
        parts = ", ".join(
            f"{name} {ms:.2f} ({row['cpu_cores'].get(name, 0.0):.2f})"
            for name, ms in row["cpu_ms_per_reply"].items()
            if ms >= _CPU_SHOWN
        )
        print(
            f"  C={row['concurrency']}: {parts} (machine busy {row['machine_busy']:.0%}, "
            f"other work {row['other_load']:.0%}; Postgres backends waiting for a lock: "
            f"{_locks(row)})"
        )
    idle = result.get("idle_cpu_ms_per_second")
    if idle:
        print("  idle (no load), CPU ms per second: " + _idle(idle))
    profile = result.get("profile")
    if profile:
        for process, summary in profile["processes"].items():
            cpu_ms = summary.get("cpu_ms_per_reply", 0.0)
            print(
                f"profile of {process} ({summary['samples']} samples; share of its Python work, "
                f"and ms per reply at {cpu_ms:.2f} ms/reply):"
            )
            for name, share in summary["self_time_by_library_share_of_busy"][:10]:
                print(f"  {share:6.1%} {share * cpu_ms:6.3f}  {name}")
            for item in summary.get("focus", []):
                share = item["share"]
                print(f"  {share:6.1%} {share * cpu_ms:6.3f}  {item['function']}: {item['label']}")
    print()


def section(result: dict[str, Any]) -> str:
    cfg = result["config"]
    m = result["machine"]
    srv = result["servers"]
    rows = _ordered(result)
    headline = result["results"][str(cfg["concurrency"])]
    latency_ms = cfg["latency_seconds"] * 1000
    lines = [
        f"## {SECTION}",
        "",
        f"Run `{result['run_id']}` (`python -m bench regen`), commit `{result['commit']}`"
        + (" plus uncommitted changes to services/shared" if result.get("dirty") else "")
        + ".",
        "",
        "| " + " | ".join(_HEADERS) + " |",
        "| --- | " + " | ".join("---:" for _ in _HEADERS[1:]) + " |",
    ]
    lines += ["| " + " | ".join(_row_cells(row, cfg["concurrency"])) + " |" for row in rows]
    lines += [f"\n**Warning: {problem}**" for problem in result.get("problems", [])]
    lines += [
        "",
        f"**At the configured concurrency C = {cfg['concurrency']}: {headline['rps']:.1f} "
        f"replies/s = {result['share']:.1%} of the limit** ({headline['limit_rps']:.0f}/s = C / "
        f"{latency_ms:.0f} ms; target: at least {result['target_share']:.0%}, "
        f"{_verdict(result, markdown=True)}; by round: "
        + ", ".join(f"{s:.1%}" for s in headline["rounds_share"])
        + "). "
        "*replies/s* is the replies regenerated over the time from sending the batch's POST to "
        "the last job's `finished_at`; *ideal* is what the limit allows for them; *in-DB* is "
        "from the first job's `created_at` to the last `finished_at`; *until GET* is until the "
        f"first progress GET (every {cfg['poll_seconds']:g} s) that showed the batch completed. "
        "*In flight*: the most jobs queued or running at once, the most running at once (both "
        "from the job rows) and the most requests the stand-in LLM had open at once (its own "
        "counter). The limit is on model calls: the last may not exceed C, and the running "
        "jobs (those calling the model and those ready at the gate) not C + min(C, 8); the "
        "bench checks both. *Slot cycle*: the "
        "time each of the C slots takes per reply (C / throughput); the limit assumes it is the "
        "LLM's latency alone, so the share is latency / cycle. The gateway "
        f"rate-limited {result['rate_limited']} requests.",
        "",
        "Where one job slot's time goes, mean (median) in milliseconds, from the job rows "
        "(Postgres `now()`: the start of the transaction that set each timestamp) and the "
        "stand-in LLM's own record of each request (same machine, same clock):",
        "",
        "| segment | " + " | ".join(f"C = {row['concurrency']}" for row in rows) + " |",
        "| --- | " + " | ".join("---:" for _ in rows) + " |",
    ]
    for index, (name, label) in enumerate(
        (seg["name"], seg["label"]) for seg in rows[0]["segments"]
    ):
        cells = [
            f"{row['segments'][index]['mean_ms']} ({row['segments'][index]['median_ms']})"
            for row in rows
        ]
        lines.append(f"| *{name}*: {label} | " + " | ".join(cells) + " |")
    lines.append(f"| *rest*: {REST} | " + " | ".join(_ms(row["rest_ms"]) for row in rows) + " |")
    lines.append(
        "| *slot cycle*: C / throughput (the limit assumes the LLM's latency alone) | "
        + " | ".join(_cycle(row) for row in rows)
        + " |"
    )
    lines += [
        "",
        "CPU time per reply by process, in milliseconds, and in brackets the cores it kept busy "
        "on average (from `/proc/<pid>/stat` over the batch; `postgres` is the sum of the run's "
        "backends, `load generator` the bench process itself, which only polls the progress):",
        "",
        "| process | " + " | ".join(f"C = {row['concurrency']}" for row in rows) + " |",
        "| --- | " + " | ".join("---:" for _ in rows) + " |",
    ]
    names = list(rows[-1]["cpu_ms_per_reply"])
    for name in names:
        if all(row["cpu_ms_per_reply"].get(name, 0.0) < _CPU_SHOWN for row in rows):
            continue
        cells = [
            f"{row['cpu_ms_per_reply'].get(name, 0.0):.2f} ({row['cpu_cores'].get(name, 0.0):.2f})"
            for row in rows
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(
        "| *machine busy* | " + " | ".join(f"{row['machine_busy']:.0%}" for row in rows) + " |"
    )
    lines.append(
        "| *Postgres backends waiting for a lock: mean, max (share of 50 ms samples with one)* | "
        + " | ".join(_locks(row) for row in rows)
        + " |"
    )
    lines.append(
        "| *other work on the machine* | "
        + " | ".join(f"{row['other_load']:.0%}" for row in rows)
        + " |"
    )
    idle = result.get("idle_cpu_ms_per_second")
    if idle:
        lines += [
            "",
            "With nothing to do the processes use, in CPU milliseconds per second: "
            + _idle(idle)
            + " (included above).",
        ]
    lines += [
        "",
        "Every measured batch:",
        "",
        "| round | C | replies/s | share | POST->last (s) | in-DB (s) | until GET (s) | "
        "in flight | failed | other work |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        for run in result["rounds"][str(row["concurrency"])]:
            lines.append(
                f"| {run['round']} | {run['concurrency']} | {run['rps']:.1f} | "
                f"{run['share']:.1%} | {run['seconds']:.2f} | {run['db_span_seconds']:.2f} | "
                f"{run['wall_seconds']:.2f} | {run['max_in_flight_jobs']} / "
                f"{run['max_running_jobs']} / {run['stub_max_in_flight']} | {run['failed']} | "
                f"{run['other_load']:.0%} |"
            )
    compare = ", ".join(str(c) for c in cfg["compare"]) or "none"
    lines += [
        "",
        "**Machine.** "
        f"{m['nproc']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, Linux {m['kernel']}, "
        f"Python {m['python']}, PostgreSQL {srv['postgres_version']}, Redis "
        f"{srv['redis_version']}, Celery {srv['celery_version']}, openai {srv['openai_version']}. "
        "The bench, the stand-in LLM, Postgres, Redis, the worker and every service share "
        "these CPUs.",
        "",
        "**Method.** "
        "A fresh database (`chat_bench_<random>`, migrated with `python -m shared.db.migrate`, "
        f"dropped afterwards) seeded by `bench/dataset.py` with {cfg['users']} users, then "
        f"{cfg['replies']:,} of their conversations given one agent of their own, a question "
        "each (numbered, so the stand-in LLM's record of a request names its job) and that "
        "agent's reply; and an administrator. Processes, each started as in production with "
        "its defaults, `LOG_LEVEL=INFO` and logs to files: gateway, chat and analytics "
        "(`python -m services.<name>`), the AI worker (`python -m services.ai_worker`: Celery "
        f"threads pool, AI_WORKER_CONCURRENCY {cfg['worker_concurrency']}, its default) with "
        "`LLM_BASE_URL` at the stand-in LLM (`python -m tests.support.llm_stub --delay-seconds "
        f"{cfg['latency_seconds']:g}`: every request answered after {latency_ms:.0f} ms, "
        '`"Echo: " + question`, streamed word by word), and the run\'s own `REDIS_PREFIX`. '
        "Each batch: `POST /chat/admin/regenerations "
        '{"agent_id": <the agent>, "concurrency": C, "key": <new>}` to the gateway with an '
        "administrator's bearer token (minted with the gateway's `issue_access_token`), "
        f"then `GET /chat/admin/regenerations/{{id}}` every {cfg['poll_seconds']:g} s until "
        f"it is no longer running. Every batch regenerates the same {cfg['replies']:,} "
        "replies (the current ones, i.e. the previous batch's); the bench checks that each "
        "batch completed every one of them exactly once (no failed job, as many current "
        "replies afterwards as before), never had more than C model calls open at once (the "
        "stand-in's own count: the limit is on model calls, services/ai_worker/gate.py) nor "
        "more than min(C, 8) more jobs running, ready at the gate. "
        f"A first batch of {cfg['warmup']} replies warms up every process (unmeasured). "
        f"{cfg['rounds']} round(s), each measuring C = {cfg['concurrency']} (configured) and "
        f"C = {compare}, in alternating order; each C is shown by its "
        f"{'best' if cfg['pick'] == 'best' else 'median'} round (by throughput). Before each "
        "batch the bench waits for the machine to be quiet.",
        "",
    ]
    profile = result.get("profile")
    if profile:
        lines += [
            "**Profile** (py-spy `--gil`: samples of the thread holding the GIL, i.e. Python "
            f"work, during one more batch at C = {cfg['concurrency']} after the measured rounds, "
            f"{profile['rps']:.1f} replies/s under profiling; share of the process's samples, "
            "with the ms of its CPU per reply that share stands for):",
            "",
        ]
        for process, summary in profile["processes"].items():
            cpu_ms = summary.get("cpu_ms_per_reply", 0.0)
            libs = ", ".join(
                f"{name} {share:.0%} ({share * cpu_ms:.2f} ms)"
                for name, share in summary["self_time_by_library_share_of_busy"][:8]
            )
            lines.append(f"- *{process}* ({cpu_ms:.2f} ms CPU per reply). By library: {libs}.")
        focus = profile["processes"]["ai_worker"].get("focus", [])
        if focus:
            cpu_ms = profile["processes"]["ai_worker"].get("cpu_ms_per_reply", 0.0)
            lines += [
                "",
                "The AI worker's Python work by activity (inclusive: each with what it calls), "
                "share of its samples and the ms of CPU per reply that share stands for:",
                "",
                "| function | what | share | ms/reply |",
                "| --- | --- | ---: | ---: |",
            ]
            lines += [
                f"| `{item['function']}` | {item['label']} | {item['share']:.1%} | "
                f"{item['share'] * cpu_ms:.2f} |"
                for item in focus
            ]
        lines.append("")
    return "\n".join(lines)


def update_doc(result: dict[str, Any], path: Path = DOC) -> None:
    """Replaces this benchmark's section, keeping its hand-written `### Findings` subsection, or
    appends it; the other sections are left as they are."""
    rewrite_section(SECTION, section(result), path, keep=FINDINGS)
