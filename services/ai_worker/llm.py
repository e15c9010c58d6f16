"""The LLM client: the `openai` SDK at a configurable base URL, with our one layer of retries.

The SDK's own retries are off (`max_retries=0`) so that retries, backoff and their metrics live
in one place: 429, 5xx, timeouts and dropped connections are retried with exponential backoff
and full jitter (honouring a provider's Retry-After up to the cap); anything else fails at once.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import openai
import orjson
import structlog
from prometheus_client import Counter, Histogram

from services.ai_worker.settings import WorkerSettings
from shared import tracing

log = structlog.get_logger(component="llm")

LLM_ERRORS = Counter(
    "ai_llm_errors_total",
    "Failed LLM calls by kind (rate_limited, server_error, timeout, connection, bad_request).",
    ["kind"],
)
LLM_LATENCY = Histogram(
    "ai_llm_request_duration_seconds",
    "One LLM call, from request to complete answer.",
    ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300),
)


class StreamError(Exception):
    """The provider reported an error inside a stream it had started (an `error` chunk)."""


_RETRYABLE: dict[type[Exception], str] = {
    openai.RateLimitError: "rate_limited",
    openai.InternalServerError: "server_error",
    StreamError: "server_error",
    openai.APITimeoutError: "timeout",
    openai.APIConnectionError: "connection",
}
# The packages of the SDK's HTTP stack (it ships its own httpx fork): what they raise while the
# stream is read (a dropped connection, a read timeout) is a connection error of the call.
_TRANSPORT_PACKAGES = frozenset({"httpx", "httpx2", "httpcore", "h11", "anyio"})


def _as_sdk_error(exc: Exception, request: Any) -> openai.APIConnectionError:
    if "Timeout" in type(exc).__name__:
        return openai.APITimeoutError(request=request)
    return openai.APIConnectionError(message=f"{type(exc).__name__}: {exc}", request=request)


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    input_tokens: int
    output_tokens: int
    model: str
    latency_seconds: float
    attempts: int
    time_to_first_token_seconds: float | None = None
    # Stopped at the owner's request: `text` is what was generated until then.
    cancelled: bool = False


class Cancelled(Exception):
    """Raised by an `on_piece` listener to stop the generation (the job was cancelled)."""


class LLMError(Exception):
    """The provider could not produce a reply; `code` is what the caller is told."""

    def __init__(self, code: str, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable


def estimate_tokens(text: str) -> int:
    """A provider-independent estimate (about four characters a token) for budgets and for
    servers that report no usage."""
    return max(1, (len(text) + 3) // 4)


class LLMClient:
    def __init__(
        self, settings: WorkerSettings, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self._settings = settings
        self._sleep = sleep
        self._client = openai.OpenAI(
            base_url=settings.llm_base_url,
            api_key=settings.llm_api_key.get_secret_value(),
            timeout=settings.llm_timeout_seconds,
            max_retries=0,
        )

    def resolve_model(self, agent_model: str) -> str:
        return self._settings.llm_default_model if agent_model == "default" else agent_model

    def complete(
        self,
        *,
        model: str,
        messages: Sequence[dict[str, str]],
        temperature: float,
        max_tokens: int,
        on_piece: Callable[[str], None] | None = None,
        on_restart: Callable[[], None] | None = None,
    ) -> Completion:
        """Streams the reply (for time to first token, and for `on_piece` listeners); a retry
        after some pieces were handed out calls `on_restart` first."""
        s = self._settings
        for attempt in range(1, s.llm_max_attempts + 1):
            started = time.perf_counter()
            received = _Received()
            try:
                # The SDK makes the request (auth, headers, status errors); the stream's chunks
                # are read as plain JSON: building an SDK model per chunk cost ~2 ms a reply.
                # The body goes in as `extra_body`, which the SDK sends as given: its typed
                # parameters are walked key by key against their TypedDicts (~1 ms a call for
                # a short prompt, more for long histories), and ours are plain JSON already.
                with self._client.chat.completions.with_streaming_response.create(
                    model=model,
                    messages=[],
                    stream=True,
                    # The provider's side joins the job's trace (W3C Trace Context).
                    extra_headers=_trace_headers(),
                    extra_body={
                        "messages": list(messages),
                        "temperature": temperature,
                        "max_tokens": max_tokens,
                        "stream_options": {"include_usage": True},
                    },
                ) as response:
                    try:
                        for chunk in _chunks(_lines(response.iter_bytes())):
                            received.add(chunk, started, on_piece)
                    except Cancelled:
                        # Leaving the block closes the response: the upstream call is aborted,
                        # so no more tokens are paid for.
                        latency = time.perf_counter() - started
                        return received.completion(
                            model, latency, attempt, messages, cancelled=True
                        )
                    except StreamError:
                        raise
                    except Exception as exc:
                        if type(exc).__module__.split(".")[0] not in _TRANSPORT_PACKAGES:
                            raise
                        raise _as_sdk_error(exc, response.http_request) from exc
            except tuple(_RETRYABLE) as exc:
                if received.pieces and on_restart is not None:
                    on_restart()
                kind = _kind_of(exc)
                LLM_ERRORS.labels(kind).inc()
                if attempt == s.llm_max_attempts:
                    raise LLMError(
                        f"llm_{kind}",
                        f"The model provider failed {attempt} times ({kind}): {exc}",
                        retryable=True,
                    ) from exc
                delay = self._backoff(attempt, exc)
                log.warning("llm_retry", kind=kind, attempt=attempt, delay_seconds=round(delay, 3))
                self._sleep(delay)  # backoff between attempts, not synchronisation
                continue
            except openai.APIStatusError as exc:
                LLM_ERRORS.labels("bad_request").inc()
                raise LLMError(
                    "llm_rejected",
                    f"The model provider refused the request: {exc}",
                    retryable=False,
                ) from exc
            latency = time.perf_counter() - started
            LLM_LATENCY.labels(model).observe(latency)
            return received.completion(model, latency, attempt, messages)
        raise AssertionError("unreachable")  # pragma: no cover

    def _backoff(self, attempt: int, exc: Exception) -> float:
        s = self._settings
        cap = min(s.llm_backoff_max_seconds, s.llm_backoff_base_seconds * 2 ** (attempt - 1))
        delay = random.uniform(0, cap)  # full jitter: retries of many jobs spread out
        retry_after = _retry_after(exc)
        if retry_after is not None:
            delay = max(delay, min(retry_after, s.llm_backoff_max_seconds))
        return delay


def _trace_headers() -> dict[str, str] | None:
    context = tracing.current()
    return {tracing.TRACEPARENT_HEADER: context.traceparent} if context is not None else None


def _kind_of(exc: Exception) -> str:
    for cls, kind in _RETRYABLE.items():
        if isinstance(exc, cls):
            return kind
    return "unknown"


def _retry_after(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _lines(pieces: Iterator[bytes]) -> Iterator[bytes]:
    """The lines of a Server-Sent Events body as it arrives, without their ends (LF, CRLF or a
    lone CR, as the format allows). Bytes, split here: the SDK's text lines decode and re-split
    every piece through two more layers, a third of the stream's reading time."""
    rest = b""
    for piece in pieces:
        if b"\r" in piece:
            piece = piece.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        # A CRLF split across two pieces leaves a CR at the end of the first (now an LF) and an
        # LF at the start of the second: one blank line more, which `_chunks` skips.
        *lines, rest = (rest + piece).split(b"\n")
        yield from lines
    if rest:
        yield rest


