"""Child processes for the local runner and the tests: start, log, wait until ready, stop by PID."""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import pwd
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

# Seconds a process gets between the polite stop signal and SIGKILL.
STOP_TIMEOUT = 10.0
# How often a readiness check is repeated while waiting for it.
POLL_INTERVAL = 0.1
TAIL_LINES = 40

_PR_SET_PDEATHSIG = 1
_COLOURS = ("36", "33", "35", "32", "34", "31")
_echo_lock = threading.Lock()
# Loopback requests must never go through a proxy named in the environment.
_direct_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ProcessFailed(RuntimeError):
    """A child process died or did not become ready; the message carries its last log lines."""


class Deadline:
    """A point in time a wait must not pass."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self._end - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self._end


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tcp_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_status(url: str, timeout: float = 2.0) -> int | str:
    """The HTTP status of GET url, or why there was none."""
    try:
        with _direct_opener.open(url, timeout=timeout) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except urllib.error.URLError as exc:
        return str(exc.reason)
    except OSError as exc:
        return str(exc)


def _die_with_parent(sig: signal.Signals) -> Callable[[], None] | None:
    """A preexec hook asking Linux to signal the child when this process dies (no orphans)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig))

    return preexec


def echo_line(name: str, line: str) -> None:
    """Print a line to the terminal the way child output is printed: `name | line`."""
    _echo(name, None, line)


def _echo(name: str, colour: str | None, line: str) -> None:
    label = f"{name:<10}|"
    if colour:
        label = f"\033[{colour}m{label}\033[0m"
    with _echo_lock:
        sys.stdout.write(f"{label} {line}\n")
        sys.stdout.flush()


class ManagedProcess:
    """One child process: its output goes to a log file (and optionally the terminal, prefixed).

    The child runs in its own session, so Ctrl-C in a terminal reaches only the runner, which
    then stops the children in order. It is stopped by its PID with `stop_signal`, then SIGKILL
    to its process group after `STOP_TIMEOUT`; Linux also sends it `stop_signal` if the process
    that started it dies without cleaning up.
    """

    _started = 0

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        echo: bool = False,
        user: str | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
        on_exit: Callable[[ManagedProcess], None] | None = None,
    ) -> None:
        self.name = name
        self._on_exit = on_exit
        self.argv = list(argv)
        self.log_path = log_path
        self.stop_signal = stop_signal
        self._tail: collections.deque[str] = collections.deque(maxlen=200)
        self._signalled = False
        colour = None
        if echo and sys.stdout.isatty():
            colour = _COLOURS[ManagedProcess._started % len(_COLOURS)]
        ManagedProcess._started += 1
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("ab")
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
                user=user,
                group=pwd.getpwnam(user).pw_gid if user else None,
                extra_groups=[] if user else None,
                preexec_fn=_die_with_parent(stop_signal),
            )
        except OSError as exc:
            self._log.close()
            raise ProcessFailed(f"{name}: cannot start {self.argv[0]}: {exc}") from exc
        self._pump = threading.Thread(
            target=self._copy_output, args=(echo, colour), name=f"log-{name}", daemon=True
        )
        self._pump.start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.poll()

    def _copy_output(self, echo: bool, colour: str | None) -> None:
        stream = self._proc.stdout
        assert stream is not None
        for raw in iter(stream.readline, b""):
            self._log.write(raw)
            self._log.flush()
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            self._tail.append(line)
            if echo:
                _echo(self.name, colour, line)
        stream.close()
        self._proc.wait()
        if self._on_exit is not None:
            self._on_exit(self)

    def tail(self, lines: int = TAIL_LINES) -> str:
        """The last lines the process printed."""
        return "\n".join(list(self._tail)[-lines:])

    def failure(self, what: str) -> ProcessFailed:
        """An error naming this process, its exit status and its last output."""
        rc = self.returncode
        state = "is still running" if rc is None else f"exited with status {rc}"
        return ProcessFailed(
            f"{self.name} {what} ({state}); log: {self.log_path}\n"
            f"--- last lines of {self.name} ---\n{self.tail()}\n--- end of {self.name} ---"
        )

    def pause(self, seconds: float) -> None:
        """Wait up to `seconds`, returning early if the process exits."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=seconds)

    def wait_until(self, check: Callable[[], str | None], *, what: str, deadline: Deadline) -> None:
        """Repeat `check` (None means ready, a string says why not) until ready or the deadline.

        Raises ProcessFailed, with the process's last output, if it exits first or the deadline
        passes.
        """
        while True:
            if self.returncode is not None:
                raise self.failure(f"died before {what}")
            reason = check()
            if reason is None:
                return
            if deadline.expired():
                raise self.failure(f"not {what} after {deadline.seconds:.0f}s (last: {reason})")
            self.pause(min(POLL_INTERVAL, deadline.remaining()))

    def wait_http_ok(self, url: str, deadline: Deadline) -> None:
        """Wait until GET url answers 200."""

        def check() -> str | None:
            status = http_status(url, timeout=max(0.2, min(2.0, deadline.remaining())))
            return None if status == 200 else f"GET {url}: {status}"

        self.wait_until(check, what=f"answering 200 at {url}", deadline=deadline)

    def request_stop(self) -> None:
        """Send the polite stop signal once (a second SIGTERM makes some servers skip cleanup)."""
        if self._signalled or self._proc.poll() is not None:
            return
        self._signalled = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._proc.pid, self.stop_signal)

    def wait_exit(self, deadline: Deadline) -> int:
        """Wait for the process to finish; stop it and raise ProcessFailed past the deadline."""
        try:
            returncode = self._proc.wait(timeout=deadline.remaining())
        except subprocess.TimeoutExpired:
            self.stop()
            raise self.failure(f"did not finish in {deadline.seconds:.0f}s") from None
        self.stop()  # already exited: collects the rest of its output and closes the log
        return returncode

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """Stop the process (polite signal, then SIGKILL to its group); returns its exit status."""
        self.request_stop()
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _echo(self.name, None, f"did not stop in {timeout:.0f}s; sending SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=STOP_TIMEOUT)
        self._pump.join(timeout=STOP_TIMEOUT)
        if not self._pump.is_alive():  # else a grandchild still holds the pipe; leave the file
            self._log.close()
        return self._proc.returncode


def stop_all(processes: Sequence[ManagedProcess], timeout: float = STOP_TIMEOUT) -> None:
    """Stop processes together: signal all first, then wait, so the deadlines overlap."""
    for process in processes:
        process.request_stop()
    deadline = Deadline(timeout)
    for process in reversed(processes):
        process.stop(timeout=max(0.5, deadline.remaining()))
