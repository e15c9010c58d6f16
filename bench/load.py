"""Load generation: wrk with a Lua script rotating through the users (or a Python fallback)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

# One request per user: (path with query, headers).
Request = tuple[str, dict[str, str]]


@dataclass
class LoadResult:
    tool: str
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    non_2xx: int
    socket_errors: dict[str, int] = field(default_factory=dict)
    loadgen_cpu_seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def ensure_wrk() -> str | None:
    """wrk's path, installing Debian's package when it is missing and we may; else None."""
    found = shutil.which("wrk")
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt and os.geteuid() == 0:
        print("bench: wrk not found; installing it with apt-get", file=sys.stderr)
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                [apt, "install", "-y", "-q", "wrk"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=300,
                check=False,
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            )
    return shutil.which("wrk")


def _lua_string(value: str) -> str:
    return json.dumps(value)  # a JSON string of ASCII text is a valid Lua string literal


def write_lua(path: Path, requests: Sequence[Request]) -> None:
    """Each wrk thread walks the user list from its own starting point, one user per request."""
    lines = ["local paths = {"]
    lines += [f"  {_lua_string(p)}," for p, _ in requests]
    lines += ["}", "local headers = {"]
    for _, headers in requests:
        pairs = ", ".join(f"[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items())
        lines.append(f"  {{{pairs}}},")
    lines += [
        "}",
        "local n = #paths",
        "local next_thread = 0",
        "function setup(thread)",
        "  thread:set('thread_index', next_thread)",
        "  next_thread = next_thread + 1",
        "end",
        "local prepared = {}",
        "local position = 0",
        "function init(args)",
        "  for i = 1, n do prepared[i] = wrk.format('GET', paths[i], headers[i]) end",
        "  position = ((thread_index or 0) * 397) % n",
        "end",
        "function request()",
        "  position = position % n + 1",
        "  return prepared[position]",
        "end",
    ]
    path.write_text("\n".join(lines) + "\n")


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> LoadResult:
    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, output, re.MULTILINE)
        if not match:
            raise ValueError(f"wrk output without {pattern!r}:\n{output}")
        return match

    percentiles = {
        p: _ms(find(rf"^\s+{p}%\s+(\S+)\s*$").group(1)) for p in ("50", "75", "90", "99")
    }
    done = find(r"^\s*(\d+) requests in ([\d.]+\w+),")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", output)
    errors: dict[str, int] = {}
    socket = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if socket:
        errors = dict(
            zip(("connect", "read", "write", "timeout"), map(int, socket.groups()), strict=True)
        )
    max_ms = _ms(find(r"^\s+Latency\s+\S+\s+\S+\s+(\S+)").group(1))
    return LoadResult(
        tool="wrk",
        requests=int(done.group(1)),
        seconds=_ms(done.group(2)) / 1000,
        rps=float(find(r"^Requests/sec:\s+([\d.]+)").group(1)),
        p50_ms=percentiles["50"],
        p75_ms=percentiles["75"],
        p90_ms=percentiles["90"],
        p99_ms=percentiles["99"],
        max_ms=max_ms,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=errors,
    )


def run_wrk(
    wrk: str, url: str, script: Path, *, threads: int, connections: int, seconds: float
) -> LoadResult:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [
            wrk,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout", "10s",
            "--latency",
            "-s", str(script),
            url,
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    result = parse_wrk(done.stdout)
    result.loadgen_cpu_seconds = (after.ru_utime - before.ru_utime) + (
        after.ru_stime - before.ru_stime
    )
    return result


# --- fallback: a Python load generator (used only when wrk cannot be had) ---------------------


def _percentile(sorted_values: Sequence[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


async def _python_load(
    base_url: str, requests: Sequence[Request], connections: int, seconds: float
) -> tuple[list[float], int, int, float]:
    import aiohttp

    latencies: list[float] = []
    failures = 0
    errors = 0
    connector = aiohttp.TCPConnector(limit=connections)
    started = time.perf_counter()
    end = started + seconds

    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(offset: int) -> None:
            nonlocal failures, errors
            position = offset
            while time.perf_counter() < end:
                path, headers = requests[position % len(requests)]
                position += 1
                sent = time.perf_counter()
                try:
                    async with session.get(base_url + path, headers=headers) as response:
                        await response.read()
                        if not 200 <= response.status < 400:
                            failures += 1
                except aiohttp.ClientError:
                    errors += 1
                    continue
                latencies.append((time.perf_counter() - sent) * 1000)

        await asyncio.gather(*(worker(i * 397) for i in range(connections)))
    return latencies, failures, errors, time.perf_counter() - started


def run_python(
    base_url: str, requests: Sequence[Request], *, connections: int, seconds: float
) -> LoadResult:
    cpu_before = time.process_time()
    latencies, failures, errors, elapsed = asyncio.run(
        _python_load(base_url, requests, connections, seconds)
    )
    latencies.sort()
    return LoadResult(
        tool="python-aiohttp",
        requests=len(latencies),
        seconds=elapsed,
        rps=len(latencies) / elapsed if elapsed else 0.0,
        p50_ms=_percentile(latencies, 0.50),
        p75_ms=_percentile(latencies, 0.75),
        p90_ms=_percentile(latencies, 0.90),
        p99_ms=_percentile(latencies, 0.99),
        max_ms=latencies[-1] if latencies else 0.0,
        non_2xx=failures,
        socket_errors={"client": errors},
        loadgen_cpu_seconds=time.process_time() - cpu_before,
    )
