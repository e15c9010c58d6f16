"""Generating one reply: load the job, build the prompt, call the model, store the outcome."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC
from decimal import Decimal
from typing import Any, TypeVar

import redis
import structlog
from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from services.ai_worker import repository as repo
from services.ai_worker.batches import BatchDispatcher
from services.ai_worker.gate import BatchGate, GateClosed
from services.ai_worker.job_stream import JobEvents, StreamWriter
from services.ai_worker.llm import Cancelled, Completion, LLMClient, LLMError, estimate_tokens
from services.ai_worker.settings import WorkerSettings
from shared.jobs import JobDone, job_cancel_key

log = structlog.get_logger(component="reply")

Job = Mapping[str, Any]  # a job's row as a delivery started it (repository.start_job)
T = TypeVar("T")

# The longest reply a job-done announcement carries (longer ones are read from Postgres).
ANNOUNCED_REPLY_MAX_CHARS = 16_000

JOBS = Counter("ai_jobs_total", "AI jobs finished, by outcome.", ["outcome"])
JOBS_IN_FLIGHT = Gauge("ai_jobs_in_flight", "AI jobs being generated right now.")
QUEUE_WAIT = Histogram(
    "ai_job_queue_wait_seconds",
    "From a job's creation to the start of its (first) generation.",
    buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600),
)
GENERATION = Histogram(
    "ai_job_generation_seconds",
    "From the start of a job's generation to its stored outcome.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300),
)
TIME_TO_FIRST_TOKEN = Histogram(
    "ai_llm_time_to_first_token_seconds",
    "From sending a model call to its first streamed token, by model.",
    ["model"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
TOKENS = Counter(
    "ai_llm_tokens_total", "Tokens used, by model, agent and kind.", ["model", "agent", "kind"]
)
COST = Counter(
    "ai_llm_cost_total",
    "Cost of generated replies (agent prices), by model and agent.",
    ["model", "agent"],
)


def price(agent: Mapping[str, Any], completion: Completion) -> Decimal:
    """Cost at the agent's prices when the reply was generated."""
    per_1k = Decimal(1000)
    return (
        Decimal(completion.input_tokens) * Decimal(agent["input_price_per_1k"]) / per_1k
        + Decimal(completion.output_tokens) * Decimal(agent["output_price_per_1k"]) / per_1k
    ).quantize(Decimal("0.000001"))


def _size(size: int | None) -> str:
    value = float(size or 0)
    if value < 1024:
        return f"{value:.0f} bytes"
    if value < 1024 * 1024:
        return f"{value / 1024:.1f} KiB"
    return f"{value / (1024 * 1024):.1f} MiB"


def _file_label(attachment: dict[str, Any]) -> str:
    return (
        f"[Attached file: {attachment['file_name']} ({attachment['file_type']}, "
        f"{_size(attachment['file_size'])})"
    )


class _Budget:
    def __init__(self, tokens: int) -> None:
        self.left = tokens

    def take(self, tokens: int) -> bool:
        if tokens > self.left:
            return False
        self.left -= tokens
        return True


def render_message(row: Mapping[str, Any], budget: _Budget | None) -> str:
    """A message's text for the prompt: its content, then its attachments. A text file's text
    is included while it fits the budget (None: names only, as without context); other types,
    and text that does not fit, are named with the reason."""
    attachments: list[dict[str, Any]] = list(row.get("attachments") or [])
    if not attachments:
        return str(row["content"])
    parts = [str(row["content"])] if row["content"] else []
    for attachment in attachments:
        label = _file_label(attachment)
        text = attachment.get("text")
        whole = text is not None and len(text) == attachment.get("text_chars")
        if budget is None:
            parts.append(f"{label}: not included]")
        elif text is None:
            parts.append(f"{label}: not included: not a text file or too large]")
        elif whole and budget.take(estimate_tokens(text) + 16):
            parts.append(f"{label}]\n{text}\n[End of {attachment['file_name']}]")
        else:
            parts.append(f"{label}: not included: over the context budget]")
    return "\n\n".join(parts)


def build_prompt(
    agent: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    *,
    include_context: bool,
    budget_tokens: int,
) -> list[dict[str, str]]:
    """System prompt, then as much recent history as fits the budget, oldest first; the last
    message is the one being answered. Without context: that message alone, its attachments
    named only. Attachments' text counts against the same budget, the answered message's first,
    then the history's, newest first."""
    if not history:
        return []
    latest, earlier = history[0], history[1:]
    messages: list[dict[str, str]] = []
    if not include_context:
        chosen = [(latest, render_message(latest, None))]
    else:
        system = agent["system_prompt"] or ""
        budget = _Budget(
            budget_tokens - estimate_tokens(system) - estimate_tokens(str(latest["content"]))
        )
        chosen = [(latest, render_message(latest, budget))]
        for row in earlier:
            # The message with its files named must fit; their text then goes in if it fits too.
            if not budget.take(estimate_tokens(render_message(row, None)) + 4):
                break
            chosen.append((row, render_message(row, budget)))
        if system:
            messages.append({"role": "system", "content": system})
    for row, content in reversed(chosen):
        role = "assistant" if row["sender"] == "agent" else "user"
        messages.append({"role": role, "content": content})
    return messages


