"""A job's events in its Redis stream (tokens as generated, `reset`, `end`), for clients that
follow the job as Server-Sent Events. Best effort: the reply itself is stored in Postgres
whatever happens here.

Tokens are written in batches: one writer per worker process collects them from every running
job and appends what arrived every `FLUSH_SECONDS` in one pipeline, instead of a round trip per
token per job (which cost about 1.5 ms of a job's CPU with ~20 tokens), and a job's tokens of
one batch are one entry. `reset` and `end` are written at once, after the tokens before them: a
stream's order is always the order of calls. The job-done announcement goes out in the same
round trip as `end`, after it.
"""

from __future__ import annotations

import threading
import time

import redis
import structlog

from shared.jobs import JOB_STREAM_TTL_SECONDS, JobDone, job_done_channel, job_stream_key

log = structlog.get_logger(component="job_stream")

FLUSH_SECONDS = 0.025
MAXLEN = 100_000


class StreamWriter:
    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._pending: dict[str, list[dict[str, str]]] = {}
        self._lock = threading.Lock()  # guards _pending
        self._writing = threading.Lock()  # one write at a time: keeps each stream in order
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed_logged = False

    def add(
        self,
        key: str,
        fields: dict[str, str],
        *,
        now: bool = False,
        publish: tuple[str, str] | None = None,
    ) -> None:
        """Appends an event: batched, or `now` (with a message to `publish` after it)."""
        if not now:
            with self._lock:
                self._pending.setdefault(key, []).append(fields)
                self._start()
            self._wake.set()
            return
        with self._writing:
            with self._lock:
                entries = self._pending.pop(key, [])
            entries.append(fields)
            self._write({key: entries}, publish)

    def flush(self) -> None:
        with self._writing:
            with self._lock:
                pending, self._pending = self._pending, {}
            if pending:
                self._write(pending)

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="job-stream-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            # Gather what arrives meanwhile (the batching interval, not synchronisation).
            time.sleep(FLUSH_SECONDS)
            self.flush()

    def _write(
        self, batches: dict[str, list[dict[str, str]]], publish: tuple[str, str] | None = None
    ) -> None:
        try:
            pipe = self._client.pipeline(transaction=False)
            for key, entries in batches.items():
                for fields in _merged(entries):
                    pipe.xadd(key, fields, maxlen=MAXLEN, approximate=True)  # type: ignore[arg-type]
                pipe.expire(key, JOB_STREAM_TTL_SECONDS)
            if publish is not None:
                pipe.publish(*publish)
            pipe.execute()
            self._failed_logged = False
        except redis.RedisError as exc:
            if not self._failed_logged:
                self._failed_logged = True
                log.warning("job_stream_unavailable", error=type(exc).__name__)


def _merged(entries: list[dict[str, str]]) -> list[dict[str, str]]:
    """Consecutive tokens as one event with their texts joined: what arrived within one flush
    interval is one stream entry (and one SSE event) instead of one per token, the same text
    for a client, a fraction of the Redis commands for the worker."""
    merged: list[dict[str, str]] = []
    for fields in entries:
        if fields.get("type") == "token" and merged and merged[-1].get("type") == "token":
            merged[-1] = {"type": "token", "text": merged[-1]["text"] + fields["text"]}
        else:
            merged.append(fields)
    return merged


class JobEvents:
    """One job's view of the writer."""

    def __init__(self, writer: StreamWriter, prefix: str, job_id: int) -> None:
        self._writer = writer
        self._key = job_stream_key(prefix, job_id)
        self._done_channel = job_done_channel(prefix, job_id)

    def token(self, text: str) -> None:
        self._writer.add(self._key, {"type": "token", "text": text})

    def reset(self) -> None:
        """The model call is retried: what was streamed so far is void."""
        self._writer.add(self._key, {"type": "reset"}, now=True)

    def end(self, done: JobDone) -> None:
        """The stream's last event, then the announcement that wakes the requests waiting for
        the job (without it they find the outcome in the job's row, later)."""
        self._writer.add(
            self._key,
            {"type": "end", "outcome": done.outcome},
            now=True,
            publish=(self._done_channel, done.encode()),
        )
