"""The LLM stub, driven through the real `openai` SDK (sync and async), as the services use it."""

from __future__ import annotations

import asyncio
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support.llm_stub import (
    RunningStub,
    StubControl,
    count_tokens,
    expected_reply,
    start_in_thread,
    stream_pieces,
)

ROOT = Path(__file__).resolve().parents[2]
MODEL = "stub-test-model"


@pytest.fixture(scope="module")
def stub() -> Iterator[RunningStub]:
    with start_in_thread() as running:
        yield running


@pytest.fixture(autouse=True)
def _reset(stub: RunningStub) -> None:
    stub.control.reset()


@pytest.fixture
def client(stub: RunningStub) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=stub.base_url, api_key="test", max_retries=0) as sdk:
        yield sdk


@pytest.fixture
async def aclient(stub: RunningStub) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=stub.base_url, api_key="test", max_retries=0) as sdk:
        yield sdk


def tag() -> str:
    """A word unique to one test, to find its requests among the recorded ones."""
    return f"t{uuid.uuid4().hex[:10]}"


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def stream_texts(chunks: Any) -> list[str]:
    """The non-empty content pieces of a chat completion stream, in order."""
    return [
        chunk.choices[0].delta.content
        for chunk in chunks
        if chunk.choices and chunk.choices[0].delta.content
    ]


# --- answers ----------------------------------------------------------------------------------


def test_non_streaming_reply_has_the_echo_and_word_counted_usage(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "first  question"},
            {"role": "assistant", "content": "an answer"},
            {"role": "user", "content": "hello big   world"},
        ],
    )

    assert result.model == MODEL
    assert result.object == "chat.completion"
    assert result.choices[0].message.role == "assistant"
    assert result.choices[0].message.content == "Echo: hello big world"
    assert result.choices[0].finish_reason == "stop"
    assert result.usage is not None
    assert result.usage.prompt_tokens == 3 + 2 + 2 + 3
    assert result.usage.completion_tokens == 4
    assert result.usage.total_tokens == 14


def test_streaming_pieces_concatenate_to_the_reply_and_usage_comes_last(
    client: openai.OpenAI,
) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=user("stream these four words"),
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    pieces = stream_texts(chunks)
    assert pieces == ["Echo:", " stream", " these", " four", " words"]
    assert "".join(pieces) == "Echo: stream these four words"
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["stop"]
    *content_chunks, last = chunks
    assert all(c.usage is None for c in content_chunks)
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (4, 5)
    assert last.usage.total_tokens == 9


def test_streaming_without_include_usage_sends_no_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(model=MODEL, messages=user("no usage please"), stream=True)
    )

    assert "".join(stream_texts(chunks)) == "Echo: no usage please"
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_usage_in_stream_false_withholds_usage_like_llama_cpp(
    client: openai.OpenAI, stub: RunningStub
) -> None:
    stub.control.configure(usage_in_stream=False)

    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=user("count it yourself"),
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    assert "".join(stream_texts(chunks)) == "Echo: count it yourself"
    assert all(c.usage is None for c in chunks)


async def test_async_client_streams_and_answers(aclient: openai.AsyncOpenAI) -> None:
    stream = await aclient.chat.completions.create(
        model=MODEL,
        messages=user("async hello"),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    result = await aclient.chat.completions.create(model=MODEL, messages=user("async again"))

    assert "".join(stream_texts(chunks)) == "Echo: async hello"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3
    assert result.choices[0].message.content == "Echo: async again"


def test_max_tokens_truncates_the_reply_with_finish_reason_length(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(
        model=MODEL, messages=user("one two three four five"), max_tokens=3
    )
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=user("one two three four five"),
            max_completion_tokens=2,
            stream=True,
        )
    )

    assert result.choices[0].message.content == "Echo: one two"
    assert result.choices[0].finish_reason == "length"
    assert result.usage is not None
    assert result.usage.completion_tokens == 3
    assert stream_texts(chunks) == ["Echo:", " one"]
    assert chunks[-1].choices[0].finish_reason == "length"


def test_fixed_reply_replaces_the_echo(client: openai.OpenAI, stub: RunningStub) -> None:
    stub.control.configure("reply", reply="A fixed  answer.\n")

    result = client.chat.completions.create(model=MODEL, messages=user("anything"))
    pieces = stream_texts(
        client.chat.completions.create(model=MODEL, messages=user("anything"), stream=True)
    )

    assert result.choices[0].message.content == "A fixed  answer.\n"
    assert result.usage is not None
    assert result.usage.completion_tokens == 3
    assert pieces == ["A", " fixed", "  answer.\n"]


