"""Child processes of a run: output straight to a log file, readiness polled with a deadline,
stopped by their own PID (never by name)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

POLL_SECONDS = 0.1
STOP_SECONDS = 10.0

# Loopback requests must not go through a proxy named in the environment.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _die_with_parent() -> Callable[[], None] | None:
    """Linux sends the child SIGTERM if the bench dies without cleaning up (kill -9)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG

    return preexec


def http_get(
    url: str, headers: Mapping[str, str] | None = None, timeout: float = 5.0
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with _opener.open(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_post(
    url: str, body: bytes, headers: Mapping[str, str], timeout: float = 5.0
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
    try:
        with _opener.open(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Child:
    """One process we started; the log file gets its stdout and stderr directly."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str],
        cwd: Path,
    ) -> None:
        self.name = name
        self.log_path = log_path
        with log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=cwd,
                start_new_session=True,  # Ctrl-C reaches the bench, which then stops us in order
                preexec_fn=_die_with_parent(),
            )

    @property
    def pid(self) -> int:
        return self._proc.pid

    def running(self) -> bool:
        return self._proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_http_ok(self, url: str, timeout: float) -> None:
        """Polls GET url until it answers 200; fails early if the process exits."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while True:
            if not self.running():
                raise RuntimeError(
                    f"{self.name} exited ({self._proc.returncode}) before answering {url}; "
                    f"log {self.log_path}:\n{self.tail()}"
                )
            try:
                status, _ = http_get(url, timeout=2.0)
                if status == 200:
                    return
                last = f"status {status}"
            except OSError as exc:
                last = str(exc)
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"{self.name} not ready at {url} after {timeout:.0f}s ({last}); "
                    f"log {self.log_path}:\n{self.tail()}"
                )
            # Returns as soon as the process exits; otherwise the poll interval.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=POLL_SECONDS)

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        """SIGTERM to our PID, then SIGKILL to it (and its session) past the timeout."""
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(timeout=timeout)


class Children:
    """Every process the run started, stopped together (signal all, then wait) in reverse."""

    def __init__(self) -> None:
        self._children: list[Child] = []

    def start(
        self, name: str, argv: Sequence[str], *, log_path: Path, env: Mapping[str, str], cwd: Path
    ) -> Child:
        child = Child(name, argv, log_path=log_path, env=env, cwd=cwd)
        self._children.append(child)
        return child

    def stop(self, child: Child) -> None:
        """Stops one of them before the others (the rest stop with `stop_all`)."""
        child.stop()
        self._children.remove(child)

    def stop_all(self) -> None:
        children, self._children = self._children[::-1], []
        for child in children:
            if child.running():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGTERM)
        for child in children:
            with contextlib.suppress(Exception):
                child.stop()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a process has used so far (None when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    # Fields 14 and 15 of stat(5); after the ")" the list starts at field 3.
    return (int(fields[11]) + int(fields[12])) / ticks


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = float(sum(values[:8]))
    return total - idle, total


def machine_shares(
    before: tuple[float, float], after: tuple[float, float], ours_seconds: float
) -> tuple[float, float]:
    """Between two `machine_cpu()` readings: the share of all CPUs that was busy, and the share
    used by processes other than ours (`ours_seconds`: the CPU seconds our processes used);
    much of the latter means the figures are skewed by other work."""
    window = max(1.0, after[1] - before[1])
    ours = ours_seconds * os.sysconf("SC_CLK_TCK")
    return (after[0] - before[0]) / window, max(0.0, (after[0] - before[0] - ours) / window)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def busy_fraction(window: float) -> float:
    """The share of all CPUs busy over the next `window` seconds (a measurement, not a wait for
    anything: the window is the sample)."""
    busy0, total0 = machine_cpu()
    threading.Event().wait(window)
    busy1, total1 = machine_cpu()
    return (busy1 - busy0) / max(1.0, total1 - total0)


def wait_for_quiet(threshold: float, timeout: float) -> tuple[bool, float]:
    """Polls until the machine is at most `threshold` busy over a 1 s sample, or `timeout` passes.

    Returns (quiet, last sample). Other work on the machine (test suites, builds) competes with
    every process of the benchmark for the same CPUs and would skew one path against the other.
    """
    deadline = time.monotonic() + timeout
    while True:
        sample = busy_fraction(1.0)
        if sample <= threshold or time.monotonic() >= deadline:
            return sample <= threshold, sample
