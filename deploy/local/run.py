"""`make run`: the whole system on this machine: servers, secrets, migrations, the services.

Uses the Postgres/Redis named by DATABASE_URL/REDIS_URL (default: the usual local ports) or
starts throwaway ones; keeps generated secrets in `.run/local.env` (delete it for new ones) and
each process's output in `.run/logs/<name>.log`. Ctrl-C or SIGTERM stops everything it started.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import string
import sys
import threading
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

from sqlalchemy.engine import make_url

from deploy.local.llm import LLMUnavailable, start_llm
from deploy.local.processes import ManagedProcess, ProcessFailed, echo_line, tcp_answers
from deploy.local.servers import ServerUnavailable, ensure_postgres, ensure_redis
from deploy.local.stack import (
    ROOT,
    SERVICES,
    assign_ports,
    run_migrations,
    start_services,
    stop_services,
    wait_services,
)

DEFAULT_DATABASE = "chat"
DEFAULT_ADMIN_EMAIL = "admin@example.com"
_NAME = "run"


def say(line: str) -> None:
    echo_line(_NAME, line)


_CLASSES = (string.ascii_lowercase, string.ascii_uppercase, string.digits)


def _password() -> str:
    """A random password with a lower- and an upper-case letter and a digit, for any policy."""
    while True:
        candidate = secrets.token_urlsafe(18)
        if all(any(c in kind for c in candidate) for kind in _CLASSES):
            return candidate


def load_local_env(path: Path) -> dict[str, str]:
    """The runner's generated settings: created once (mode 0600), then read back each run."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        content = (
            "# Generated once by `make run`; delete this file to get new secrets.\n"
            f"JWT_SECRET={secrets.token_urlsafe(48)}\n"
            f"ADMIN_EMAIL={DEFAULT_ADMIN_EMAIL}\n"
            f"ADMIN_PASSWORD={_password()}\n"
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another runner wrote it first: use theirs
        else:
            with os.fdopen(fd, "w") as file:
                file.write(content)
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{path}:{number}: expected KEY=VALUE, got {raw!r}")
        values[key.strip()] = value.strip()
    return values


def _database_name(url: str | None) -> str:
    """The database to use: the one DATABASE_URL names, else `chat`."""
    if url:
        name = make_url(url).database
        if name:
            return name
    return DEFAULT_DATABASE


def _check_ports_free(env: dict[str, str]) -> None:
    for spec in SERVICES:
        if spec.port_env is None:
            continue
        port = int(env[spec.port_env])
        if tcp_answers("127.0.0.1", port, timeout=0.5):
            raise ServerUnavailable(
                f"port {port} ({spec.port_env}) is already in use: is another `make run` "
                f"running? Stop it, or set {spec.port_env} to another port."
            )


def _rotate_logs(log_dir: Path) -> None:
    """Keep the previous run's logs as <name>.log.1 so this run's start on a clean page."""
    log_dir.mkdir(parents=True, exist_ok=True)
    for log in log_dir.glob("*.log"):
        log.replace(log.with_name(log.name + ".1"))


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _supervise(processes: list[ManagedProcess], exited: threading.Event) -> int:
    """Wait until Ctrl-C (returns 0) or until a service, or the embedded LLM, dies on its own
    (returns 1: a system without one of them would only fail its requests)."""
    while True:
        exited.wait(timeout=1.0)
        for process in processes:
            if process.returncode is not None:
                echo_line(_NAME, str(process.failure("stopped unexpectedly")))
                return 1


def _run(args: argparse.Namespace, cleanup: ExitStack) -> int:
    workdir: Path = args.workdir
    log_dir = workdir / "logs"
    _rotate_logs(log_dir)
    configured_db = os.environ.get("DATABASE_URL")

    postgres = ensure_postgres(workdir)
    cleanup.callback(postgres.stop)
    if postgres.embedded:
        say(
            f"no Postgres at {configured_db or 'DATABASE_URL'}: started a throwaway one on "
            f"127.0.0.1:{postgres.port} (its data is deleted on exit)"
        )
    else:
        say(f"Postgres: using {postgres.host}:{postgres.port}")
    redis = ensure_redis(workdir)
    cleanup.callback(redis.stop)
    if redis.embedded:
        say(f"no Redis at REDIS_URL: started a throwaway one at {redis.url}")
    else:
        say(f"Redis: using {redis.url}")

    database = _database_name(configured_db)
    if postgres.create_database(database):
        say(f"created database {database!r}")

    local = load_local_env(workdir / "local.env")
    # What the caller's environment says wins over the generated file.
    env = {**local, **os.environ}
    env.update(
        DATABASE_URL=postgres.url(database),
        REDIS_URL=redis.url,
        PYTHONUNBUFFERED="1",
    )
    # Attachments stay with the rest of the run's state unless configured otherwise.
    env.setdefault("CHAT_STORAGE_DIR", str(workdir / "storage"))
    assign_ports(env, SERVICES, free=False)

    say("running migrations")
    run_migrations(env, log_dir, echo=True)
    if args.migrate_only:
        return 0

    _check_ports_free(env)
    watched: list[ManagedProcess] = []
    if not env.get("LLM_BASE_URL"):
        llm = start_llm(workdir)
        watched.append(llm.process)
        cleanup.callback(llm.stop)
        env.update(llm.env())
        # Its context window is 2,048 tokens: history is cut to fit beside a reply.
        env.setdefault("AI_WORKER_CONTEXT_BUDGET_TOKENS", "1024")
        say(
            f"no LLM_BASE_URL: started the embedded {llm.model} at {llm.base_url} "
            "(a tiny base model: see README for a real provider)"
        )
    else:
        say(f"LLM: using {env['LLM_BASE_URL']}")
    exited = threading.Event()

    def note_exit(process: ManagedProcess) -> None:
        exited.set()

    services = start_services(SERVICES, env, log_dir, echo=True, on_exit=note_exit)
    cleanup.callback(stop_services, services)
    wait_services(services, ready=False)

    gateway = next(s.url for s in services if s.name == "gateway")
    lines = [
        "",
        "The chat platform is running.",
        f"  API docs (Authorize with the admin account): {gateway}/docs",
        f"  admin login: {env.get('ADMIN_EMAIL', '(ADMIN_EMAIL not set)')}"
        f" / {env.get('ADMIN_PASSWORD', '(ADMIN_PASSWORD not set)')}",
        f"  logs: {log_dir}/    secrets: {workdir / 'local.env'}",
        "Press Ctrl-C to stop.",
        "",
    ]
    for line in lines:
        say(line)
    return _supervise([*watched, *(service.process for service in services)], exited)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.local.run", description=__doc__)
    parser.add_argument(
        "--workdir", type=Path, default=ROOT / ".run", help="state and logs (default: .run/)"
    )
    parser.add_argument(
        "--migrate-only",
        action="store_true",
        help="create the database if needed, run the migrations, and exit",
    )
    args = parser.parse_args(argv)
    # SIGINT too: a shell starting us in the background hands us SIGINT ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # respect nohup
        signal.signal(signal.SIGHUP, _interrupt)
    status = 1
    with ExitStack() as cleanup:
        try:
            status = _run(args, cleanup)
        except KeyboardInterrupt:
            say("stopping")
            status = 0
        except (ServerUnavailable, ProcessFailed, LLMUnavailable) as exc:
            print(f"\nmake run failed: {exc}\n", file=sys.stderr)
        finally:
            # Let the cleanup finish: every step of it has its own deadline.
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(signum, signal.SIG_IGN)
    if not args.migrate_only:
        say("stopped")
    return status


if __name__ == "__main__":
    sys.exit(main())