def _chunks(lines: Iterator[bytes]) -> Iterator[dict[str, Any]]:
    """The JSON chunks of an OpenAI-style Server-Sent Events stream, up to `[DONE]`."""
    for line in lines:
        if not line.startswith(b"data:"):
            continue  # blank separators, comments, `event:` lines
        data = line[5:].strip()
        if data == b"[DONE]":
            return
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise StreamError(f"a malformed chunk in the stream: {data[:200]!r}") from exc
        if not isinstance(chunk, dict):
            continue
        if chunk.get("error"):
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else str(error)
            raise StreamError(f"error in the stream: {message}")
        yield chunk


class _Received:
    """What one streamed call produced so far."""

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.usage: dict[str, Any] | None = None
        self.model: str | None = None
        self.first_token_seconds: float | None = None

    def add(
        self, chunk: dict[str, Any], started: float, on_piece: Callable[[str], None] | None
    ) -> None:
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        self.model = chunk.get("model") or self.model
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if not text:
                continue
            if self.first_token_seconds is None:
                self.first_token_seconds = time.perf_counter() - started
            self.pieces.append(text)
            if on_piece is not None:
                on_piece(text)

    def completion(
        self,
        model: str,
        latency: float,
        attempts: int,
        messages: Sequence[dict[str, str]],
        *,
        cancelled: bool = False,
    ) -> Completion:
        text = "".join(self.pieces)
        usage = self.usage
        if usage is not None and usage.get("prompt_tokens") is not None:
            input_tokens, output_tokens = (
                int(usage["prompt_tokens"]),
                int(usage.get("completion_tokens") or 0),
            )
        else:
            # Servers that send no usage in streams (llama.cpp's): our own estimate.
            input_tokens = sum(estimate_tokens(m["content"]) + 4 for m in messages)
            output_tokens = estimate_tokens(text) if text else 0
        return Completion(
            text=text,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            model=self.model or model,
            latency_seconds=latency,
            attempts=attempts,
            time_to_first_token_seconds=self.first_token_seconds,
            cancelled=cancelled,
        )
