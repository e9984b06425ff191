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


@pytest.mark.slow
def test_mmap_loading_maps_a_large_result_without_holding_it():
    proc = subprocess.run([sys.executable, str(EXAMPLES / "mmap_loading.py"), "0.2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert re.search(r"hit: [\d.]+ ms -> memmap \(195312, 256\) float32", out), out
    own = int(re.search(r"own memory: ([+-]\d+) MB after reading 200 MB", out).group(1))
    assert own < 50, out  # the 200 MB went through the page cache, not the process


@pytest.mark.slow
def test_joblib_tour_runs_every_part():
    proc = subprocess.run([sys.executable, str(EXAMPLES / "joblib_tour.py"), "0.05"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for part in range(1, 8):
        assert f"\n{part}. " in "\n" + out, out
    assert "loader: 1 computation, 12 hits in the workers" in out
    assert "second call (cache hit)" in out and "second pass (all hits)" in out
    assert "[Parallel(n_jobs=2)]: Done" in proc.stderr  # joblib prints progress there
