"""Shared fixtures: cache folders that vanish after each test, and subprocess helpers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import arraycache


@pytest.fixture
def location(tmp_path: Path) -> Path:
    """A fresh cache folder (removed with tmp_path)."""
    return tmp_path / "cache"


@pytest.fixture
def memory(location: Path) -> arraycache.Memory:
    return arraycache.Memory(location, verbose=0)


def run_python(code: str, cwd: Path, timeout: float = 120) -> str:
    """Run ``code`` as a script in a fresh interpreter; return its stdout (fail on error)."""
    script = cwd / f"script_{abs(hash(code))}.py"
    script.write_text(textwrap.dedent(code))
    env = {**os.environ, "PYTHONHASHSEED": "random"}
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=cwd, capture_output=True, text=True,
        timeout=timeout, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout
