"""The embedded default LLM of `make run` (deploy/local/llm.py): the real llama.cpp server and
the real Gemma 3 270M GGUF, reached through the real openai SDK.

Everything that needs the `llm` extra (`make install-llm`, which compiles llama.cpp) is skipped
when it is not installed, so `make test` stays fast on CI; the error a user gets without it is
checked always.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import DefaultHttpxClient, OpenAI
from openai.types.chat import ChatCompletionMessageParam

from deploy.local.llm import (
    MODEL_ALIAS,
    MODEL_PACKAGE,
    EmbeddedLLM,
    LLMUnavailable,
    model_path,
    server_installed,
    start_llm,
)

needs_model = pytest.mark.skipif(
    importlib.util.find_spec(MODEL_PACKAGE) is None,
    reason=f"the model package {MODEL_PACKAGE} is not installed (`make install-llm`)",
)
needs_server = pytest.mark.skipif(
    not server_installed() or importlib.util.find_spec(MODEL_PACKAGE) is None,
    reason="llama-cpp-python[server] and the model are not installed (`make install-llm` "
    "compiles llama.cpp, ~5 min); the embedded LLM is not tested",
)


def test_missing_model_package_says_to_run_make_install_llm(tmp_path: Path) -> None:
    with pytest.raises(LLMUnavailable, match="make install-llm") as caught:
        model_path(tmp_path, package="no_such_gguf_model_package")
    assert "no_such_gguf_model_package" in str(caught.value)
    assert not (tmp_path / "models").exists()


@needs_model
def test_model_is_assembled_once_then_reused(tmp_path: Path) -> None:
    package = importlib.import_module(MODEL_PACKAGE)
    path = model_path(tmp_path)
    assert path.parent == tmp_path / "models"
    assert path.name == package.MODEL_NAME
    assert _sha256(path) == package.EXPECTED_SHA256
    assert list(path.parent.glob("*.part")) == []  # no temporary file left behind
    identity = path.stat().st_ino, path.stat().st_mtime_ns

    again = model_path(tmp_path)
    assert again == path
    assert (again.stat().st_ino, again.stat().st_mtime_ns) == identity

    # A file another package version made (its recorded checksum differs) is replaced.
    (path.parent / f"{path.name}.sha256").write_text("0" * 64 + "\n")
    replaced = model_path(tmp_path)
    assert replaced.stat().st_ino != identity[0]
    assert _sha256(replaced) == package.EXPECTED_SHA256


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def llm_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("llm")


@pytest.fixture(scope="module")
def llm(llm_workdir: Path) -> Iterator[EmbeddedLLM]:
    server = start_llm(llm_workdir)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(llm: EmbeddedLLM) -> Iterator[OpenAI]:
    http = DefaultHttpxClient(trust_env=False)  # loopback: never through a configured proxy
    with OpenAI(
        base_url=llm.base_url, api_key=llm.api_key, max_retries=0, timeout=60, http_client=http
    ) as sdk:
        yield sdk


QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the capital of France?"}
]


@needs_server
def test_server_reports_the_model_on_loopback(llm: EmbeddedLLM, client: OpenAI) -> None:
    assert llm.base_url.startswith("http://127.0.0.1:") and llm.base_url.endswith("/v1")
    assert llm.model == MODEL_ALIAS
    assert [model.id for model in client.models.list()] == [MODEL_ALIAS]
    assert llm.env() == {
        "LLM_BASE_URL": llm.base_url,
        "LLM_API_KEY": llm.api_key,
        "LLM_MODEL": MODEL_ALIAS,
    }


@needs_server
def test_chat_completion_has_text_and_usage(llm: EmbeddedLLM, client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model=llm.model, messages=QUESTION, max_tokens=24, temperature=0
    )
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    usage = reply.usage
    assert usage is not None
    assert usage.prompt_tokens > 0
    assert 0 < usage.completion_tokens <= 24
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


@needs_server
def test_stream_sends_pieces_and_no_usage(llm: EmbeddedLLM, client: OpenAI) -> None:
    pieces: list[str] = []
    finish: list[str] = []
    usages = []
    stream = client.chat.completions.create(
        model=llm.model,
        messages=QUESTION,
        max_tokens=16,
        temperature=0,
        stream=True,
    )
    for chunk in stream:
        if chunk.usage is not None:
            usages.append(chunk.usage)
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish.append(choice.finish_reason)
    assert len(pieces) > 1, pieces  # token by token, not one block at the end
    assert "".join(pieces).strip()
    assert finish and finish[-1] in ("stop", "length")
    # The ai_worker counts a stream's tokens itself: llama.cpp's server sends no usage in it.
    assert usages == []


@needs_server
def test_concurrent_requests_are_queued_not_interrupted(llm: EmbeddedLLM, client: OpenAI) -> None:
    # Started with --interrupt_requests False: a second request waits for the first instead of
    # cutting its stream short.
    results: dict[int, tuple[str, str | None]] = {}

    def ask(number: int) -> None:
        text, reason = "", None
        stream = client.chat.completions.create(
            model=llm.model,
            messages=QUESTION,
            max_tokens=12,
            temperature=0,
            stream=True,
        )
        for chunk in stream:
            for choice in chunk.choices:
                text += choice.delta.content or ""
                reason = choice.finish_reason or reason
        results[number] = (text, reason)

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    assert sorted(results) == [0, 1]
    for text, reason in results.values():
        assert text.strip()
        assert reason in ("stop", "length")


@needs_server
def test_stop_ends_the_server(llm_workdir: Path, tmp_path: Path) -> None:
    server = start_llm(llm_workdir, log_path=tmp_path / "llm.log")  # reuses the model file
    assert httpx.get(f"{server.base_url}/models", timeout=5, trust_env=False).status_code == 200
    assert (tmp_path / "llm.log").stat().st_size > 0
    server.stop()
    assert server.process.returncode is not None
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.base_url}/models", timeout=5, trust_env=False)


@needs_server
def test_server_that_cannot_bind_is_a_clear_error(llm_workdir: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(LLMUnavailable, match="(?is)did not start.*address already in use"):
            start_llm(llm_workdir, port, log_path=tmp_path / "llm.log")
        # It noticed the death rather than waiting out the deadline, and left nothing behind:
        # the socket we hold still gets its connections.
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