def test_models_lists_the_stub_model(client: openai.OpenAI) -> None:
    assert [model.id for model in client.models.list()] == ["stub-model"]


def test_invalid_request_is_a_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model=MODEL, messages=user("hot"), temperature=3.5)


def test_reply_and_token_helpers_follow_the_documented_rule() -> None:
    assert expected_reply("  hi [[delay:0]]  there ") == "Echo: hi there"
    assert expected_reply("") == "Echo:"
    assert stream_pieces("Echo: a  b\n") == ["Echo:", " a", "  b\n"]
    assert stream_pieces("") == []
    assert count_tokens("Echo: a  b\n") == 3


# --- failures ---------------------------------------------------------------------------------


def test_429_raises_rate_limit_error_with_retry_after(
    client: openai.OpenAI, stub: RunningStub
) -> None:
    stub.control.configure("fail", status=429)
    with pytest.raises(openai.RateLimitError) as default:
        client.chat.completions.create(model=MODEL, messages=user("too many"))

    stub.control.configure("fail", status=429, retry_after=2.5)
    with pytest.raises(openai.RateLimitError) as explicit:
        client.chat.completions.create(model=MODEL, messages=user("too many"), stream=True)

    assert default.value.status_code == 429
    assert default.value.response.headers["retry-after"] == "1"
    assert default.value.code == "rate_limit_exceeded"
    assert explicit.value.response.headers["retry-after"] == "3"
    assert explicit.value.response.headers["retry-after-ms"] == "2500"


@pytest.mark.parametrize("status", [500, 503])
def test_5xx_raises_internal_server_error(
    client: openai.OpenAI, stub: RunningStub, status: int
) -> None:
    stub.control.configure("fail", status=status)

    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(model=MODEL, messages=user("boom"))

    assert raised.value.status_code == status
    assert "retry-after" not in raised.value.response.headers


def test_fail_times_two_then_ok(client: openai.OpenAI, stub: RunningStub) -> None:
    stub.control.configure("fail", status=500, times=2)

    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model=MODEL, messages=user("retry me"))
    result = client.chat.completions.create(model=MODEL, messages=user("retry me"))

    assert result.choices[0].message.content == "Echo: retry me"
    assert [r["outcome"] for r in stub.control.requests()] == ["failed", "failed", "completed"]
    view = httpx.get(f"{stub.url}/control").json()
    assert view["behaviour"]["mode"] == "ok"
    assert view["remaining"] is None


def test_sdk_retries_honour_retry_after_ms_then_succeed(stub: RunningStub) -> None:
    stub.control.configure("fail", status=503, times=2, retry_after=0.01)

    with openai.OpenAI(base_url=stub.base_url, api_key="test", max_retries=2) as sdk:
        result = sdk.chat.completions.create(model=MODEL, messages=user("eventually"))

    assert result.choices[0].message.content == "Echo: eventually"
    assert [r["outcome"] for r in stub.control.requests()] == ["failed", "failed", "completed"]


def test_fail_without_times_always_fails(client: openai.OpenAI, stub: RunningStub) -> None:
    stub.control.configure("fail", status=500)

    for _ in range(4):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model=MODEL, messages=user("down"))

    assert [r["outcome"] for r in stub.control.requests()] == ["failed"] * 4


def test_hang_makes_the_sdk_time_out(client: openai.OpenAI, stub: RunningStub) -> None:
    stub.control.configure("hang")
    marker = tag()

    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model=MODEL, messages=user(marker), timeout=0.5)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model=MODEL, messages=user(marker), stream=True, timeout=0.5)

    # The stub notices the client giving up.
    gone = stub.control.wait_for_requests(2, contains=marker, outcome="client_disconnected")
    assert [r["action"] for r in gone] == ["hang", "hang"]


async def test_a_hanging_request_does_not_block_others(
    aclient: openai.AsyncOpenAI, stub: RunningStub
) -> None:
    marker = tag()
    hanging = asyncio.create_task(
        aclient.chat.completions.create(model=MODEL, messages=user(f"{marker} [[hang]]"))
    )
    try:
        await asyncio.to_thread(stub.control.wait_for_requests, 1, contains=marker)
        answered = await aclient.chat.completions.create(
            model=MODEL, messages=user("meanwhile"), timeout=10
        )
        assert answered.choices[0].message.content == "Echo: meanwhile"
        assert not hanging.done()
    finally:
        hanging.cancel()
    with pytest.raises(asyncio.CancelledError):
        await hanging
    gone = await asyncio.to_thread(
        stub.control.wait_for_requests, 1, contains=marker, outcome="client_disconnected"
    )
    assert gone[0]["sent_tokens"] == 0


def test_delay_holds_the_answer_back(client: openai.OpenAI, stub: RunningStub) -> None:
    stub.control.configure(delay_seconds=5)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model=MODEL, messages=user("slow"), timeout=0.3)

    stub.control.configure(delay_seconds=0.2)
    started = time.monotonic()
    result = client.chat.completions.create(model=MODEL, messages=user("slow"))

    assert time.monotonic() - started >= 0.2
    assert result.choices[0].message.content == "Echo: slow"


def test_drop_stream_after_n_tokens_breaks_the_sdk_stream(
    client: openai.OpenAI, stub: RunningStub
) -> None:
    stub.control.configure("drop_stream_after", tokens=2)
    pieces: list[str] = []

    stream = client.chat.completions.create(
        model=MODEL, messages=user("one two three four"), stream=True
    )
    with pytest.raises(openai.APIConnectionError) as raised:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)

    # What the SDK really raises: a connection error (not a timeout) caused by httpx's
    # "peer closed connection without sending complete message body".
    assert type(raised.value) is openai.APIConnectionError
    assert "incomplete chunked read" in str(raised.value.__cause__)
    assert pieces == ["Echo:", " one"]
    (record,) = stub.control.requests()
    assert (record["outcome"], record["sent"], record["sent_tokens"]) == ("dropped", "Echo: one", 2)


def test_drop_of_a_non_streaming_request_is_a_connection_error(
    client: openai.OpenAI, stub: RunningStub
) -> None:
    stub.control.configure("drop_stream_after", tokens=1, times=1)

    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model=MODEL, messages=user("cut"))
    result = client.chat.completions.create(model=MODEL, messages=user("cut"))

    assert result.choices[0].message.content == "Echo: cut"


def test_the_stub_sees_a_client_abandon_a_slow_stream(
    client: openai.OpenAI, stub: RunningStub
) -> None:
    marker = tag()
    stream = client.chat.completions.create(
        model=MODEL, messages=user(f"{marker} a b c [[token_delay:30]]"), stream=True
    )
    pieces = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
            break
    stream.close()

    (record,) = stub.control.wait_for_requests(1, contains=marker, outcome="client_disconnected")
    assert pieces == ["Echo:"]
    assert (record["sent"], record["sent_tokens"]) == ("Echo:", 1)


# --- per-request directives -------------------------------------------------------------------


def test_directives_override_the_global_mode_for_their_request_only(
    client: openai.OpenAI, stub: RunningStub
) -> None:
    stub.control.configure("fail", status=500)

    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model=MODEL, messages=user("plain"))
    steered = client.chat.completions.create(
        model=MODEL, messages=user("steered [[reply:all fine]]")
    )
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=MODEL, messages=user("other [[fail:429]]"))

    assert steered.choices[0].message.content == "all fine"
    assert [(r["action"], r["source"]) for r in stub.control.requests()] == [
        ("fail", "global"),
        ("ok", "marker"),
        ("fail", "marker"),
    ]


def test_directive_failures_do_not_touch_other_requests(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model=MODEL, messages=user("this one [[fail:500]]"))
    fine = client.chat.completions.create(model=MODEL, messages=user("this one"))

    assert fine.choices[0].message.content == "Echo: this one"


def test_times_directive_counts_per_message_text(client: openai.OpenAI) -> None:
    job_a = f"job {tag()} [[fail:503]] [[times:2]]"
    job_b = f"job {tag()} [[fail:503]] [[times:1]]"

    outcomes = []
    for text in (job_a, job_b, job_a, job_b, job_a):
        try:
            client.chat.completions.create(model=MODEL, messages=user(text))
            outcomes.append("ok")
        except openai.InternalServerError:
            outcomes.append("503")

    assert outcomes == ["503", "503", "503", "ok", "ok"]


def test_directives_drop_and_stream_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=user("a b c [[drop:0]]"), stream=True
    )
    with pytest.raises(openai.APIConnectionError):
        list(stream)

    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=user("a b [[no_usage]]"),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(stream_texts(chunks)) == "Echo: a b"
    assert all(c.usage is None for c in chunks)


def test_unknown_directive_is_a_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="unknown directive"):
        client.chat.completions.create(model=MODEL, messages=user("oops [[fial:500]]"))


# --- the control API --------------------------------------------------------------------------


def test_requests_record_what_the_client_sent(client: openai.OpenAI, stub: RunningStub) -> None:
    marker = tag()
    messages: list[Any] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": f"{marker} hi"},
    ]
    client.chat.completions.create(model=MODEL, messages=messages, temperature=0.3, max_tokens=50)
    list(
        client.chat.completions.create(
            model="other-model",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    first, second = stub.control.requests(contains=marker)
    assert first["model"] == MODEL
    assert first["messages"] == messages
    assert first["temperature"] == 0.3
    assert first["max_tokens"] == 50
    assert first["stream"] is False
    assert first["headers"]["authorization"] == "Bearer test"
    assert first["headers"]["user-agent"].startswith("OpenAI/Python")
    assert first["outcome"] == "completed"
    assert first["reply"] == first["sent"] == f"Echo: {marker} hi"
    assert second["model"] == "other-model"
    assert second["stream"] is True
    assert second["stream_options"] == {"include_usage": True}
    assert second["temperature"] is None
    assert second["outcome"] == "completed"
    assert second["sent_tokens"] == 3


def test_control_rejects_unknown_fields_and_reset_restores_the_default(stub: RunningStub) -> None:
    rejected = httpx.post(f"{stub.url}/control", json={"mode": "fail", "stauts": 500})
    no_text = httpx.post(f"{stub.url}/control", json={"mode": "reply"})
    stub.control.configure("hang", times=3)
    stub.control.reset()

    assert rejected.status_code == 422
    assert no_text.status_code == 422
    view = httpx.get(f"{stub.url}/control").json()
    assert view["behaviour"]["mode"] == "ok"
    assert stub.control.requests() == []


def test_wait_for_requests_gives_up_at_its_deadline(stub: RunningStub) -> None:
    with pytest.raises(TimeoutError, match="0 of 1"):
        stub.control.wait_for_requests(contains="never-sent", timeout=0.2)


async def test_stats_count_requests_in_flight(
    aclient: openai.AsyncOpenAI, stub: RunningStub
) -> None:
    marker = tag()
    calls = [
        asyncio.create_task(
            aclient.chat.completions.create(model=MODEL, messages=user(f"{marker} {i} [[hang]]"))
        )
        for i in range(3)
    ]
    try:
        await asyncio.to_thread(
            stub.control.wait_for_requests, 3, contains=marker, outcome="in_progress"
        )
        stats = await asyncio.to_thread(stub.control.stats)
        assert stats["in_flight"] >= 3
        assert stats["max_in_flight"] >= 3
    finally:
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
    await asyncio.to_thread(
        stub.control.wait_for_requests, 3, contains=marker, outcome="client_disconnected"
    )


# --- lifecycle --------------------------------------------------------------------------------


def test_stop_releases_hanging_requests() -> None:
    running = start_in_thread({"mode": "hang"})
    errors: list[BaseException] = []

    def call() -> None:
        with openai.OpenAI(base_url=running.base_url, api_key="t", max_retries=0) as sdk:
            try:
                sdk.chat.completions.create(model=MODEL, messages=user("wait"), timeout=60)
            except openai.APIError as exc:
                errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    try:
        running.control.wait_for_requests(1)
    finally:
        running.stop(timeout=10)  # raises if the hanging request held it up
    caller.join(10)

    assert not caller.is_alive()
    assert len(errors) == 1


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while (remaining := deadline - time.monotonic()) > 0:
            if selector.select(remaining):
                return proc.stdout.readline()
    raise TimeoutError("llm-stub printed nothing")


def test_runs_as_its_own_process() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.llm_stub", "--port", "0", "--delay-seconds", "0"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = _read_line(proc, timeout=30)
        assert line.startswith("llm-stub listening on http://127.0.0.1:"), line
        url = line.split()[-1]
        control = StubControl(url)
        control.configure("fail", status=500, times=1)
        with openai.OpenAI(base_url=f"{url}/v1", api_key="p", max_retries=0) as sdk:
            with pytest.raises(openai.InternalServerError):
                sdk.chat.completions.create(model=MODEL, messages=user("proc"))
            result = sdk.chat.completions.create(model=MODEL, messages=user("proc"))
        assert result.choices[0].message.content == "Echo: proc"

        # A request hanging when the process is told to stop does not keep it alive.
        hanging: list[BaseException] = []

        def hang() -> None:
            with openai.OpenAI(base_url=f"{url}/v1", api_key="p", max_retries=0) as sdk:
                try:
                    sdk.chat.completions.create(model=MODEL, messages=user("[[hang]]"), timeout=60)
                except openai.APIError as exc:
                    hanging.append(exc)

        caller = threading.Thread(target=hang)
        caller.start()
        control.wait_for_requests(1, outcome="in_progress")
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=15)
    caller.join(10)
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught.
    assert proc.returncode in (0, -signal.SIGTERM), stderr
    assert "Traceback" not in stderr
    assert len(hanging) == 1
