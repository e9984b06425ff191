"""The runnable examples run, and say what they promise."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.slow
def test_quickstart_second_call_is_a_memmap_hit():
    out = run_example("quickstart.py")
    assert re.search(r"second call \(cache hit\): +[\d.]+ ms -> memmap of 400 MB", out), out


@pytest.mark.slow
def test_parallel_cv_runs_folds_on_a_memory_mapped_matrix():
    out = run_example("parallel_cv.py")
    assert "X: memmap (200000, 64)" in out
    assert "8 folds on 2 workers" in out


@pytest.mark.slow
def test_sklearn_pipeline_gives_the_same_search_with_and_without_the_cache():
    out = run_example("sklearn_pipeline.py")
    results = re.findall(r"best C=([\d.]+), score ([\d.]+)", out)
    assert len(results) == 2 and results[0] == results[1], out