class ReplyService:
    def __init__(
        self,
        settings: WorkerSettings,
        engine: Engine,
        llm: LLMClient,
        redis_client: redis.Redis,
        batches: BatchDispatcher | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.llm = llm
        self.redis = redis_client
        self.batches = batches
        self.streams = StreamWriter(redis_client)
        # The hot path's statements are each atomic alone: no BEGIN or COMMIT round trips.
        self.statements = engine.execution_options(isolation_level="AUTOCOMMIT")
        # No model call outlives the task's time limit: a dead worker's slot is free by then.
        self.gate = BatchGate(
            redis_client, settings.redis_prefix, lease_seconds=settings.task_time_limit_seconds
        )

    def generate(self, job_id: int) -> str:
        """Runs one delivery of the job; returns its outcome. Safe to run any number of times:
        a final job is left alone and a stored reply is never stored again."""
        started = self._statement(
            lambda conn: repo.start_job(
                conn,
                job_id,
                history_limit=100,
                # About four characters a token: more text could never fit the budget.
                max_text_chars=4 * self.settings.context_budget_tokens + 4,
            )
        )
        if started is None:
            # A duplicate or late delivery of a job that is already final.
            log.info("delivery_skipped", job_id=job_id)
            return "skipped"
        job = started.job
        if job["attempts"] > self.settings.max_deliveries:
            # Delivered again and again without finishing: its worker keeps dying on it.
            return self._fail(
                job, "too_many_deliveries", f"Gave up after {job['attempts'] - 1} deliveries"
            )
        if job["attempts"] == 1:
            QUEUE_WAIT.observe(max(0.0, time.time() - job["created_at"].timestamp()))
        JOBS_IN_FLIGHT.inc()
        began = time.perf_counter()
        try:
            return self._generate(job, started.agent, started.history, began)
        finally:
            JOBS_IN_FLIGHT.dec()
            GENERATION.observe(time.perf_counter() - began)

    def _generate(
        self,
        job: Job,
        agent: Mapping[str, Any] | None,
        history: list[dict[str, Any]],
        started: float,
    ) -> str:
        if agent is None:
            return self._fail(job, "no_agent", "No agent is configured")
        messages = build_prompt(
            agent,
            history,
            include_context=job["include_context"],
            budget_tokens=self.settings.context_budget_tokens,
        )
        if not messages:
            return self._fail(job, "empty_prompt", "The conversation has no message")
        model = self.llm.resolve_model(job["model"] or agent["model"])
        events = JobEvents(self.streams, self.settings.redis_prefix, job["id"])
        watch = CancelWatch(self.redis, self.settings.redis_prefix, job["id"])

        def on_piece(text: str) -> None:
            events.token(text)
            watch.check()

        batch_id, slots = job["batch_id"], job["batch_concurrency"]
        gated = False
        if batch_id is not None and slots is not None:
            try:
                gated = self.gate.acquire(
                    batch_id,
                    job["id"],
                    int(slots),
                    still_wanted=lambda: self._still_wanted(job, watch),
                    # Half the task's time limit: the call that follows needs the rest.
                    deadline=time.monotonic() + self.settings.task_time_limit_seconds / 2,
                )
            except GateClosed as exc:
                if exc.cancelled:
                    return self._cancel(job, str(exc))
                return self._fail(job, "batch_slot_timeout", str(exc))
        try:
            completion = self.llm.complete(
                model=model,
                messages=messages,
                temperature=float(agent["temperature"]),
                max_tokens=int(agent["max_tokens"]),
                on_piece=on_piece,
                on_restart=events.reset,
            )
        except LLMError as exc:
            return self._fail(job, exc.code, str(exc))
        finally:
            if gated:
                # Before the reply is stored: the next job's call need not wait for that.
                self.gate.release(batch_id, job["id"], int(slots))
        cost = price(agent, completion)
        elapsed = time.perf_counter() - started
        status = "incomplete" if completion.cancelled else "completed"
        stored = self._statement(
            lambda conn: repo.store_reply(
                conn,
                job=job,
                agent_id=agent["id"],
                model=completion.model,
                content=completion.text,
                input_tokens=completion.input_tokens,
                output_tokens=completion.output_tokens,
                cost=cost,
                processing_time=elapsed,
                time_to_first_token=completion.time_to_first_token_seconds,
                session_idle=self.settings.session_idle,
                status=status,
            )
        )
        if stored is None:
            return self._finished(job, "duplicate")
        agent_label = str(agent["id"])
        if completion.time_to_first_token_seconds is not None:
            TIME_TO_FIRST_TOKEN.labels(completion.model).observe(
                completion.time_to_first_token_seconds
            )
        TOKENS.labels(completion.model, agent_label, "input").inc(completion.input_tokens)
        TOKENS.labels(completion.model, agent_label, "output").inc(completion.output_tokens)
        COST.labels(completion.model, agent_label).inc(float(cost))
        log.info(
            "reply_stored",
            job_id=job["id"],
            message_id=stored.message_id,
            tokens=completion.input_tokens + completion.output_tokens,
            seconds=round(elapsed, 3),
            attempts=completion.attempts,
        )
        # The reply's row as chat reads it, so the waiting request answers without a read (a
        # long one is read: the announcement goes to every chat process).
        reply: dict[str, Any] | None = {
            "status": status,
            "model": completion.model,
            "error_code": None,
            "error": None,
            "input_tokens": completion.input_tokens,
            "output_tokens": completion.output_tokens,
            "cost": float(cost),
            "processing_time": elapsed,
            "reply_message_id": stored.message_id,
            "reply_content": completion.text,
            "reply_created_at": stored.created_at.astimezone(UTC).isoformat(),
        }
        if len(completion.text) > ANNOUNCED_REPLY_MAX_CHARS:
            reply = None
        return self._finished(job, status, reply)

    def _statement(self, work: Callable[[Connection], T]) -> T:
        """Runs one of the job's statements (each atomic alone), once more on a new connection
        if the pooled one turns out to be dead (Postgres restarted or failed over since its last
        use: connections are pinged only after sitting idle). A retried start counts one more
        attempt if the first did commit; a retried store finds the reply stored and stops."""
        try:
            with self.statements.connect() as conn:
                return work(conn)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            log.warning("db_connection_lost", error=type(exc.orig).__name__)
        with self.statements.connect() as conn:
            return work(conn)

    def _still_wanted(self, job: Job, watch: CancelWatch) -> bool:
        """A waiting batch job is dropped when its batch stops or it is cancelled itself."""
        if watch.requested():
            return False
        try:
            with self.engine.connect() as conn:
                return repo.batch_is_running(conn, int(job["batch_id"]))
        except SQLAlchemyError:
            return True  # cannot tell: keep waiting

    def _cancel(self, job: Job, error: str) -> str:
        with self.engine.begin() as conn:
            changed = repo.cancel_job(conn, job_id=job["id"], error=error)
        log.info("reply_cancelled_before_call", job_id=job["id"])
        return self._finished(job, "cancelled" if changed else "duplicate")

    def _fail(self, job: Job, code: str, error: str) -> str:
        with self.engine.begin() as conn:
            changed = repo.fail_job(conn, job_id=job["id"], code=code, error=error)
        log.warning("reply_failed", job_id=job["id"], code=code, error=error[:300])
        return self._finished(job, "failed" if changed else "duplicate")

    def _finished(self, job: Job, outcome: str, reply: dict[str, Any] | None = None) -> str:
        JOBS.labels(outcome).inc()
        self.announce(job["id"], JobDone(outcome, reply))
        if job["batch_id"] is not None and self.batches is not None:
            # Its slot is free: the batch's next job starts now, not at the next sweep.
            try:
                self.batches.top_up_after_job(int(job["batch_id"]))
            except SQLAlchemyError as exc:
                log.warning(
                    "batch_top_up_failed", batch_id=job["batch_id"], error=type(exc).__name__
                )
        return outcome

    def announce(self, job_id: int, done: JobDone) -> None:
        """Tells the requests waiting on the job (and its event stream) that it is final; if
        Redis cannot be reached they find out from the job's row, where the outcome is."""
        JobEvents(self.streams, self.settings.redis_prefix, job_id).end(done)


class CancelWatch:
    """Looks at the job's cancel flag in Redis, at most every `INTERVAL` seconds of streaming,
    the first time `INTERVAL` after the job started: a reply generated faster than a person can
    press "stop" costs no look, and a cancel that reaches it finds the reply complete (a queued
    job's cancel is done by the chat service without the worker)."""

    INTERVAL = 0.2

    def __init__(self, client: redis.Redis, prefix: str, job_id: int) -> None:
        self._client = client
        self._key = job_cancel_key(prefix, job_id)
        self._next = time.monotonic() + self.INTERVAL

    def check(self) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.INTERVAL
        if self.requested():
            raise Cancelled

    def requested(self) -> bool:
        try:
            return bool(self._client.exists(self._key))
        except redis.RedisError:
            return False  # cannot tell: keep going
