"""Sampling profiles of the gateway-path processes under load (py-spy), summarised as top
functions (self and inclusive time) and time by library."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# Without --idle py-spy samples only a running thread. A leaf in the loop's entry point then means
# time inside uvloop's C code (socket reads and writes, the loop's own callbacks and, for the
# Cython/C libraries, whatever Python frame py-spy cannot see below it).
_LOOP_FUNCTIONS = frozenset({"Runner.run", "run_until_complete", "run_forever", "asyncio_run"})
LOOP_NATIVE = "event loop, native code (uvloop: socket I/O, callbacks; C extensions)"

_LIBRARIES = (
    ("services/gateway", "services.gateway"),
    ("services/chat", "services.chat"),
    ("services/ai_worker", "services.ai_worker"),
    ("services/", "services (other)"),
    ("shared/", "shared"),
    ("bench/", "bench"),
    ("fastapi/", "fastapi"),
    ("starlette/", "starlette"),
    ("pydantic/", "pydantic"),
    ("pydantic_core/", "pydantic"),
    ("uvicorn/", "uvicorn"),
    ("aiohttp/", "aiohttp"),
    ("yarl/", "aiohttp"),
    ("multidict/", "aiohttp"),
    ("asyncpg/", "asyncpg"),
    ("redis/", "redis-py"),
    ("structlog/", "structlog"),
    ("prometheus_client/", "prometheus_client"),
    ("jwt/", "pyjwt"),
    ("anyio/", "anyio"),
    ("uvloop/", "uvloop"),
    ("httptools/", "httptools"),
    ("orjson", "orjson"),
    ("celery/", "celery"),
    ("billiard/", "celery"),
    ("kombu/", "kombu"),
    ("sqlalchemy/", "sqlalchemy"),
    ("psycopg/", "psycopg"),
    ("openai/", "openai"),
    ("httpx", "httpx"),
    ("httpcore", "httpx"),
    ("h11/", "httpx"),
    ("logging/", "logging (stdlib)"),
    ("asyncio/", "asyncio (stdlib)"),
)


def ensure_py_spy() -> str:
    local = Path(sys.executable).parent / "py-spy"
    if local.exists():
        return str(local)
    found = shutil.which("py-spy")
    if found:
        return found
    print("bench: installing py-spy into the virtualenv (pip)", file=sys.stderr)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "py-spy",
        ],
        check=True,
        timeout=600,
    )
    if not local.exists():
        raise RuntimeError("py-spy did not install")
    return str(local)


def start_recording(
    py_spy: str, pid: int, output: Path, seconds: float, *, native: bool, gil: bool = False
) -> subprocess.Popen[bytes]:
    """`gil`: only samples of the thread holding the GIL (Python work; for processes with
    thread pools, whose idle threads py-spy may otherwise count as running)."""
    argv = [
        py_spy, "record",
        "--pid", str(pid),
        "--duration", str(max(1, round(seconds))),
        "--rate", "250",
        "--format", "raw",
        "--output", str(output),
    ]  # fmt: skip
    if native:
        argv.append("--native")
    if gil:
        argv.append("--gil")
    return subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def wait_recording(proc: subprocess.Popen[bytes], seconds: float) -> str:
    try:
        _, err = proc.communicate(timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return (err or b"").decode(errors="replace")


def stop_recording(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short_file(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3."):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker.startswith("/lib") and "/" in tail else tail
    for marker in ("/services/", "/shared/", "/bench/"):
        if marker in path:
            return marker.strip("/") + "/" + path.split(marker, 1)[1]
    return path


def _frame(raw: str) -> tuple[str, str]:
    """(function, short file) of a py-spy frame 'func (file:line)'."""
    match = _FRAME.match(raw.strip())
    if not match:
        return raw.strip(), ""
    return match.group("func"), _short_file(match.group("file"))


def _library(file: str) -> str:
    for prefix, name in _LIBRARIES:
        if prefix in file:
            return name
    if not file or file.startswith("<"):
        return "other"
    if file.startswith("libc.") or file.startswith("libpthread"):
        return "native: libc (system calls)"
    if file.startswith("libpython"):
        return "native: CPython runtime (incl. garbage collector)"
    if file.endswith((".c", ".h", ".pyx", ".pxd", ".pxi")) or ".so" in file:
        return "native: C extensions and CPython internals"
    return file.split("/", 1)[0].removesuffix(".py") + " (stdlib)"


@dataclass
class ProfileSummary:
    samples: int
    top_self: list[tuple[str, float]]
    top_inclusive: list[tuple[str, float]]
    by_library: list[tuple[str, float]]

    def as_dict(self) -> dict[str, object]:
        return {
            "samples": self.samples,
            "top_self_share_of_busy": self.top_self,
            "top_inclusive_share_of_busy": self.top_inclusive,
            "self_time_by_library_share_of_busy": self.by_library,
        }


def summarise(raw_path: Path, top: int = 20) -> ProfileSummary:
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    libraries: Counter[str] = Counter()
    total = 0
    for line in raw_path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [
            _frame(f) for f in stack.split(";") if f and not f.startswith(("process ", "thread "))
        ]
        if not frames:
            continue
        total += count
        func, file = frames[-1]
        if func in _LOOP_FUNCTIONS:
            self_time[LOOP_NATIVE] += count
            libraries[LOOP_NATIVE] += count
        else:
            self_time[f"{func} ({file})"] += count
            libraries[_library(file)] += count
        for name in {f"{fn} ({fl})" for fn, fl in frames}:
            inclusive[name] += count
    busy = max(1, total)

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(count / busy, 4)) for name, count in counter.most_common(top)]

    return ProfileSummary(
        samples=total,
        top_self=shares(self_time),
        top_inclusive=shares(inclusive),
        by_library=shares(libraries),
    )


def inclusive_shares(raw_path: Path, functions: Sequence[str]) -> dict[str, float]:
    """The share of all samples in which each of `functions` (a qualified name such as
    `JobEvents._add`) is on the stack, itself or anything it calls."""
    counts: Counter[str] = Counter()
    total = 0
    for line in raw_path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        total += int(count_text)
        names = {_frame(f)[0] for f in stack.split(";")}
        for function in functions:
            if function in names:
                counts[function] += int(count_text)
    return {function: round(counts[function] / max(1, total), 4) for function in functions}


def profile_during(
    pids: Mapping[str, int],
    run_dir: Path,
    seconds: float,
    load: Callable[[], T],
    *,
    native: bool,
    gil: bool = False,
    top: int = 20,
) -> tuple[dict[str, dict[str, Any]], T]:
    """Records `seconds` of py-spy samples of each process (`run_dir/profile-<name>.txt`) while
    `load()` runs; returns each one's summary (with the raw file's path) and what `load` returned.
    The recorders are stopped however this ends."""
    py_spy = ensure_py_spy()
    names = ", ".join(pids)
    print(f"bench: profiling {names} with py-spy for {seconds:.0f}s", file=sys.stderr)
    recorders = {
        name: start_recording(
            py_spy, pid, run_dir / f"profile-{name}.txt", seconds, native=native, gil=gil
        )
        for name, pid in pids.items()
    }
    try:
        loaded = load()
        summaries: dict[str, dict[str, Any]] = {}
        for name, recorder in recorders.items():
            errors = wait_recording(recorder, seconds)
            raw = run_dir / f"profile-{name}.txt"
            if not raw.exists():
                raise RuntimeError(f"py-spy wrote no profile for {name}: {errors.strip()}")
            summaries[name] = summarise(raw, top=top).as_dict()
            summaries[name]["raw"] = str(raw)
        return summaries, loaded
    finally:
        for recorder in recorders.values():
            stop_recording(recorder)
