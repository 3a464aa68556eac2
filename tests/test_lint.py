"""The habits, checked with the tests: ruff over the whole repository and mypy over the daemons, the UE and
``shared/`` (both configured in pyproject.toml; versions pinned in the ``dev`` extra)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          check=False)


def test_ruff_clean() -> None:
    out = _run("ruff", "check", ".", timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_mypy_clean() -> None:
    out = _run("mypy", timeout=580)  # files and settings: [tool.mypy] in pyproject.toml
    assert out.returncode == 0, out.stdout + out.stderr
